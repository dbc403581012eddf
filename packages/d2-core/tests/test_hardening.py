"""Regressions from a hostile review: each test is an attack that must fail closed."""

from __future__ import annotations

import copy
import functools
import json
import multiprocessing
import os
import pickle
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from d2.core import (
    ConfigurationError,
    InMemorySource,
    InvalidPolicyError,
    Limits,
    LocalFileSource,
    MissingPolicyError,
    PermissionDeniedError,
    UserContext,
    configure_rbac_sync,
    d2_guard,
    get_user_context,
    is_allowed,
    set_user,
)
from d2.core.policy import compile_policy


def _whoami() -> tuple[str | None, bool]:
    return get_user_context().user_id, is_allowed("db.drop")


@pytest.mark.skipif(sys.platform == "win32", reason="fork start method")
def test_forked_pool_worker_does_not_inherit_the_forking_requests_user(configure: Any) -> None:
    configure({"role": "admin", "permissions": ["*"]})
    set_user("alice", roles=["admin"])
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        assert pool.submit(_whoami).result(timeout=60) == (None, False)


def test_a_source_can_be_reused_after_close_and_not_shared(tmp_path: Path, make_doc: Any) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(make_doc({"role": "a", "permissions": ["x"]})))
    source = LocalFileSource(path, poll_interval=0.02)
    configure_rbac_sync(source=source)
    configure_rbac_sync(source=source, strict_sync=True)  # same instance, same source
    with pytest.raises(ConfigurationError, match="own LocalFileSource"):
        configure_rbac_sync(source=source, instance_name="other")
    set_user("u", roles=["a"])
    path.write_text(json.dumps(make_doc({"role": "a", "permissions": ["y"]})))
    deadline = time.monotonic() + 5
    while not is_allowed("y") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert is_allowed("y")  # still watched after the re-configure


def test_in_memory_source_serves_one_instance(make_doc: Any) -> None:
    source = InMemorySource(make_doc())
    configure_rbac_sync(source=source)
    with pytest.raises(ConfigurationError, match="own InMemorySource"):
        configure_rbac_sync(source=source, instance_name="other")


def test_duplicate_json_keys_are_refused(tmp_path: Path, future: Any) -> None:
    text = (
        '{"metadata": {"expires": "EXP"}, "policies": [{"role": "a", "permissions": '
        '["db:*", {"tool": "db:drop", "allow": false, "allow": true}]}]}'
    ).replace("EXP", future())
    for name in ("policy.json", "policy.yaml"):  # JSON text in a .yaml file too
        (tmp_path / name).write_text(text)
        with pytest.raises(InvalidPolicyError, match="duplicate key 'allow'"):
            configure_rbac_sync(source=tmp_path / name)


def test_yaml_alias_bomb_gives_a_short_error_quickly(tmp_path: Path) -> None:
    lines = [
        "metadata: {expires: '2030-01-01'}",
        "policies:",
        "  - description:",
        "      - &l0 [x, x, x, x, x, x, x, x, x, x]",
    ]
    for i in range(1, 9):
        lines.append(f"      - &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]")
    lines += ["    role: *l8", "    permissions: []"]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    start = time.monotonic()
    with pytest.raises(InvalidPolicyError) as info:
        configure_rbac_sync(source=path)
    assert time.monotonic() - start < 5
    assert len(str(info.value)) < 2000


def test_in_memory_documents_refuse_non_json_values(make_doc: Any) -> None:
    doc = make_doc({"role": "a", "permissions": ["*", {"tool": {"db.drop"}, "allow": False}]})
    with pytest.raises(InvalidPolicyError, match="set is not allowed"):
        configure_rbac_sync(source=InMemorySource(doc))


def test_is_allowed_refuses_non_strings_and_does_not_remember_unknown_ids(
    configure: Any,
) -> None:
    manager = configure({"role": "a", "permissions": ["*"]})
    set_user("u", roles=["a"])
    for bad in (None, 42, "", ["x"]):
        assert is_allowed(bad) is False  # type: ignore[arg-type]
    for i in range(1000):
        assert is_allowed(f"model-made-up-{i}")
    assert len(manager.policy._memo) < 10  # type: ignore[union-attr]


def test_fifo_and_huge_files_are_refused_without_reading(tmp_path: Path) -> None:
    fifo = tmp_path / "policy.json"
    os.mkfifo(fifo)
    start = time.monotonic()
    with pytest.raises(MissingPolicyError, match="not a regular file"):
        configure_rbac_sync(source=fifo)
    assert time.monotonic() - start < 5
    big = tmp_path / "big.json"
    with open(big, "wb") as fh:
        fh.truncate(50 * 1024 * 1024)  # sparse: the size alone refuses it
    from d2.core import PolicyTooLargeError

    with pytest.raises(PolicyTooLargeError):
        configure_rbac_sync(source=big)


@pytest.mark.parametrize("role", ["admin\x1c", "\x85admin", "admin\u2028", "\u3000admin"])
def test_role_names_stay_literal_beyond_ascii_spaces(configure: Any, role: str) -> None:
    configure({"role": "admin", "permissions": ["*"]})
    assert set_user("u", roles=[role]).roles == {role}
    assert not is_allowed("db.drop")
    assert set_user("u", roles=["  admin\t"]).roles == {"admin"}


def test_nan_expiry_is_refused() -> None:
    with pytest.raises(InvalidPolicyError, match="finite"):
        compile_policy({"policies": []}, expires_at=float("nan"))


def test_deeply_nested_documents_are_invalid_policies(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InvalidPolicyError, match=r"nested too deeply|not valid JSON"):
        configure_rbac_sync(source=path, limits=Limits(max_bytes=1 << 20))


def test_partials_and_callable_objects_can_be_guarded(configure: Any) -> None:
    configure({"role": "a", "permissions": ["p", "o"]})

    def add(a: int, b: int) -> int:
        return a + b

    class Adder:
        def __call__(self, a: int) -> int:
            return a + 1

    guarded = d2_guard("p")(functools.partial(add, 1))
    obj = d2_guard("o")(Adder())
    set_user("u", roles=["a"])
    assert guarded(2) == 3 and obj(1) == 2
    with pytest.raises(ConfigurationError, match="give a tool id"):
        d2_guard(functools.partial(add, 1))


def test_user_context_and_limits_copy_and_pickle() -> None:
    ctx = set_user("u", roles=["a"])
    for clone in (copy.copy(ctx), copy.deepcopy(ctx), pickle.loads(pickle.dumps(ctx))):
        assert clone == ctx and clone.scope is not ctx.scope
    limits = Limits(max_tools=3)
    assert pickle.loads(pickle.dumps(limits)) == copy.deepcopy(limits) == limits
    assert UserContext("x", frozenset()) != ctx


def test_denial_of_a_tool_the_policy_never_names_is_not_remembered_by_queries(
    configure: Any,
) -> None:
    configure({"role": "a", "permissions": ["x"]})
    set_user("u", roles=["a"])
    with pytest.raises(PermissionDeniedError):
        d2_guard("zz")(lambda: None)()


def _pay_policy(configure: Any) -> None:
    configure(
        {
            "role": "r",
            "permissions": [
                {"tool": t, "conditions": {"input": {"amount": {"type": "int", "max": 100}}}}
                for t in ("partial", "bound", "obj", "wrapped", "builtin")
            ]
            + [{"tool": "posonly", "conditions": {"input": {"path": {"startsWith": "/tmp/"}}}}],
        }
    )


def test_input_rules_bind_through_partials_methods_objects_and_wrappers(configure: Any) -> None:
    _pay_policy(configure)

    def transfer(account: str, amount: int) -> str:
        return f"{account}:{amount}"

    class Payer:
        def pay(self, amount: int) -> int:
            return amount

        def __call__(self, amount: int) -> int:
            return amount

    def lying_decorator(f: Any) -> Any:
        @functools.wraps(f)
        def wrapper(extra: Any, *args: Any, **kwargs: Any) -> Any:
            return f(*args, **kwargs)

        return wrapper

    def pay(amount: int) -> int:
        return amount

    cases = {
        "partial": d2_guard("partial")(functools.partial(transfer, "acct-1")),
        "bound": d2_guard("bound")(Payer().pay),
        "obj": d2_guard("obj")(Payer()),
        "wrapped": d2_guard("wrapped")(lying_decorator(pay)),
    }
    set_user("u", roles=["r"])
    for name, tool in cases.items():
        args = (0, 10**9) if name == "wrapped" else (10**9,)
        with pytest.raises(PermissionDeniedError) as info:
            tool(*args)
        assert info.value.reason == "input_validation", name
    assert cases["partial"](5) == "acct-1:5" and cases["bound"](5) == 5


def test_builtins_called_positionally_fail_closed_and_posonly_is_not_a_keyword(
    configure: Any,
) -> None:
    _pay_policy(configure)
    guarded_abs = d2_guard("builtin")(abs)

    def opener(path: str = "/etc/shadow", /, **kw: Any) -> str:
        return path

    guarded_open = d2_guard("posonly")(opener)
    set_user("u", roles=["r"])
    with pytest.raises(PermissionDeniedError, match="cannot be bound"):
        guarded_abs(-(10**9))
    with pytest.raises(PermissionDeniedError, match="startsWith"):
        guarded_open(path="/tmp/x")  # goes to **kw; the real path is /etc/shadow
    assert guarded_open("/tmp/ok") == "/tmp/ok"


def test_attach_and_detach_continue_a_request_scope() -> None:
    from d2.core import attach, detach, get_user_context, record_fact

    session = set_user("u", roles=["r"])
    record_fact("SEEN")
    token = attach(session)
    set_user("other", roles=[])
    detach(token)
    assert get_user_context() is session and "SEEN" in session.scope.facts
    with pytest.raises(ConfigurationError):
        attach("u")  # type: ignore[arg-type]


def test_deny_lists_fail_closed_on_bool_int_aliasing(configure: Any) -> None:
    configure(
        {
            "role": "r",
            "permissions": [
                {
                    "tool": "acct",
                    "conditions": {
                        "input": {"account": {"ne": 0, "not_in": [0]}, "tags": {"not_contains": 0}}
                    },
                }
            ],
        }
    )
    acct = d2_guard("acct")(lambda account, tags=(): account)
    set_user("u", roles=["r"])
    assert acct(7, [1]) == 7
    for bad in ((False,), (0.0,), (7, [False])):
        with pytest.raises(PermissionDeniedError):
            acct(*bad)


def test_bad_operator_arguments_never_crash_the_loader() -> None:
    with pytest.raises(InvalidPolicyError, match="unknown type"):
        compile_policy(
            {
                "policies": [
                    {
                        "role": "r",
                        "permissions": [
                            {
                                "tool": "t",
                                "conditions": {"input": {"x": {"type": ["string", "null"]}}},
                            }
                        ],
                    }
                ]
            }
        )


def test_max_bytes_on_unmeasurable_values_denies(configure: Any) -> None:
    configure(
        {
            "role": "r",
            "permissions": [{"tool": "t", "conditions": {"input": {"x": {"max_bytes": 100}}}}],
        }
    )
    tool = d2_guard("t")(lambda x: x)
    circular: list[Any] = []
    circular.append(circular)
    set_user("u", roles=["r"])
    for value in ({(1, 2): "tuple key"}, circular):
        with pytest.raises(PermissionDeniedError):
            tool(value)


def test_metadata_expires_applies_inside_bundles_too() -> None:
    policy = compile_policy(
        {"metadata": {"expires": "2000-01-01T00:00:00Z"}, "policies": []},
        expires_at=time.time() + 3600,
    )
    assert policy.expires_at < time.time()
    with pytest.raises(InvalidPolicyError, match="RFC 3339"):
        compile_policy(
            {"metadata": {"expires": "not a date"}, "policies": []}, expires_at=time.time() + 3600
        )


def test_explain_binds_method_arguments_like_the_guard(configure: Any) -> None:
    from d2.core import explain

    configure(
        {
            "role": "r",
            "permissions": [{"tool": "refund", "conditions": {"input": {"amount": {"max": 100}}}}],
        }
    )

    class Shop:
        @d2_guard("refund")
        def refund(self, amount: int) -> int:
            return amount

    set_user("u", roles=["r"])
    with pytest.raises(PermissionDeniedError):
        Shop().refund(5000)
    assert not explain("refund", 5000).allowed
    assert explain("refund", 5).allowed


def test_sequence_tracking_is_consistent_under_thread_races(configure: Any) -> None:
    import threading

    from d2.core import run_in_thread  # noqa: F401 - the helper this mirrors

    configure({"role": "r", "permissions": ["*"], "sequence": [{"deny": ["a", "b"]}]})
    a, noise, b = (d2_guard(n, on_deny="denied")(lambda n=n: n) for n in ("a", "noise", "b"))
    import contextvars

    leaks = 0
    for _ in range(200):
        set_user("u", roles=["r"])
        ctx = contextvars.copy_context()
        threads = [threading.Thread(target=ctx.run, args=(a,))] + [
            threading.Thread(target=contextvars.copy_context().run, args=(noise,)) for _ in range(3)
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if b() == "b":
            leaks += 1
    assert leaks == 0


def test_output_rules_reach_iterators_and_awaitables(configure: Any) -> None:
    import asyncio

    configure(
        {
            "role": "r",
            "permissions": [
                {"tool": t, "conditions": {"output": {"ssn": {"action": "filter"}}}}
                for t in ("it", "aw", "obj")
            ],
        }
    )
    rows = [{"name": "bob", "ssn": "123"}]

    async def fetch() -> dict[str, str]:
        return dict(rows[0])

    def sync_wrapper() -> Any:  # a sync decorator around an async function
        return fetch()

    class AsyncCallable:
        async def __call__(self) -> dict[str, str]:
            return dict(rows[0])

    it = d2_guard("it")(lambda: iter(rows))
    aw = d2_guard("aw")(sync_wrapper)
    obj = d2_guard("obj")(AsyncCallable())
    set_user("u", roles=["r"])
    assert list(it()) == [{"name": "bob"}]
    assert asyncio.run(aw()) == {"name": "bob"}
    assert asyncio.run(obj()) == {"name": "bob"}
    assert rows == [{"name": "bob", "ssn": "123"}]


def test_a_rule_on_an_argument_the_tool_does_not_take_fails_closed(configure: Any) -> None:
    configure(
        {
            "role": "r",
            "permissions": [{"tool": "q", "conditions": {"input": {"limt": {"max": 50}}}}],
        }
    )
    query = d2_guard("q")(lambda limit=1000: limit)
    set_user("u", roles=["r"])
    with pytest.raises(PermissionDeniedError, match="does not take"):
        query()
