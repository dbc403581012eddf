"""Attacks on approvals, stores and resume, from a hostile review (wt-review2).

Each test asserts the SAFE behaviour; each is a regression test of the defence
described in docs/security.md. Two attacks are not fixed here (marked): keywords
dropped by ``bound_arguments`` (branch wt-fixbind) and a resumed run that acts
before repeating the held call (adapters restore the held request explicitly).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from d2.core import (
    ApprovalRequest,
    ApprovalRequiredError,
    ConfigurationError,
    InMemorySource,
    PermissionDeniedError,
    approve,
    configure_rbac_sync,
    d2_guard,
    pending_approvals,
    reject,
    restore_request,
    set_user,
)
from d2.core.policy.model import CompiledPolicy
from d2.core.stores import MemoryStore
from d2.core.testing import controlled_clock, policy_document
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

LEAD = {"role": "finance_lead", "permissions": []}


def held(call: Callable[[], Any]) -> ApprovalRequest:
    with pytest.raises(ApprovalRequiredError) as info:
        call()
    return info.value.request


def denied(call: Callable[[], Any]) -> str:
    with pytest.raises(PermissionDeniedError) as info:
        call()
    return str(info.value.reason)


def approval_grant(tool: str, **approval: Any) -> dict[str, Any]:
    return {"tool": tool, "approval": {"approvers": ["finance_lead"], **approval}}


def configure_agent(*permissions: Any, name: str = "redteam-app", **kwargs: Any) -> None:
    doc = policy_document({"role": "agent", "permissions": list(permissions)}, LEAD, name=name)
    configure_rbac_sync(source=InMemorySource(doc), **kwargs)


def approve_as_lead(request: ApprovalRequest, **kwargs: Any) -> None:
    set_user("dana", roles=["finance_lead"])
    approve(request.id, **kwargs)
    set_user("agent-7", roles=["agent"])


# -- 1. the digest of a call must cover everything the tool acts on ----------------------


def test_a_file_argument_approval_never_uploads_another_file(tmp_path: Path) -> None:
    """Attack: an open file (or StringIO/BytesIO) digests as ``vars(f)`` only
    (``{"mode": "r"}``); its name, position and content are C-level state. The
    approval of uploading ``report.txt`` uploads ``secrets.txt``."""
    configure_agent(approval_grant("files.upload"))
    uploaded: list[str] = []

    @d2_guard("files.upload")
    def upload(f: Any) -> str:
        uploaded.append(f.read())
        return "ok"

    (tmp_path / "report.txt").write_text("quarterly report")
    (tmp_path / "secrets.txt").write_text("AWS_SECRET=...")
    set_user("agent-7", roles=["agent"])
    with open(tmp_path / "report.txt") as report:
        # a file's state is C-level: no approval can cover it, so none is asked for
        assert denied(lambda: upload(report)) == "approval_unsupported"
    with open(tmp_path / "secrets.txt") as secrets:
        # safe: another file is another call (or no approval can cover a file at all)
        assert denied(lambda: upload(secrets)) in ("approval_required", "approval_unsupported")
    assert uploaded == []


class Recipients(list):  # type: ignore[type-arg]
    """An app's list type (a subclass of a builtin container)."""


class Ids(tuple):  # type: ignore[type-arg]
    """An app's tuple type."""


@dataclasses.dataclass
class Transfer:
    account: str

    def __post_init__(self) -> None:
        self.destination = "acct-owned-by-customer"  # state outside the dataclass fields


class UserPatch(BaseModel):
    """A PATCH body: the tool applies ``model_dump(exclude_unset=True)``."""

    email: str | None = None
    role: str | None = None


@pytest.mark.parametrize(
    ("approved", "other"),
    [
        (Recipients(["boss@corp"]), Recipients(["all@corp"])),
        (Ids((1,)), None),
        (Transfer("a"), None),
        # the model's JSON {"email": ...} vs {"email": ..., "role": null}: the second
        # clears the user's role under exclude_unset, and digests the same
        (
            UserPatch.model_validate({"email": "a@corp"}),
            UserPatch.model_validate({"email": "a@corp", "role": None}),
        ),
    ],
    ids=["list-subclass", "tuple-subclass", "dataclass-extra-attribute", "pydantic-fields-set"],
)
def test_state_a_digest_ignores_is_never_approved_by_another_calls_approval(
    approved: Any, other: Any
) -> None:
    """Attack: the ``object:`` fallback of ``_canon`` digests ``vars()`` only: a
    subclass of list/tuple/set/bytes digests as ``{}`` (its items are ignored), a
    dataclass digests its fields only (attributes set elsewhere are ignored), a
    pydantic model its field values only (not which fields were set, nor private
    attributes), though tools act on them."""
    if other is None and isinstance(approved, tuple):
        other = type(approved)((2,))
    if other is None:
        other = Transfer("a")
        other.destination = "acct-owned-by-attacker"
    configure_agent(approval_grant("mail.send"))
    sent: list[Any] = []
    send = d2_guard("mail.send")(lambda to: sent.append(to) or "sent")
    set_user("agent-7", roles=["agent"])
    request = held(lambda: send(approved))
    approve_as_lead(request)
    assert denied(lambda: send(other)) in ("approval_required", "approval_unsupported")
    assert sent == []


def test_a_keyword_named_like_a_positional_only_or_varargs_parameter_counts() -> None:
    """Attack: ``bound_arguments`` dropped an extra keyword (collected by
    ``**kwargs``) whose name equals a positional-only parameter or the ``*args``
    parameter, so ``f(1, a=2)`` digests like ``f(1)`` and ``g(x, cc=[..])`` like
    ``g(x)``: the approval of one runs the other."""
    configure_agent(approval_grant("mail.send"), approval_grant("http.get"))
    runs: list[Any] = []

    @d2_guard("mail.send")
    def send(to: str, *cc: str, **headers: Any) -> str:
        runs.append(("send", to, cc, headers))
        return "sent"

    @d2_guard("http.get")
    def get(url: str, /, **params: Any) -> str:
        runs.append(("get", url, params))
        return "got"

    set_user("agent-7", roles=["agent"])
    approve_as_lead(held(lambda: send("boss@corp")))
    assert denied(lambda: send("boss@corp", cc=["all@corp"])) == "approval_required"
    approve_as_lead(held(lambda: get("https://api.example.invalid/")))
    assert denied(lambda: get("https://api.example.invalid/", url="x")) == "approval_required"
    assert runs == []


def test_what_the_approver_is_shown_is_the_call_that_runs() -> None:
    """Attack (display): ``json_arguments`` turns mapping keys into ``str(k)``, so
    ``{1: 10, "1": 99999}`` is shown as ``{"1": 99999}`` (one entry; which one
    depends on order) while the digest, and the tool, see both; an int of 64 bits
    or more is shown as ``"<int of N bits>"``, never its value."""
    configure_agent(approval_grant("prices.set"))
    set_prices = d2_guard("prices.set")(lambda prices, cap: "set")
    set_user("agent-7", roles=["agent"])
    request = held(lambda: set_prices({1: 10, "1": 99999}, 2**70))
    assert len(request.arguments["prices"]["__dict__"]) == 2, request.arguments
    assert str(2**70) in str(request.arguments["cap"]), request.arguments


# -- 2. an argument changed while the store answers ---------------------------------------


@pytest.mark.parametrize("store", ["slow-memory", "redis"])
def test_an_argument_changed_while_the_store_answers_never_runs_unapproved(
    store: str, request: pytest.FixtureRequest
) -> None:
    """Attack: the approval part reads the call twice: ``_chosen_grant`` (before
    the store is asked) and ``_layers`` (after). When a concurrent task changes a
    mutable argument in between so that another grant with its own ``approval``
    is chosen, ``_budgets`` builds a fresh ``_Hold`` with no digest, so no
    ``ApprovalKey``, and ``take`` is asked with ``approval=None``: TAKEN. The tool
    runs with no approval at all."""
    doc = policy_document(
        {
            "role": "agent",
            "permissions": [
                {
                    "tool": "mail.send",
                    "conditions": {"input": {"to": {"maxLength": 1}}},
                    "approval": {"approvers": ["finance_lead"]},
                },
                {"tool": "mail.send", "approval": {"approvers": ["cfo"]}},
            ],
        },
        LEAD,
        {"role": "cfo", "permissions": []},
        name="toctou",
    )
    sent: list[list[str]] = []

    @d2_guard("mail.send")
    async def send(to: list[str]) -> str:
        sent.append(list(to))
        return "sent"

    class SlowStore(MemoryStore):
        """A store that answers on the next loop turn (a network store does)."""

        async def find_approval_async(self, namespace: str, call: str, now: float) -> Any:
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            return self.find_approval(namespace, call, now)

    chosen: Any = SlowStore() if store == "slow-memory" else request.getfixturevalue("redis_url")
    configure_rbac_sync(source=InMemorySource(doc), store=chosen)

    async def main() -> str:
        set_user("agent-7", roles=["agent"])
        to = ["boss@corp"]

        async def meddle() -> None:
            await asyncio.sleep(0)
            to.append("all@corp")  # another task shares the list (tool-call batch)

        results = await asyncio.gather(send(to), meddle(), return_exceptions=True)
        first = results[0]
        return first.reason if isinstance(first, PermissionDeniedError) else repr(first)

    assert asyncio.run(main()) in ("approval_required", "approval_unsupported")
    assert sent == []


def test_an_approved_call_runs_with_the_arguments_that_were_approved(redis_url: str) -> None:
    """Attack (TOCTOU, same root as above): the digest is taken before the store
    is asked; an approved call whose list argument a concurrent task extends
    while Redis answers runs with the extended list, under the approval of the
    shorter one."""
    configure_agent(approval_grant("mail.send"), name="toctou-one", store=redis_url)
    sent: list[list[str]] = []

    @d2_guard("mail.send")
    async def send(to: list[str]) -> str:
        sent.append(list(to))
        return "sent"

    async def main() -> None:
        set_user("agent-7", roles=["agent"])
        with pytest.raises(ApprovalRequiredError) as info:
            await send(["boss@corp"])
        set_user("dana", roles=["finance_lead"])
        approve(info.value.request.id)
        set_user("agent-7", roles=["agent"])
        to = ["boss@corp"]

        async def meddle() -> None:
            await asyncio.sleep(0)
            to.append("all@corp")

        await asyncio.gather(send(to), meddle(), return_exceptions=True)

    asyncio.run(main())
    assert sent in ([], [["boss@corp"]]), sent


# -- 3. approval.when read fail-safe ------------------------------------------------------


@pytest.mark.parametrize(("value", "rule"), [(False, {"eq": 0}), (True, {"in": [1, 2]})])
def test_when_a_bool_the_tool_reads_as_the_number_the_rule_names_asks_a_person(
    value: bool, rule: dict[str, Any]
) -> None:
    """Attack (fail-safe asymmetry): ``when`` asks a person for a value equal only
    under Python's loose ``==`` under ``ne`` / ``not_in``, but under ``eq`` / ``in``
    it reads type-aware: ``False`` certainly fails ``eq: 0``, so the approval is
    skipped, while the tool indexes ``ACCOUNTS[False]`` = account 0."""
    configure_agent(approval_grant("ledger.close", when={"account": rule}))
    accounts = ["treasury", "ops", "payroll"]
    closed: list[str] = []
    close = d2_guard("ledger.close")(lambda account: closed.append(accounts[account]) or "closed")
    set_user("agent-7", roles=["agent"])
    assert denied(lambda: close(value)) == "approval_required"
    assert closed == []


def test_when_reads_a_default_and_asks_for_an_argument_it_cannot_find() -> None:
    """Defence: an omitted argument is read with its default; a rule on a dotted
    path (no such parameter) asks a person rather than being skipped."""
    configure_agent(
        approval_grant("payments.refund", when={"amount": {"gt": 100}}),
        approval_grant("payments.charge", when={"req.amount": {"gt": 100}}),
    )
    ran: list[Any] = []

    @d2_guard("payments.refund")
    def refund(order: str, amount: int = 500) -> str:
        ran.append(amount)
        return "refunded"

    @d2_guard("payments.charge")
    def charge(req: dict[str, Any]) -> str:
        ran.append(req)
        return "charged"

    set_user("agent-7", roles=["agent"])
    assert denied(lambda: refund("o1")) == "approval_required"
    assert denied(lambda: charge({"amount": 5})) == "approval_required"
    assert ran == []


# -- 4. apps sharing a store ---------------------------------------------------------------


def test_two_instances_sharing_one_memory_store_object_never_decide_each_others() -> None:
    """Attack: ``namespace()`` gives an unnamed policy ``""`` whenever the store is
    a ``MemoryStore``, assuming the store is the instance's own; ``store=`` accepts a
    ``MemoryStore`` object that two instances (two apps in one process) share, so
    app B's approver lists and approves app A's requests."""
    shared = MemoryStore()
    for instance in ("app-a", "app-b"):
        doc = policy_document(
            {"role": "agent", "permissions": [approval_grant("payments.refund")]},
            LEAD,
            name=None,
        )
        doc["metadata"].pop("name")
        # a store= object may be shared: an unnamed policy is refused on it ...
        with pytest.raises(ConfigurationError, match=r"metadata\.name"):
            configure_rbac_sync(source=InMemorySource(doc), instance_name=instance, store=shared)
        # ... and runs on the in-process store D2 makes for the instance alone
        configure_rbac_sync(source=InMemorySource(doc), instance_name=instance)
    refund = d2_guard("payments.refund", instance_name="app-a")(lambda amount: "refunded")
    set_user("agent-7", roles=["agent"])
    request = held(lambda: refund(500))
    set_user("mallory", roles=["finance_lead"])  # an approver of app B only
    assert pending_approvals(instance_name="app-b") == []
    with pytest.raises(PermissionDeniedError) as info:
        approve(request.id, instance_name="app-b")
    assert info.value.reason in ("approval_not_found", "budget_unavailable")


class _CloudLike(InMemorySource):
    """What the cloud poller installs: the bundle's document, scoped by the cloud
    app (``namespace="cloud:" + account:app``, see d2/cloud/poller.py)."""

    def _compile(self, document: Any, limits: Any) -> CompiledPolicy:
        policy = super()._compile(document, limits)
        policy.namespace = "cloud:acme:billing"
        policy.version = 3
        return policy


def test_a_local_app_named_like_a_cloud_app_never_decides_its_requests(redis_url: str) -> None:
    """Attack: local namespaces are ``metadata.name`` verbatim and cloud ones
    ``cloud:<account>:<app>``: a local policy named ``cloud:acme:billing`` on the
    same Redis lists the cloud app's pending requests (arguments included) and
    approves them."""
    doc = policy_document(
        {"role": "agent", "permissions": [approval_grant("payments.refund")]}, LEAD, name="billing"
    )
    configure_rbac_sync(source=_CloudLike(doc), instance_name="cloud", store=redis_url)
    local = policy_document({"role": "agent", "permissions": []}, LEAD, name="cloud:acme:billing")
    configure_rbac_sync(source=InMemorySource(local), instance_name="local", store=redis_url)
    refund = d2_guard("payments.refund", instance_name="cloud")(lambda amount: "refunded")
    set_user("agent-7", roles=["agent"])
    request = held(lambda: refund(500))
    set_user("mallory", roles=["finance_lead"])
    assert pending_approvals(instance_name="local") == []
    with pytest.raises(PermissionDeniedError) as info:
        approve(request.id, instance_name="local")
    assert info.value.reason == "approval_not_found"


# -- 5. Redis keys ---------------------------------------------------------------------------


def test_the_redis_pending_index_does_not_keep_expired_requests_forever(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: ``{app}:pending`` (a sorted set) has no expiry, and expired ids
    leave it only when someone lists ``pending_approvals()``. An app that hands
    ``err.request`` to a ticket system and never lists keeps every expired id, for
    good: a prompt-injected agent asking for distinct calls grows it without bound."""
    import redis

    clock = controlled_clock(monkeypatch)
    configure_agent(
        approval_grant("payments.refund", ttl="1m"), name="pending-leak", store=redis_url
    )
    refund = d2_guard("payments.refund")(lambda amount: "refunded")
    set_user("agent-7", roles=["agent"])
    for amount in range(50):
        held(lambda amount=amount: refund(amount))
    clock.advance(3600)  # every request expired an hour ago
    held(lambda: refund(10_000))
    client = redis.Redis.from_url(redis_url)
    key = "d2:local%3Apending-leak:pending"  # the namespace local:<name>, percent-encoded
    kept = client.zcard(key)
    assert kept <= 1 or client.pttl(key) > 0, f"{kept} ids kept, no expiry"


def test_a_corrupted_request_in_redis_denies_and_never_runs(redis_url: str) -> None:
    """Defence: a Lua script error (a request whose ``exp`` is not a number) is a
    store failure: the call is denied ``budget_unavailable``; nothing runs."""
    import redis

    configure_agent(approval_grant("payments.refund"), name="corrupt", store=redis_url)
    ran: list[int] = []
    refund = d2_guard("payments.refund")(lambda amount: ran.append(amount) or "refunded")
    set_user("agent-7", roles=["agent"])
    request = held(lambda: refund(500))
    approve_as_lead(request)
    client = redis.Redis.from_url(redis_url)
    client.hset(f"d2:local%3Acorrupt:approval:{request.id}", "exp", "not-a-number")
    assert denied(lambda: refund(500)) in ("budget_unavailable", "approval_required")
    assert ran == []


# -- 6. resume ---------------------------------------------------------------------------------


@pytest.mark.parametrize("outcome", ["approved", "rejected"])
def test_the_resumed_run_is_blocked_before_it_repeats_the_held_call(outcome: str) -> None:
    """Attack: the held request's facts were restored only when the identical call
    came back. A resumed run (fresh ``set_user``, same user) whose model uploads
    first, before repeating the approved call (or after a rejection, never
    repeating it), was not blocked. The resume recipe now continues the request
    first (``restore_request``, which every adapter calls for the app)."""
    flow = {"labels": {"db.read_users": ["PII"]}, "blocks": {"PII": ["http.request"]}}
    doc = policy_document(
        {
            "role": "agent",
            "permissions": ["db.read_users", "http.request", approval_grant("payments.refund")],
        },
        LEAD,
        name="resume-gap",
        data_flow=flow,
    )
    configure_rbac_sync(source=InMemorySource(doc))
    posted: list[str] = []
    read_users = d2_guard("db.read_users")(lambda: "alice,bob")
    post = d2_guard("http.request")(lambda body: posted.append(body) or "posted")
    refund = d2_guard("payments.refund")(lambda order, amount: "refunded")
    set_user("agent-7", roles=["agent"])
    users = read_users()
    request = held(lambda: refund("o9", 900))
    set_user("dana", roles=["finance_lead"])
    (approve if outcome == "approved" else reject)(request.id)
    set_user("agent-7", roles=["agent"])  # the run resumes as a fresh request of agent-7
    restore_request(request.id)  # the recipe: continue the paused request first
    assert denied(lambda: post(users)) == "data_flow_violation"
    assert posted == []


def test_a_per_request_budget_holds_across_the_pause_whatever_the_order() -> None:
    """Attack (same root): ``max: 2 per request`` of ``web.search``; the held
    request searched twice; the resumed request searched twice more before
    repeating the approved call: four searches across one pause. Continued first
    (``restore_request``), the resumed request counts on from two."""
    doc = policy_document(
        {
            "role": "agent",
            "permissions": [
                {"tool": "web.search", "limits": [{"max": 2, "per": "request"}]},
                approval_grant("payments.refund"),
            ],
        },
        LEAD,
        name="resume-budget",
    )
    configure_rbac_sync(source=InMemorySource(doc))
    searched: list[str] = []
    search = d2_guard("web.search")(lambda q: searched.append(q) or "results")
    refund = d2_guard("payments.refund")(lambda order, amount: "refunded")
    set_user("agent-7", roles=["agent"])
    search("a")
    search("b")
    request = held(lambda: refund("o9", 900))
    approve_as_lead(request)
    restore_request(request.id)  # the recipe: continue the paused request first
    for q in "cd":
        try:
            search(q)
        except PermissionDeniedError:
            pass
    assert refund("o9", 900) == "refunded"
    assert len(searched) <= 2, searched


def test_an_approval_copied_into_a_forked_process_runs_the_call_once() -> None:
    """Attack: the in-process store is copied by ``fork`` (a ``multiprocessing``
    pool with the fork start method, ``os.fork``): an approved, unused request is
    then usable once in the parent and once in every child, so the approved call
    runs more than once. Only the store's locks are renewed after a fork."""
    import os

    configure_agent(approval_grant("payments.refund"), name="fork")
    ran: list[int] = []
    refund = d2_guard("payments.refund")(lambda amount: ran.append(amount) or "refunded")
    set_user("agent-7", roles=["agent"])
    approve_as_lead(held(lambda: refund(500)))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child resumes the agent's request
        code = 1
        try:
            set_user("agent-7", roles=["agent"])
            try:
                refund(500)
                code = 0  # it ran
            except PermissionDeniedError:
                code = 2
        finally:
            os.write(write, bytes([code]))
            os._exit(0)
    os.close(write)
    child = os.read(read, 1)
    os.close(read)
    os.waitpid(pid, 0)
    set_user("agent-7", roles=["agent"])
    try:
        refund(500)
        parent_ran = True
    except PermissionDeniedError:
        parent_ran = False
    runs = int(child == bytes([0])) + int(parent_ran)
    assert runs <= 1, "the approved call ran in the child and in the parent"


# -- 7. defences that held (regression tests) ---------------------------------------------------


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_threads_racing_to_resume_one_approval_run_the_call_once(
    store: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("redis_url") if store == "redis" else None
    configure_agent(approval_grant("payments.refund"), name=f"race-{store}", store=url)
    ran: list[int] = []
    lock = threading.Lock()

    def pay(amount: int) -> str:
        with lock:
            ran.append(amount)
        return "refunded"

    refund = d2_guard("payments.refund")(pay)
    set_user("agent-7", roles=["agent"])
    approve_as_lead(held(lambda: refund(500)))
    start = threading.Barrier(8)
    outcomes: list[str] = []

    def racer() -> None:
        set_user("agent-7", roles=["agent"])  # each thread its own resumed request
        start.wait()
        try:
            outcomes.append(refund(500))
        except PermissionDeniedError as err:
            outcomes.append(str(err.reason))

    threads = [threading.Thread(target=racer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ran == [500]
    assert outcomes.count("refunded") == 1
    assert set(outcomes) <= {"refunded", "approval_required"}


@pytest.mark.parametrize(("requester", "approver"), [(7, "7"), ("7", 7)])
def test_an_int_and_a_str_id_are_one_user_who_cannot_self_approve(
    requester: Any, approver: Any
) -> None:
    configure_agent(approval_grant("payments.refund"))
    refund = d2_guard("payments.refund")(lambda amount: "refunded")
    set_user(requester, roles=["agent", "finance_lead"])
    request = held(lambda: refund(500))
    set_user(approver, roles=["finance_lead"])
    with pytest.raises(PermissionDeniedError) as info:
        approve(request.id)
    assert info.value.reason == "approval_not_permitted"


@pytest.mark.parametrize(
    ("approved", "other"),
    [
        (0.0, -0.0),
        (1, True),
        (1, 1.0),
        ([1, 2], (1, 2)),
        ({"a": 1}, {"a": True}),
        (2**80, 2**80 + 1),
        ("é", "e\u0301"),
    ],
)
def test_values_that_differ_by_type_or_sign_are_different_calls(approved: Any, other: Any) -> None:
    configure_agent(approval_grant("payments.refund"))
    ran: list[Any] = []
    refund = d2_guard("payments.refund")(lambda amount: ran.append(amount) or "refunded")
    set_user("agent-7", roles=["agent"])
    approve_as_lead(held(lambda: refund(approved)))
    assert denied(lambda: refund(other)) == "approval_required"
    assert ran == []


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), 10**40, "500", None, [500], {"v": 500}],
    ids=["nan", "inf", "huge", "str", "none", "list", "dict"],
)
def test_when_gt_asks_a_person_for_values_it_cannot_judge_or_that_hold(value: Any) -> None:
    from decimal import Decimal

    configure_agent(approval_grant("payments.refund", when={"amount": {"gt": 100}}))
    ran: list[Any] = []
    refund = d2_guard("payments.refund")(lambda amount: ran.append(amount) or "refunded")
    set_user("agent-7", roles=["agent"])
    for v in (value, Decimal("500")):
        assert denied(lambda v=v: refund(v)) == "approval_required"
    assert ran == []


# -- 8. the fixes, beyond the review's own cases ----------------------------------------


class MeddlingStore(MemoryStore):
    """A store during whose ``take`` another thread changes an argument (what a
    concurrent mutation during a network round trip does), and that records what
    it was asked."""

    def __init__(self, meddle: Callable[[], None]) -> None:
        super().__init__()
        self.meddle = meddle
        self.asked: list[Any] = []

    def take(self, namespace: str, counters: Any, approval: Any, now: float) -> int:
        self.asked.append(approval)
        self.meddle()
        return super().take(namespace, counters, approval, now)


def test_an_approved_call_whose_argument_changes_during_the_store_round_trip_never_runs() -> None:
    to = ["boss@corp"]
    store = MeddlingStore(lambda: None)
    configure_agent(approval_grant("mail.send"), name="toctou-sync", store=store)
    sent: list[list[str]] = []
    send = d2_guard("mail.send")(lambda to: sent.append(list(to)) or "sent")
    set_user("agent-7", roles=["agent"])
    approve_as_lead(held(lambda: send(to)))
    store.meddle = lambda: to.append("all@corp")  # a thread sharing the list
    assert denied(lambda: send(to)) == "approval_unsupported"
    assert sent == []
    assert all(key is not None for key in store.asked)  # never taken without the approval


def test_input_rules_are_judged_on_the_arguments_the_tool_receives() -> None:
    """A per-user budget sends the call to the store; an argument changed meanwhile
    would run a call its input rule refuses."""
    to = ["boss@corp"]
    store = MeddlingStore(lambda: to.append("all@corp"))
    grant = {
        "tool": "mail.send",
        "conditions": {"input": {"to": {"maxLength": 1}}},
        "limits": [{"max": 5, "per": "user", "window": "1h"}],
    }
    configure_agent(grant, name="toctou-input", store=store)
    sent: list[list[str]] = []
    send = d2_guard("mail.send")(lambda to: sent.append(list(to)) or "sent")
    set_user("agent-7", roles=["agent"])
    assert denied(lambda: send(to)) == "input_validation"
    assert sent == []
    store.meddle = lambda: None
    assert send(["boss@corp"]) == "sent"  # an argument nobody changes runs as judged


def test_policy_namespaces_say_local_or_cloud() -> None:
    from d2.core.policy import compile_policy

    doc = policy_document({"role": "agent", "permissions": []}, name="cloud:acme:billing")
    assert compile_policy(doc).namespace == "local:cloud:acme:billing"
    assert compile_policy(doc, namespace="cloud:acme:billing").namespace == "cloud:acme:billing"


def test_local_keys_in_redis_live_under_the_local_namespace(redis_url: str) -> None:
    import redis

    configure_agent(approval_grant("payments.refund"), name="keys-app", store=redis_url)
    refund = d2_guard("payments.refund")(lambda amount: "refunded")
    set_user("agent-7", roles=["agent"])
    request = held(lambda: refund(500))
    client = redis.Redis.from_url(redis_url)
    assert client.exists(f"d2:local%3Akeys-app:approval:{request.id}")
    assert not client.keys("d2:keys-app:*")


def test_an_instance_leaving_a_shared_store_goes_back_to_its_own() -> None:
    shared = MemoryStore()
    configure_agent(approval_grant("payments.refund"), name="leaver", store=shared)
    refund = d2_guard("payments.refund")(lambda amount: "refunded")
    set_user("agent-7", roles=["agent"])
    held(lambda: refund(500))
    configure_agent(approval_grant("payments.refund"), name="leaver")  # no store= now
    set_user("dana", roles=["finance_lead"])
    assert pending_approvals() == []  # the shared store's requests stay there
    assert len(shared.pending_approvals("local:leaver", 0.0)) == 1


def test_a_forked_child_counts_on_from_the_parents_counters_alone() -> None:
    import os

    limited = {"tool": "search", "limits": [{"max": 2, "per": "user", "window": "1h"}]}
    configure_agent(limited, name="fork-budget")
    ran: list[str] = []
    search = d2_guard("search")(lambda q: ran.append(q) or "found")
    set_user("agent-7", roles=["agent"])
    search("parent")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        outcomes = []
        try:
            set_user("agent-7", roles=["agent"])  # a forked child starts with no user
            for q in ("c1", "c2"):
                try:
                    search(q)
                    outcomes.append(1)
                except PermissionDeniedError:
                    outcomes.append(0)
        finally:
            os.write(write, bytes(outcomes))
            os._exit(0)
    os.close(write)
    child = os.read(read, 2)
    os.close(read)
    os.waitpid(pid, 0)
    assert child == bytes([1, 0])  # the child started from the parent's count
    search("parent again")  # the parent's own count: the child's calls are not in it
    assert denied(lambda: search("third")) == "budget_exceeded"


def test_the_pending_index_expires_with_its_longest_request_and_is_pruned_on_decide(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    clock = controlled_clock(monkeypatch)
    doc = policy_document(
        {
            "role": "agent",
            "permissions": [
                approval_grant("payments.refund", ttl="1m"),
                approval_grant("payments.charge", ttl="2h"),
            ],
        },
        LEAD,
        name="pending-ttl",
    )
    configure_rbac_sync(source=InMemorySource(doc), store=redis_url)
    refund = d2_guard("payments.refund")(lambda amount: "refunded")
    charge = d2_guard("payments.charge")(lambda amount: "charged")
    set_user("agent-7", roles=["agent"])
    held(lambda: refund(1))
    long = held(lambda: charge(2))
    held(lambda: refund(3))  # a shorter request after the longer one
    client = redis.Redis.from_url(redis_url)
    key = "d2:local%3Apending-ttl:pending"
    assert client.pttl(key) > 3600 * 1000  # the 2h request keeps the index
    clock.advance(120)  # the 1m requests expired
    approve_as_lead(long)
    assert [m.decode() for m in client.zrange(key, 0, -1)] == []


# -- 9. what a held request saves after each call ---------------------------------------


def _sequence_policy(name: str) -> dict[str, Any]:
    return policy_document(
        {
            "role": "agent",
            "permissions": [
                "db.read",
                "http.post",
                "search",
                "fetch",
                approval_grant("payments.refund"),
            ],
            "sequence": [{"deny": ["db.read", "http.post"]}],
        },
        LEAD,
        name=name,
    )


def _saved_sizes(store: MemoryStore) -> list[int]:
    return [len(text) for entry in store._requests.values() for text in entry.snapshots.values()]


def test_a_held_request_saves_what_the_policy_reads_not_every_call() -> None:
    store = MemoryStore()
    configure_rbac_sync(source=InMemorySource(_sequence_policy("saved")), store=store)
    read = d2_guard("db.read")(lambda: "rows")
    post = d2_guard("http.post")(lambda body: "posted")
    search = d2_guard("search")(lambda q: "found")
    fetch = d2_guard("fetch")(lambda q: "fetched")
    refund = d2_guard("payments.refund")(lambda amount: "refunded")
    set_user("agent-7", roles=["agent"])
    read()
    request = held(lambda: refund(500))
    for i in range(50):
        search(i)
    small = max(_saved_sizes(store))
    for i in range(3000):
        (search, fetch)[i % 2](i)
    assert max(_saved_sizes(store)) == small  # calls no rule reads take no room
    approve_as_lead(request)
    assert refund(500) == "refunded"
    assert denied(lambda: post("rows")) == "sequence_violation"  # still judged on it


def test_a_held_request_that_outgrows_what_can_be_saved_denies_its_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import d2.core.resume

    monkeypatch.setattr(d2.core.resume, "MAX_CALLS", 40)
    configure_rbac_sync(source=InMemorySource(_sequence_policy("outgrown")))
    ran: list[str] = []
    read = d2_guard("db.read")(lambda: ran.append("read") or "rows")
    search = d2_guard("search")(lambda q: ran.append("search") or "found")
    refund = d2_guard("payments.refund")(lambda amount: "refunded")
    set_user("agent-7", roles=["agent"])
    held(lambda: refund(500))
    reasons = []
    for _ in range(30):  # each read the rule tracks, then a gap: two entries a pair
        for call in (read, lambda: search("q")):
            try:
                call()
            except PermissionDeniedError as err:
                reasons.append(err.reason)
                assert "cannot be saved" in str(err)
    assert reasons and set(reasons) == {"budget_unavailable"}
    assert len(ran) < 60  # what could not be saved did not run


def _compressed(policy: Any, history: list[str]) -> list[str]:
    from d2.core.context import RequestScope
    from d2.core.resume import restore, snapshot

    full = RequestScope()
    full.history = list(history)
    fresh = RequestScope()
    restore(fresh, [snapshot(full, "u", policy=policy)], "u")
    return fresh.history


TOOLS = ["a", "b", "c", "d", "x", "y"]
steps = st.lists(st.sampled_from(["a", "b", "c", "d", "@g"]), min_size=2, max_size=3)


@st.composite
def sequence_policies(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.booleans()):  # default allow, deny patterns (tracked)
        rules = draw(
            st.lists(st.builds(lambda k, s: {k: s}, st.sampled_from(["deny", "allow"]), steps),
                     min_size=1, max_size=3)
        )  # fmt: skip
        sequence: Any = rules
    else:  # an allowlist of chains
        chains = draw(st.lists(steps.map(lambda s: {"allow": s}), min_size=1, max_size=3))
        sequence = {"mode": "deny", "rules": chains}
    extra: dict[str, Any] = {"tool_groups": {"g": ["b", "c"]}}
    if draw(st.booleans()):
        extra["data_flow"] = {"labels": {"a": ["L"]}, "blocks": {"L": ["d"]}}
    return policy_document(
        {"role": "agent", "permissions": ["*"], "sequence": sequence}, name="p", **extra
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=sequence_policies(), history=st.lists(st.sampled_from(TOOLS), max_size=25))
@example(  # a run of one tool counts as far as the rule is long
    doc=policy_document(
        {"role": "agent", "permissions": ["*"], "sequence": [{"deny": ["a", "a", "a", "b"]}]}
    ),
    history=["a", "x", "a", "a", "a", "a"],
)
@example(  # an allowlist chain never follows a call no rule names
    doc=policy_document(
        {
            "role": "agent",
            "permissions": ["*"],
            "sequence": {"mode": "deny", "rules": [{"allow": ["a", "b"]}]},
        }
    ),
    history=["a", "x"],
)
def test_the_saved_history_decides_every_next_call_as_the_whole_history_does(
    doc: dict[str, Any], history: list[str]
) -> None:
    from d2.core._guardrails import layers as _layers
    from d2.core.context import RequestScope, UserContext
    from d2.core.policy import compile_policy

    policy = compile_policy(doc)
    saved = _compressed(policy, history)
    assert len(saved) <= len(history)
    for tool in TOOLS:
        outcomes = []
        for calls in (history, saved):
            scope = RequestScope()
            scope.history = list(calls)
            ctx = UserContext("u", ["agent"], scope)
            outcomes.append(_layers(policy.rules_for(tool), ctx, (), {}, None, None)[1])
        assert (outcomes[0] is None) == (outcomes[1] is None), (tool, history, saved)
        if outcomes[0] is not None and outcomes[1] is not None:
            assert outcomes[0][0] == outcomes[1][0]
