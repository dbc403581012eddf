"""A resume after an approval continues the request from its start: every
framework's documented resume recipe (``set_user`` as the requester again, then
resume the framework's own state) keeps the sequence, data-flow and ``per: request``
budget rules of the run that paused, whether the held call was approved or rejected.

The scenario, driven by each framework's own offline test model: the model reads
users, then asks for a refund of 500 (held for a ``finance_lead``); a lead approves
or rejects it (``d2.approve`` / ``d2.reject`` as another user, or the adapter's
helper); the app resumes as the documented recipe says; an approved refund runs
once (a rejected one never), and the model's first call of its own is
``http_request``, which the read before the pause forbids (``sequence_violation``
or ``data_flow_violation``), and the model reads the denial. After a rejection the
refund never comes back, so only the start of the resumed run can restore the
paused request. Without the read, the same ``http_request`` runs (the control that
lets each test fail). The budget case: the model searched twice
(``web.search``: ``max: 2 per request``) before the pause, and its first call after
the resume is a third search, refused.

``read`` says where the model read users: ``before`` (a turn before the refund),
``beside`` (the same model message, after the held refund: it runs while the
request waits, and is saved with it) or ``none``.

The persisted case runs the first half (up to the approval) in this process and the
resume in a second Python process (this file run as a script), both on one real
redis-server: the framework's state crosses as JSON (pydantic-ai's message history,
the Agents SDK's ``RunState``) or in a file-backed LangGraph checkpointer.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from d2.core import approve, configure_rbac_sync, reject, set_user, shutdown_rbac
from d2.core.stores.redis import RedisStore
from d2.core.testing import policy_document, redis_server

# Each framework is imported by its driver only: the second process loads one.

READ, REFUND, POST, SEARCH = "read_users", "refund", "http_request", "web_search"
TOOL_IDS = {
    READ: "db.read_users",
    REFUND: "payments.refund",
    POST: "http.request",
    SEARCH: "web.search",
}
CALLS: dict[str, tuple[str, dict[str, Any]]] = {  # call id -> (tool name, arguments)
    "r1": (READ, {}),
    "c1": (REFUND, {"order": "o1", "amount": 500}),
    "h1": (POST, {"url": "https://upload.invalid/dump"}),
    "s1": (SEARCH, {"query": "a"}),
    "s2": (SEARCH, {"query": "b"}),
    "s3": (SEARCH, {"query": "c"}),
}
PLANS: dict[str, list[list[str]]] = {  # where the model reads: its turns, as call ids
    "before": [["r1"], ["c1"], ["h1"]],
    "beside": [["c1", "r1"], ["h1"]],  # the read comes after the held call, same message
    "none": [["c1"], ["h1"]],
    "budget": [["s1", "s2"], ["c1"], ["s3"]],  # two searches, then a third after the pause
}
OUTCOMES = ["approved", "rejected"]
DENIED = {"sequence": "sequence_violation", "data_flow": "data_flow_violation"}
REQUIRE_REDIS = os.environ.get("D2_REQUIRE_REDIS") == "1"

RAN: list[str] = []  # what the tool bodies did, in order


def resume_policy(rule: str, name: str = "agents-resume") -> dict[str, Any]:
    """The agent reads users, refunds (over 100 with a finance lead's approval) and
    posts; ``rule``: a ``sequence`` rule or a ``data_flow`` label forbids posting
    after reading users."""
    agent: dict[str, Any] = {
        "role": "agent",
        "permissions": [
            "db.read_users",
            "http.request",
            {"tool": "web.search", "limits": [{"max": 2, "per": "request"}]},
            {
                "tool": "payments.refund",
                "approval": {"when": {"amount": {"gt": 100}}, "approvers": ["finance_lead"]},
            },
        ],
    }
    metadata: dict[str, Any] = {"name": name}
    if rule == "sequence":
        agent["sequence"] = [{"deny": ["db.read_users", "http.request"], "reason": "exfiltration"}]
    else:
        metadata["data_flow"] = {
            "labels": {"db.read_users": ["PII"]},
            "blocks": {"PII": ["http.request"]},
        }
    return policy_document(agent, {"role": "finance_lead", "permissions": []}, **metadata)


def turns(read: str, half: str) -> list[list[str]]:
    """The model's turns (call ids) before the pause (``first``), after it
    (``rest``), or all of them (``all``)."""
    plan = PLANS[read]
    cut = next(i for i, turn in enumerate(plan) if "c1" in turn) + 1
    return {"first": plan[:cut], "rest": plan[cut:], "all": plan}[half]


# -- the tools, as plain functions each framework wraps -------------------------------


def read_users() -> list[str]:
    """Read the user names."""
    RAN.append(READ)
    return ["Ada", "Grace"]


def refund(order: str, amount: int) -> str:
    """Refund an order."""
    RAN.append(f"refund({amount})")
    return f"refunded {amount}"


def http_request(url: str) -> str:
    """Send an HTTP request."""
    RAN.append(POST)
    return "posted"


def web_search(query: str) -> str:
    """Search the web."""
    RAN.append(f"search {query}")
    return f"results for {query}"


FUNCTIONS: list[Callable[..., Any]] = [read_users, refund, http_request, web_search]


def decide_as_lead(request_id: str, outcome: str) -> None:
    set_user("bob", roles=["finance_lead"])
    (approve if outcome == "approved" else reject)(request_id)


def as_requester() -> None:
    set_user("alice", roles=["agent"])  # the documented recipe: a fresh request


# -- one driver per framework: pause, persist, resume ---------------------------------


class Driver:
    """Runs one framework's agent through the scenario. ``pause`` runs as the
    requester until the refund is held and returns the D2 request id; ``decide``
    approves or rejects (``outcome``) as the lead; ``dump`` / ``load`` move the
    framework's state between processes; ``resume`` resumes as the documented recipe
    says and returns what the model read for each call id."""

    def __init__(self, script: list[list[str]], state_file: Path, outcome: str) -> None:
        self.script = script
        self.state_file = state_file
        self.outcome = outcome
        self.approved = outcome == "approved"

    async def pause(self) -> str:
        raise NotImplementedError

    async def decide(self, request_id: str) -> None:
        decide_as_lead(request_id, self.outcome)

    def dump(self) -> str:
        raise NotImplementedError

    async def load(self, text: str) -> None:
        raise NotImplementedError

    async def resume(self) -> dict[str, str]:
        raise NotImplementedError


class PydanticAIDriver(Driver):
    """``DeferredToolRequests`` -> ``d2.approve`` -> ``agent.run(message_history=...,
    deferred_tool_results=...)``, with pydantic-ai's ``FunctionModel``."""

    def __init__(self, script: list[list[str]], state_file: Path, outcome: str) -> None:
        super().__init__(script, state_file, outcome)
        from d2.agents.pydantic_ai import guard_tools
        from pydantic_ai import Agent, DeferredToolRequests
        from pydantic_ai.messages import (
            ModelRequest,
            ModelResponse,
            TextPart,
            ToolCallPart,
            ToolReturnPart,
        )
        from pydantic_ai.models.function import FunctionModel

        remaining = list(script)
        self.read: dict[str, str] = {}

        def model(messages: list[Any], info: Any) -> Any:
            for message in messages:
                if isinstance(message, ModelRequest):
                    for part in message.parts:
                        if isinstance(part, ToolReturnPart):
                            self.read[part.tool_call_id] = str(part.content)
            if not remaining:
                return ModelResponse(parts=[TextPart("done")])
            calls = remaining.pop(0)
            return ModelResponse(
                parts=[ToolCallPart(CALLS[c][0], CALLS[c][1], tool_call_id=c) for c in calls]
            )

        self.agent = Agent(
            FunctionModel(model),
            tools=guard_tools(FUNCTIONS, tool_ids=TOOL_IDS),
            output_type=[str, DeferredToolRequests],
        )
        self.messages: list[Any] = []
        self.held: list[str] = []

    async def pause(self) -> str:
        from d2.agents.pydantic_ai import approval_requests
        from pydantic_ai import DeferredToolRequests

        result = await self.agent.run("refund o1")
        assert isinstance(result.output, DeferredToolRequests)
        held = approval_requests(result.output)
        self.messages, self.held = result.all_messages(), list(held)
        assert self.held == ["c1"]
        return held["c1"]

    def dump(self) -> str:
        from pydantic_ai.messages import ModelMessagesTypeAdapter

        messages = ModelMessagesTypeAdapter.dump_json(self.messages).decode()
        return json.dumps({"messages": messages, "held": self.held})

    async def load(self, text: str) -> None:
        from pydantic_ai.messages import ModelMessagesTypeAdapter

        data = json.loads(text)
        self.messages = ModelMessagesTypeAdapter.validate_json(data["messages"])
        self.held = data["held"]

    async def resume(self) -> dict[str, str]:
        from pydantic_ai import DeferredToolResults

        result = await self.agent.run(
            message_history=self.messages,
            deferred_tool_results=DeferredToolResults(
                approvals=dict.fromkeys(self.held, self.approved)
            ),
        )
        assert result.output == "done"
        return self.read


class OpenAIAgentsDriver(Driver):
    """``result.interruptions`` -> ``approve_item`` -> ``Runner.run(agent, state)``,
    with the SDK's ``ScriptedModel``; the ``RunState`` crosses as ``to_json``."""

    def __init__(self, script: list[list[str]], state_file: Path, outcome: str) -> None:
        super().__init__(script, state_file, outcome)
        from agents import Agent, function_tool, set_tracing_disabled
        from agents.testing import ScriptedModel, assistant_message, function_call
        from d2.agents.openai_agents import guard_tools

        set_tracing_disabled(True)
        steps: list[Any] = [
            [function_call(CALLS[c][0], CALLS[c][1], call_id=c) for c in turn] for turn in script
        ]
        self.model = ScriptedModel([*steps, [assistant_message("done")]])
        tools = guard_tools([function_tool(f) for f in FUNCTIONS], tool_ids=TOOL_IDS)
        self.agent = Agent(name="support", model=self.model, tools=tools)
        self.state: Any = None
        self.items: list[Any] = []

    async def pause(self) -> str:
        from agents import Runner
        from d2.agents.openai_agents import approval_request

        result = await Runner.run(self.agent, "refund o1")
        [item] = result.interruptions
        self.state, self.items = result.to_state(), [item]
        request = approval_request(item, self.state)
        assert request is not None
        return request.id

    async def decide(self, request_id: str) -> None:
        from d2.agents.openai_agents import approve_item, reject_item

        set_user("bob", roles=["finance_lead"])
        [item] = self.items
        decide = approve_item if self.approved else reject_item
        request = await decide(self.state, item)  # D2, then the SDK's state
        assert request is not None and request.id == request_id

    def dump(self) -> str:
        return json.dumps(self.state.to_json())

    async def load(self, text: str) -> None:
        from agents import RunState

        self.state = await RunState.from_json(self.agent, json.loads(text))

    async def resume(self) -> dict[str, str]:
        from agents import Runner

        result = await Runner.run(self.agent, self.state)
        assert result.final_output == "done" and not result.interruptions
        read: dict[str, str] = {}
        for call in self.model.calls:
            for entry in call.input:
                if isinstance(entry, dict) and entry.get("type") == "function_call_output":
                    read[entry["call_id"]] = str(entry["output"])
        return read


class OpenAIAgentsElsewhereDriver(OpenAIAgentsDriver):
    """The Agents SDK when the approver works elsewhere (a review app): the lead
    finds the request with ``d2.pending_approvals()`` and decides it in D2 alone;
    the app then applies the decision to its stored ``RunState`` and resumes."""

    async def decide(self, request_id: str) -> None:
        from d2.core import pending_approvals

        set_user("bob", roles=["finance_lead"])
        assert [r.id for r in pending_approvals()] == [request_id]
        decide_as_lead(request_id, self.outcome)

    async def resume(self) -> dict[str, str]:
        for item in self.state.get_interruptions():  # the decision D2 recorded
            (self.state.approve if self.approved else self.state.reject)(item)
        return await super().resume()


class FileSaver:
    """A LangGraph checkpointer kept in a file: ``InMemorySaver``'s three tables,
    written after every change and read back on creation (what a persistent
    checkpointer such as SqliteSaver does, in a few lines)."""

    @staticmethod
    def create(path: Path) -> Any:
        from langgraph.checkpoint.memory import InMemorySaver

        class Saver(InMemorySaver):
            def _save(self) -> None:
                tables = {
                    "storage": {k: dict(v) for k, v in self.storage.items()},
                    "writes": dict(self.writes),
                    "blobs": dict(self.blobs),
                }
                path.write_bytes(pickle.dumps(tables))  # only str, bytes, tuples

            def put(self, *args: Any, **kwargs: Any) -> Any:
                done = super().put(*args, **kwargs)
                self._save()
                return done

            def put_writes(self, *args: Any, **kwargs: Any) -> None:
                super().put_writes(*args, **kwargs)
                self._save()

        saver = Saver()
        if path.exists():
            tables = pickle.loads(path.read_bytes())  # the file this test wrote
            for thread, spaces in tables["storage"].items():
                saver.storage[thread].update(spaces)
            saver.writes.update(tables["writes"])
            saver.blobs.update(tables["blobs"])
        return saver


class LangGraphDriver(Driver):
    """``interrupt`` -> ``d2.approve`` -> ``graph.invoke(Command(resume=...))`` with
    a checkpointer, driven by langchain-core's ``GenericFakeChatModel``; ``shape``:
    a ``StateGraph`` routing a ``Send`` per tool call, or ``create_agent``."""

    shape = "send"

    def __init__(self, script: list[list[str]], state_file: Path, outcome: str) -> None:
        super().__init__(script, state_file, outcome)
        from d2.agents.langchain import guard_tools
        from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
        from langchain_core.messages import AIMessage
        from langchain_core.tools import tool

        class ScriptedChatModel(GenericFakeChatModel):
            """The offline chat model; the script, not the bound tools, says what it calls."""

            def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
                return self

        replies = [
            AIMessage(
                content="",
                tool_calls=[{"name": CALLS[c][0], "args": CALLS[c][1], "id": c} for c in turn],
            )
            for turn in script
        ]
        model = ScriptedChatModel(messages=iter([*replies, AIMessage(content="done")]))
        wrapped = [tool(f) for f in FUNCTIONS]
        for t in wrapped:
            t.handle_tool_error = True  # the model reads a denial as an error ToolMessage
        tools = guard_tools(wrapped, tool_ids=TOOL_IDS)
        self.saver = FileSaver.create(state_file)
        self.config = {"configurable": {"thread_id": "refund-1"}}
        if self.shape == "create_agent":
            from langchain.agents import create_agent

            self.graph = create_agent(model, tools, checkpointer=self.saver)
            return
        from langgraph.graph import END, START, MessagesState, StateGraph
        from langgraph.prebuilt import ToolNode
        from langgraph.types import Send

        # (plain annotations: LangGraph reads them, and these names are local)
        def call_model(state: dict[str, Any]) -> dict[str, Any]:
            return {"messages": [model.invoke(state["messages"])]}

        def each_call_alone(state: dict[str, Any]) -> Any:
            calls = getattr(state["messages"][-1], "tool_calls", None)
            return [Send("tools", [call]) for call in calls] if calls else END

        builder = StateGraph(MessagesState)
        builder.add_node("model", call_model)
        builder.add_node("tools", ToolNode(tools))
        builder.add_edge(START, "model")
        builder.add_conditional_edges("model", each_call_alone, ["tools", END])
        builder.add_edge("tools", "model")
        self.graph = builder.compile(checkpointer=self.saver)

    async def pause(self) -> str:
        from langchain_core.messages import HumanMessage

        paused = self.graph.invoke({"messages": [HumanMessage("refund o1")]}, self.config)
        (pause,) = paused["__interrupt__"]
        assert pause.value["d2_tool_id"] == "payments.refund"
        request_id = pause.value["d2_approval_request"]
        assert isinstance(request_id, str)
        return request_id

    def dump(self) -> str:
        return ""  # the checkpointer's file is the state

    async def load(self, text: str) -> None:
        pass

    async def resume(self) -> dict[str, str]:
        from langchain_core.messages import ToolMessage
        from langgraph.types import Command

        done = self.graph.invoke(Command(resume=self.outcome), self.config)
        assert "__interrupt__" not in done and done["messages"][-1].content == "done"
        return {
            m.tool_call_id: str(m.content) for m in done["messages"] if isinstance(m, ToolMessage)
        }


class CreateAgentDriver(LangGraphDriver):
    shape = "create_agent"


class LangChainDriver(Driver):
    """langchain-core tools alone: ``ApprovalPending`` -> ``d2.approve`` (or
    ``d2.reject``) -> a new run that first calls ``d2.restore_request`` (the plain
    path's documented resume), then goes on with the model's turns; an approved
    call is made again last (the model may call other tools first)."""

    def __init__(self, script: list[list[str]], state_file: Path, outcome: str) -> None:
        super().__init__(script, state_file, outcome)
        from d2.agents.langchain import guard_tools
        from langchain_core.tools import tool

        guarded = guard_tools([tool(f) for f in FUNCTIONS], tool_ids=TOOL_IDS)
        self.tools = {t.name: t for t in guarded}
        self.pending = list(script)  # the turns not run yet
        self.read: dict[str, str] = {}
        self.held: list[str] = []
        self.requests: list[str] = []

    def run(self, call_ids: list[str]) -> str | None:
        """Invoke each call (the loop an app writes); the request id of a held one."""
        from d2.agents.langchain import ApprovalPending, ToolDenied

        held = None
        for call_id in call_ids:
            name, arguments = CALLS[call_id]
            try:
                self.read[call_id] = str(self.tools[name].invoke(arguments))
            except ApprovalPending as pending:  # ask an approver, finish the turn
                self.held.append(call_id)
                self.requests.append(pending.request.id)
                held = pending.request.id
            except ToolDenied as denied:
                self.read[call_id] = str(denied)
        return held

    async def pause(self) -> str:
        while self.pending:
            held = self.run(self.pending.pop(0))
            if held is not None:
                return held
        raise AssertionError("nothing was held")

    def dump(self) -> str:
        return json.dumps({"held": self.held, "read": self.read, "requests": self.requests})

    async def load(self, text: str) -> None:
        data = json.loads(text)
        self.held, self.read, self.requests = data["held"], data["read"], data["requests"]

    async def resume(self) -> dict[str, str]:
        from d2.core import restore_request

        for request_id in self.requests:  # first: the request continues
            restore_request(request_id)
        held, self.held = self.held, []
        while self.pending:
            assert self.run(self.pending.pop(0)) is None
        if self.approved:
            assert self.run(held) is None  # the approved call, made again, runs
        return self.read


DRIVERS: dict[str, type[Driver]] = {
    "pydantic-ai": PydanticAIDriver,
    "openai-agents": OpenAIAgentsDriver,
    "openai-agents-approved-elsewhere": OpenAIAgentsElsewhereDriver,
    "langgraph-send": LangGraphDriver,
    "langgraph-create_agent": CreateAgentDriver,
    "langchain": LangChainDriver,
}


def check(read: str, rule: str, outcome: str, seen: dict[str, str], ran: list[str]) -> None:
    """The refund ran once after an approval, never after a rejection;
    ``http_request`` was refused by ``rule`` when the model had read users (and the
    model read why), else it ran; a third search was refused by the budget."""
    if outcome == "approved":
        assert ran.count("refund(500)") == 1
        assert seen["c1"] == "refunded 500"
    else:
        assert "refund(500)" not in ran
    if read == "budget":
        assert "search c" not in ran
        assert "budget exceeded for web.search for this request" in seen["s3"], seen["s3"]
        return
    if read == "none":
        assert seen["h1"] == "posted" and ran.count(POST) == 1
        return
    assert POST not in ran
    assert f"'http.request' was refused ({DENIED[rule]})" in seen["h1"], seen["h1"]
    assert "Ada" in seen["r1"]  # the model read the users before it tried to post


def before_the_pause(read: str) -> list[str]:
    """What the tool bodies did before the pause (the refund waits)."""
    return {"none": [], "budget": ["search a", "search b"]}.get(read, [READ])


# -- in one process --------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_model_requests() -> Iterator[None]:
    from pydantic_ai import models

    allowed, models.ALLOW_MODEL_REQUESTS = models.ALLOW_MODEL_REQUESTS, False
    RAN.clear()
    yield
    models.ALLOW_MODEL_REQUESTS = allowed


CASES = [(read, rule) for read in PLANS for rule in DENIED if read != "budget"]
CASES.append(("budget", "data_flow"))  # the budget does not depend on the rule


@pytest.mark.parametrize("outcome", OUTCOMES)
@pytest.mark.parametrize(("read", "rule"), CASES)
@pytest.mark.parametrize("framework", list(DRIVERS))
async def test_the_resumed_run_keeps_the_rules_of_the_run_that_paused(
    framework: str, rule: str, read: str, outcome: str, configure: Any, tmp_path: Path
) -> None:
    configure(resume_policy(rule))
    driver = DRIVERS[framework](turns(read, "all"), tmp_path / "state", outcome)
    as_requester()
    request_id = await driver.pause()
    assert sorted(RAN) == before_the_pause(read)  # the refund waits (calls in parallel)
    await driver.decide(request_id)
    as_requester()
    check(read, rule, outcome, await driver.resume(), RAN)


async def test_an_approval_with_edited_arguments_still_continues_the_request(
    configure: Any, tmp_path: Path
) -> None:
    """pydantic-ai lets the approver edit the call (``ToolApproved(override_args=...)``):
    the call that runs is then not the held one (a refund of 50 needs no approval),
    so it restores nothing; only the start of the resumed run continues the paused
    request, and the model's upload after it is still refused."""
    from pydantic_ai import DeferredToolResults, ToolApproved

    configure(resume_policy("data_flow"))
    driver = PydanticAIDriver(turns("before", "all"), tmp_path / "state", "approved")
    as_requester()
    request_id = await driver.pause()
    await driver.decide(request_id)
    as_requester()
    edited = ToolApproved(override_args={"order": "o1", "amount": 50})
    result = await driver.agent.run(
        message_history=driver.messages,
        deferred_tool_results=DeferredToolResults(approvals={"c1": edited}),
    )
    assert result.output == "done"
    assert RAN == [READ, "refund(50)"]
    assert "'http.request' was refused (data_flow_violation)" in driver.read["h1"]


# -- across processes, on one redis-server ---------------------------------------------


@pytest.fixture
def redis() -> Iterator[Any]:
    if shutil.which("redis-server") is None:
        message = "the persisted resume needs redis-server (Debian package redis-server)"
        if REQUIRE_REDIS:
            pytest.fail(message)
        pytest.skip(message)
    with redis_server() as server:
        yield server


CROSS = [  # (read, rule, outcome)
    ("before", "data_flow", "rejected"),
    ("beside", "sequence", "approved"),
    ("none", "data_flow", "rejected"),
    ("budget", "data_flow", "rejected"),
    ("before", "sequence", "approved"),
]


@pytest.mark.parametrize("framework", list(DRIVERS))
async def test_a_run_resumed_in_another_process_keeps_the_rules(
    framework: str, redis: Any, tmp_path: Path
) -> None:
    """Each case of ``CROSS`` pauses here and is decided here; one second process
    resumes them all (one interpreter start per framework)."""
    jobs = []
    for n, (read, rule, outcome) in enumerate(CROSS):
        case = tmp_path / f"{n}-{read}"
        case.mkdir()
        policy = case / "policy.json"
        policy.write_text(json.dumps(resume_policy(rule, f"agents-resume-{n}")))
        store = RedisStore.from_url(redis.url)  # closed here, async client included
        configure_rbac_sync(source=str(policy), store=store)  # an app per case
        RAN.clear()
        driver = DRIVERS[framework](turns(read, "first"), case / "state", outcome)
        as_requester()
        request_id = await driver.pause()
        await driver.decide(request_id)
        assert sorted(RAN) == before_the_pause(read)  # the refund waits (calls in parallel)
        (case / "saved.json").write_text(driver.dump())
        shutdown_rbac()
        await store.aclose()
        jobs.append({"read": read, "rule": rule, "outcome": outcome, "case": str(case)})

    spec = tmp_path / "jobs.json"
    spec.write_text(json.dumps({"framework": framework, "jobs": jobs}))
    env = {
        **os.environ,
        "D2_STORE_URL": redis.url,
        "D2_SILENT": "1",
        "D2_TELEMETRY": "off",
        "OPENAI_AGENTS_DISABLE_TRACING": "1",
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, __file__, str(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    for job in jobs:
        outcome = json.loads((Path(job["case"]) / "out.json").read_text())
        assert outcome["pid"] != os.getpid()
        check(job["read"], job["rule"], job["outcome"], outcome["read"], outcome["ran"])


async def _second_process(spec: Path) -> None:
    """The resumes, in a fresh interpreter: for each job the same policy file, the
    store from ``D2_STORE_URL``, the framework's state read back, then the
    documented recipe (``set_user`` as the requester, resume)."""
    work = json.loads(spec.read_text())
    for job in work["jobs"]:
        case = Path(job["case"])
        configure_rbac_sync(source=str(case / "policy.json"))
        RAN.clear()
        driver = DRIVERS[work["framework"]](
            turns(job["read"], "rest"), case / "state", job["outcome"]
        )
        await driver.load((case / "saved.json").read_text())
        as_requester()
        seen = await driver.resume()
        outcome = {"pid": os.getpid(), "read": seen, "ran": RAN}
        (case / "out.json").write_text(json.dumps(outcome))


if __name__ == "__main__":
    asyncio.run(_second_process(Path(sys.argv[1])))
