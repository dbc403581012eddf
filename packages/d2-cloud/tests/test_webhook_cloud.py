"""The approval webhook in cloud mode: ``configure_rbac_*`` keeps its webhook
options for d2-core (they never reach the cloud package's configure), and the
requests of a cloud bundle are posted with the cloud app's namespace."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from cloudfakes import FakePlane
from d2.core import (
    ApprovalRequiredError,
    approve,
    configure_rbac_async,
    configure_rbac_sync,
    d2_guard,
    reject_async,
    set_user,
    shutdown_rbac,
)
from d2.core.testing import Reply, WebhookReceiver, webhook_receiver

APPROVAL = [{"tool": "refund", "approval": {"approvers": ["agent"]}}]


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with webhook_receiver() as server:
        yield server


def test_cloud_mode_posts_opened_and_decided_requests(
    plane: FakePlane, cloud_options: Any, receiver: WebhookReceiver
) -> None:
    plane.publish(2, permissions=APPROVAL)
    manager = configure_rbac_sync(
        **cloud_options(),
        approval_webhook=receiver.url,
        approval_inbox_url="http://127.0.0.1:8000/inbox",
    )
    assert manager.mode == "cloud" and manager.approval_webhook is not None
    refund = d2_guard("refund")(lambda order: order)
    set_user("bob", roles=["agent"])
    with pytest.raises(ApprovalRequiredError) as held:
        refund("o_1")
    set_user("dana", roles=["agent"])
    approve(held.value.request.id)
    shutdown_rbac()
    assert [(e["event"], e["app"], e["policy_version"]) for e in receiver.events] == [
        ("approval.requested", "cloud:acc1:app1", "2"),
        ("approval.approved", "cloud:acc1:app1", "2"),
    ]
    assert receiver.events[0]["inbox_url"].endswith(held.value.request.id)


async def test_cloud_mode_async_configure_takes_the_webhook_too(
    plane: FakePlane, cloud_options: Any, receiver: WebhookReceiver
) -> None:
    plane.publish(2, permissions=APPROVAL)
    receiver.replies = [Reply(delay=0.2), Reply(delay=0.2)]
    manager = await configure_rbac_async(
        **cloud_options(), approval_webhook=receiver.url, approval_webhook_arguments=True
    )
    refund = d2_guard("refund")(_refund)
    set_user("bob", roles=["agent"])
    with pytest.raises(ApprovalRequiredError) as held:
        await refund("o_9")
    set_user("dana", roles=["agent"])
    await reject_async(held.value.request.id)
    await manager.ashutdown()  # waits for the webhook's flush too
    assert [e["event"] for e in receiver.events] == ["approval.requested", "approval.rejected"]
    assert receiver.events[0]["arguments"] == {"order": "o_9"}


async def _refund(order: str) -> str:
    return order
