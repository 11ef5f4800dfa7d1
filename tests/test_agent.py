"""The video-QA agent loop: a scripted chat model stand-in, and once a real served SmolLM2.

``ScriptedChatModel`` is a *model stand-in*: it replays scripted replies (tool calls, answers,
malformed calls) so the loop's behaviour is tested exactly; the retrieval tool behind it is the
real one over a real store.  The last tests talk to a real ``transformers serve`` process
serving SmolLM2-135M-Instruct through ChatOpenAI: its words are not judged (a 135M model
does not call tools), only that the answer carries retrieved windows all the same (the
``ground`` node retrieves for it) and that a question about no video retrieves nothing.
``smollm2_endpoint`` is shared with ``test_langgraph_dev_agent.py`` (one server per session).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import StructuredTool
from langgraph.checkpoint.memory import InMemorySaver
from pydantic import Field

from agent.context import AgentContext
from agent.graph import NO_ANSWER, build_agent
from granalign.text import seconds_text
from graphs.context import Context
from tests.servers import free_port, server
from tests.test_tool import DOG_VIDEO, demo_store, smollm2_folder  # noqa: F401  (fixtures)
from tools.langchain_tool import MomentRetriever, ToolSettings, granalign_tools

BIN = Path(sys.executable).parent


class ScriptedChatModel(BaseChatModel):
    """Model stand-in: replays ``replies`` in order, then ``default``; records every call."""

    replies: list[AIMessage]
    default: AIMessage | None = None
    calls: list[dict[str, Any]] = Field(default_factory=list)
    bound: list[str] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted-stand-in"

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self.model_copy(update={"bound": [t.name for t in tools]})

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        self.calls.append({"messages": list(messages), "tools": list(self.bound)})
        if self.replies:
            reply = self.replies.pop(0)
        elif self.default is not None:
            reply = self.default.model_copy(deep=True)
        else:
            raise AssertionError("the agent asked the scripted model more often than scripted")
        return ChatResult(generations=[ChatGeneration(message=reply)])


def _scripted(*replies: AIMessage, default: AIMessage | None = None) -> ScriptedChatModel:
    return ScriptedChatModel(replies=list(replies), default=default, calls=[], bound=[])


def _call(name: str, args: dict[str, Any], call_id: str = "call-1") -> dict[str, Any]:
    return {"id": call_id, "name": name, "args": args, "type": "tool_call"}


@pytest.fixture(scope="module")
def tools(demo_store):  # noqa: F811
    store, _ = demo_store
    settings = ToolSettings(context=Context(store_dir=str(store)), roots=(), url_allowlist=())
    return granalign_tools(MomentRetriever(settings))


def transcript(messages: list[BaseMessage]) -> str:
    """A readable record of a run (question → tool call → answer), for the report."""
    lines = []
    for m in messages:
        if isinstance(m, HumanMessage):
            lines.append(f"USER: {m.text}")
        elif isinstance(m, AIMessage):
            who = "GROUND" if m.name == "ground" else "AGENT"  # the agent's own call, not the model's
            for c in m.tool_calls:
                lines.append(f"{who} → {c['name']}({c['args']})")
            if m.text:
                lines.append(f"AGENT: {m.text}")
        elif isinstance(m, ToolMessage):
            lines.append(f"TOOL[{m.name}, {m.status}]: {m.text}")
    return "\n".join(lines)


def test_question_tool_call_answer_with_windows_cited(tools, demo_store, capsys):  # noqa: F811
    _, anns = demo_store
    question = "When are the friends playing with the black dog?"
    model = _scripted(
        AIMessage(
            content="",
            tool_calls=[
                _call("retrieve_moments", {"video": DOG_VIDEO, "query": "friends play with a black dog"})
            ],
        ),
        AIMessage(content="The friends play with the black dog towards the end of the video."),
    )
    agent = build_agent(model=model, tools=tools)
    out = agent.invoke({"messages": [HumanMessage(question)], "video": DOG_VIDEO})
    msgs = out["messages"]
    assert [type(m).__name__ for m in msgs] == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    tool_msg = msgs[2]
    assert tool_msg.status == "success" and tool_msg.tool_call_id == "call-1"
    moments = tool_msg.artifact["moments"]
    assert moments and tool_msg.artifact["video_id"] == DOG_VIDEO
    # the model saw the tool's text on its second call, with the tools still bound
    second = model.calls[1]
    assert second["tools"] == ["retrieve_moments", "list_videos"]
    assert any(isinstance(m, ToolMessage) and "moment(s), best first" in m.text for m in second["messages"])
    # the conversation's video went into the system prompt as data
    system = model.calls[0]["messages"][0]
    assert isinstance(system, SystemMessage) and repr(DOG_VIDEO) in system.text
    # the answer cites the windows in seconds (appended: the model did not)
    answer = msgs[-1].text
    s, e, _ = moments[0]
    assert answer.startswith("The friends play with the black dog")
    assert f"{seconds_text(s)}–{seconds_text(e)} s" in answer
    assert out["citations"] == [
        {"video_id": DOG_VIDEO, "query": "friends play with a black dog", "moments": moments}
    ]
    gt = anns[DOG_VIDEO]["relevant_windows"]
    with capsys.disabled():
        print(f"\n[agent transcript, scripted model stand-in; ground truth {gt}]\n{transcript(msgs)}")


def test_an_answer_that_already_cites_is_left_alone(tools):
    model = _scripted(
        AIMessage(
            content="", tool_calls=[_call("retrieve_moments", {"video": DOG_VIDEO, "query": "a black dog"})]
        ),
        default=AIMessage(content="placeholder"),
    )
    agent = build_agent(model=model, tools=tools)
    first = agent.invoke({"messages": [HumanMessage("when is the dog there?")]})
    s, e, _ = first["citations"][0]["moments"][0]
    model2 = _scripted(
        AIMessage(
            content="", tool_calls=[_call("retrieve_moments", {"video": DOG_VIDEO, "query": "a black dog"})]
        ),
        AIMessage(content=f"From {s:g} s to {e:g} s."),
    )
    out = build_agent(model=model2, tools=tools).invoke(
        {"messages": [HumanMessage("when is the dog there?")]}
    )
    assert out["messages"][-1].text == f"From {s:g} s to {e:g} s."


def test_model_mistakes_come_back_as_readable_tool_errors(tools):
    """Refused arguments, an unknown tool, arguments that are not JSON: errors, then an answer."""
    bad = AIMessage(
        content="",
        tool_calls=[
            _call("retrieve_moments", {"video": "../../etc/passwd", "query": "a dog"}, "c1"),
            _call("retrieve_moments", {"video": DOG_VIDEO, "query": "a dog", "top_k": 1000}, "c2"),
            _call("delete_everything", {}, "c3"),
        ],
        invalid_tool_calls=[
            {
                "id": "c4",
                "name": "retrieve_moments",
                "args": "{video: oops",
                "error": "bad json",
                "type": "invalid_tool_call",
            }
        ],
    )
    model = _scripted(bad, AIMessage(content="Sorry, I could not search that video."))
    out = build_agent(model=model, tools=tools).invoke({"messages": [HumanMessage("when does the dog run?")]})
    errors = {m.tool_call_id: m.text for m in out["messages"] if isinstance(m, ToolMessage)}
    assert set(errors) == {"c1", "c2", "c3", "c4"}
    assert "'..' is not allowed" in errors["c1"]
    assert "top_k" in errors["c2"] and "less than or equal to 20" in errors["c2"]
    assert "unknown tool 'delete_everything'" in errors["c3"]
    assert "not a valid JSON object" in errors["c4"]
    assert all(m.status == "error" for m in out["messages"] if isinstance(m, ToolMessage))
    assert out["messages"][-1].text == "Sorry, I could not search that video."
    assert out["citations"] == []


def test_a_tool_that_raises_does_not_end_the_conversation():
    def explode(video: str) -> str:
        """Always fails."""
        raise RuntimeError("boom")

    tool = StructuredTool.from_function(explode, name="explode")
    model = _scripted(
        AIMessage(content="", tool_calls=[_call("explode", {"video": "x"})]), AIMessage(content="It failed.")
    )
    out = build_agent(model=model, tools=[tool]).invoke({"messages": [HumanMessage("try it")]})
    tool_msg = out["messages"][2]
    assert tool_msg.status == "error" and "tool explode failed (RuntimeError)" in tool_msg.text
    assert out["messages"][-1].text == "It failed."


def test_async_only_tools_run_under_ainvoke_and_fail_readably_under_invoke():
    async def echo(text: str) -> str:
        """Echo (async only, like the tools langchain-mcp-adapters makes)."""
        return f"echo {text}"

    tool = StructuredTool.from_function(coroutine=echo, name="echo")

    def script() -> ScriptedChatModel:
        return _scripted(
            AIMessage(content="", tool_calls=[_call("echo", {"text": "hi"})]), AIMessage(content="ok")
        )

    question = {"messages": [HumanMessage("say hi")]}
    out = asyncio.run(build_agent(model=script(), tools=[tool]).ainvoke(question))
    assert out["messages"][2].status == "success" and out["messages"][2].text == "echo hi"
    out = build_agent(model=script(), tools=[tool]).invoke(question)
    assert (
        out["messages"][2].status == "error"
        and "tool echo failed (NotImplementedError)" in out["messages"][2].text
    )
    assert out["messages"][-1].text == "ok"


@pytest.mark.parametrize("run_async", [False, True], ids=["invoke", "ainvoke"])
def test_a_tool_that_asks_a_human_pauses_the_agent_and_resumes_with_the_answer(run_async):
    """``interrupt()`` inside a tool (a human-in-the-loop approval) raises LangGraph's
    GraphInterrupt; the tools node turned it into "tool approve failed (GraphInterrupt)" for the
    model, so the run never paused.  It now pauses, and ``Command(resume=...)`` answers it."""
    from langgraph.types import Command, interrupt

    asked: list[Any] = []

    def approve(video: str) -> str:
        """Ask a person before searching the video."""
        answer = interrupt({"question": f"search {video}?"})
        asked.append(answer)
        return f"the person said {answer}"

    tool = StructuredTool.from_function(approve, name="approve")
    model = _scripted(
        AIMessage(content="", tool_calls=[_call("approve", {"video": "kitchen.mp4"})]),
        AIMessage(content="Approved, searching."),
    )
    agent = build_agent(model=model, tools=[tool], checkpointer=InMemorySaver())
    cfg = {"configurable": {"thread_id": f"hitl-{run_async}"}}

    def run(given: Any) -> dict[str, Any]:
        return asyncio.run(agent.ainvoke(given, cfg)) if run_async else agent.invoke(given, cfg)

    paused = run({"messages": [HumanMessage("search the kitchen video")]})
    assert [i.value for i in paused["__interrupt__"]] == [{"question": "search kitchen.mp4?"}]
    assert agent.get_state(cfg).next == ("tools",) and asked == []
    assert not any(isinstance(m, ToolMessage) for m in agent.get_state(cfg).values["messages"])
    out = run(Command(resume="yes"))
    tool_msg = next(m for m in out["messages"] if isinstance(m, ToolMessage))
    assert tool_msg.status == "success" and tool_msg.text == "the person said yes"
    assert asked == ["yes"] and out["messages"][-1].text == "Approved, searching."
    assert len(model.calls) == 2


# -- several tool calls in one reply run at once, as LangGraph's ToolNode runs them ------------

MEET_TIMEOUT_S = 10.0
"""How long a call waits for the step's other calls: run one after another, they never meet."""


class _Meeting:
    """Tool calls that must all be running at once before any returns: a barrier with a
    timeout, so a tools node that runs them one after another fails instead of hanging."""

    def __init__(self, parties: int, *, reported: bool = False) -> None:
        self.parties = parties
        self.barrier = threading.Barrier(parties, timeout=MEET_TIMEOUT_S)
        self.abarriers: dict[Any, asyncio.Barrier] = {}
        self.finished: list[str] = []
        self.reported = reported  # whether ``last`` waits for the others' tool_done events
        self.done_events: list[str] = []  # the tool_done events the test's reader has seen

    async def ameet(self) -> None:
        loop = asyncio.get_running_loop()  # an asyncio.Barrier belongs to one event loop
        barrier = self.abarriers.setdefault(loop, asyncio.Barrier(self.parties))
        await asyncio.wait_for(barrier.wait(), MEET_TIMEOUT_S)

    def others_finished(self) -> bool:
        """Whether the other calls returned or, with ``reported``, had their ``tool_done``
        events reach the stream's reader: a tool's return comes before the node writes its
        event, so a last call that waited only for the returns could write its event first."""
        return len(self.done_events if self.reported else self.finished) >= self.parties - 1

    def tool(self, name: str, last: bool = False) -> StructuredTool:
        """A tool that meets the others; ``last`` returns only after every other call returned
        (with ``reported``: after their tool_done events were read), so the step's calls end in
        another order than they were made."""
        from langgraph.config import get_stream_writer

        def meet(label: str) -> str:
            """Wait for the other calls of the step."""
            get_stream_writer()({"meeting": label})  # a call still writes to the run's stream
            self.barrier.wait()  # BrokenBarrierError after MEET_TIMEOUT_S
            for _ in range(int(MEET_TIMEOUT_S * 100)):
                if not last or self.others_finished():
                    break
                time.sleep(0.01)
            self.finished.append(label)
            return f"{label} met the others"

        async def ameet(label: str) -> str:
            get_stream_writer()({"meeting": label})
            await self.ameet()
            for _ in range(int(MEET_TIMEOUT_S * 100)):
                if not last or self.others_finished():
                    break
                await asyncio.sleep(0.01)
            self.finished.append(label)
            return f"{label} met the others"

        return StructuredTool.from_function(meet, coroutine=ameet, name=name, description="Meet.")


def _stream(
    agent: Any, given: Any, run_async: bool, meeting: _Meeting | None = None, **kw: Any
) -> list[tuple[str, Any]]:
    """The run's (mode, chunk) pairs, read as they come; ``meeting`` is told each tool_done."""
    modes = ["values", "custom"]
    chunks: list[tuple[str, Any]] = []

    def read(chunk: tuple[str, Any]) -> None:
        chunks.append(chunk)
        mode, data = chunk
        if meeting is not None and mode == "custom" and data.get("agent") == "tool_done":
            meeting.done_events.append(data["name"])

    if not run_async:
        for chunk in agent.stream(given, stream_mode=modes, **kw):
            read(chunk)
        return chunks

    async def run() -> None:
        async for chunk in agent.astream(given, stream_mode=modes, **kw):
            read(chunk)

    asyncio.run(run())
    return chunks


@pytest.mark.parametrize("run_async", [False, True], ids=["invoke", "ainvoke"])
def test_the_tool_calls_of_one_reply_run_at_once_and_reply_in_call_order(run_async):
    """Three retrievals of 2 s each took 6 s: the tools node ran a reply's calls one after
    another.  They now all run at once (each must reach the barrier before any returns), and
    the replies still come in the order of the calls although the first ends last."""
    meeting = _Meeting(3, reported=True)
    tools = [meeting.tool("slow", last=True), meeting.tool("quick"), meeting.tool("other")]
    calls = [
        _call("slow", {"label": "a"}, "c1"),
        _call("quick", {"label": "b"}, "c2"),
        _call("other", {"label": "c"}, "c3"),
    ]
    model = _scripted(AIMessage(content="", tool_calls=calls), AIMessage(content="all met"))
    agent = build_agent(model=model, tools=tools)
    chunks = _stream(agent, {"messages": [HumanMessage("go")]}, run_async, meeting)
    out = [c for mode, c in chunks if mode == "values"][-1]
    replies = [m for m in out["messages"] if isinstance(m, ToolMessage)]
    assert [(m.tool_call_id, m.status, m.text) for m in replies] == [
        ("c1", "success", "a met the others"),
        ("c2", "success", "b met the others"),
        ("c3", "success", "c met the others"),
    ]
    assert meeting.finished[-1] == "a" and out["messages"][-1].text == "all met"
    # progress: every call's "tool" event first, in call order; "tool_done" as each call ends
    custom = [c for mode, c in chunks if mode == "custom"]
    steps = [(c["agent"], c["name"]) for c in custom if c.get("agent") in ("tool", "tool_done")]
    assert steps[:3] == [("tool", "slow"), ("tool", "quick"), ("tool", "other")]
    assert sorted(steps[3:5]) == [("tool_done", "other"), ("tool_done", "quick")]
    assert steps[5:] == [("tool_done", "slow")]
    # each event names its call, so a UI can pair a call's tool_done with its tool event
    ids = [(c["agent"], c["name"], c["call_id"]) for c in custom if c.get("agent") in ("tool", "tool_done")]
    assert ids[:3] == [("tool", "slow", "c1"), ("tool", "quick", "c2"), ("tool", "other", "c3")]
    assert ids[5] == ("tool_done", "slow", "c1") and {i[2] for i in ids[3:5]} == {"c2", "c3"}
    assert sorted(c["meeting"] for c in custom if "meeting" in c) == ["a", "b", "c"]


@pytest.mark.parametrize("run_async", [False, True], ids=["invoke", "ainvoke"])
def test_failures_budget_and_redaction_hold_for_calls_that_run_at_once(run_async):
    """A raising tool, a third-party tool's error naming this server's home folder, an unknown
    tool, a call past the budget and one that is not JSON, beside two calls that must meet:
    each gets its own reply, in call order."""
    meeting = _Meeting(2)

    def explode(video: str) -> str:
        """Always fails."""
        raise RuntimeError("boom")

    def leaky(video: str) -> ToolMessage:
        """Fails naming a server folder (a third-party tool that does not redact)."""
        text = f"cannot read {Path.home()}/private/{video}"
        return ToolMessage(content=text, tool_call_id="c3", name="leaky", status="error")

    tools = [
        meeting.tool("meet"),
        StructuredTool.from_function(explode, name="explode"),
        StructuredTool.from_function(leaky, name="leaky"),
    ]
    calls = [
        _call("meet", {"label": "a"}, "c1"),
        _call("explode", {"video": "x"}, "c2"),
        _call("leaky", {"video": "clip.mp4"}, "c3"),
        _call("delete_everything", {}, "c4"),
        _call("meet", {"label": "b"}, "c5"),
        _call("explode", {"video": "y"}, "c6"),  # the 6th call of a 5-call budget
    ]
    invalid = {"id": "c7", "name": "meet", "args": "{oops", "error": "bad", "type": "invalid_tool_call"}
    model = _scripted(
        AIMessage(content="", tool_calls=calls, invalid_tool_calls=[invalid]), AIMessage(content="done")
    )
    agent = build_agent(model=model, tools=tools)
    chunks = _stream(
        agent, {"messages": [HumanMessage("go")]}, run_async, context=AgentContext(max_tool_calls=5)
    )
    out = [c for mode, c in chunks if mode == "values"][-1]
    replies = {m.tool_call_id: m for m in out["messages"] if isinstance(m, ToolMessage)}
    assert list(replies) == ["c1", "c2", "c3", "c4", "c5", "c6", "c7"]
    assert [k for k, m in replies.items() if m.status == "success"] == ["c1", "c5"]
    assert replies["c1"].text == "a met the others" and replies["c5"].text == "b met the others"
    assert "tool explode failed (RuntimeError)" in replies["c2"].text
    assert "private/clip.mp4" in replies["c3"].text and str(Path.home()) not in replies["c3"].text
    assert "unknown tool 'delete_everything'" in replies["c4"].text
    assert "budget for this question is used up" in replies["c6"].text
    assert "not a valid JSON object" in replies["c7"].text
    assert out["messages"][-1].text == "done"


@pytest.mark.parametrize("run_async", [False, True], ids=["invoke", "ainvoke"])
def test_a_tool_that_interrupts_pauses_the_run_once_the_steps_other_calls_have_ended(run_async):
    """As LangGraph's ToolNode does: the step's other calls run to their end (none is left
    running behind the paused run), their replies are dropped, and every call of the step runs
    again on resume; the replies come in call order."""
    from langgraph.types import Command, interrupt

    meeting = _Meeting(2)

    def approve(video: str) -> str:
        """Ask a person, once the other call is running too."""
        meeting.barrier.wait()
        meeting.finished.append("approve")  # "m" returns only after this
        return f"the person said {interrupt({'question': f'search {video}?'})}"

    async def aapprove(video: str) -> str:
        await meeting.ameet()
        meeting.finished.append("approve")
        return f"the person said {interrupt({'question': f'search {video}?'})}"

    tools = [
        StructuredTool.from_function(approve, coroutine=aapprove, name="approve"),
        meeting.tool("meet", last=True),
    ]
    calls = [_call("approve", {"video": "kitchen.mp4"}, "c1"), _call("meet", {"label": "m"}, "c2")]
    model = _scripted(AIMessage(content="", tool_calls=calls), AIMessage(content="Approved."))
    agent = build_agent(model=model, tools=tools, checkpointer=InMemorySaver())
    cfg = {"configurable": {"thread_id": f"hitl-at-once-{run_async}"}}

    def run(given: Any) -> dict[str, Any]:
        return asyncio.run(agent.ainvoke(given, cfg)) if run_async else agent.invoke(given, cfg)

    paused = run({"messages": [HumanMessage("search the kitchen video")]})
    assert [i.value for i in paused["__interrupt__"]] == [{"question": "search kitchen.mp4?"}]
    assert meeting.finished == ["approve", "m"]  # the other call ended before the run paused
    assert agent.get_state(cfg).next == ("tools",)
    assert not any(isinstance(m, ToolMessage) for m in agent.get_state(cfg).values["messages"])
    out = run(Command(resume="yes"))
    replies = [(m.tool_call_id, m.status, m.text) for m in out["messages"] if isinstance(m, ToolMessage)]
    assert replies == [("c1", "success", "the person said yes"), ("c2", "success", "m met the others")]
    assert sorted(meeting.finished[2:]) == ["approve", "m"]  # both ran again
    assert out["messages"][-1].text == "Approved." and len(model.calls) == 2


def test_the_tool_budget_ends_a_model_that_only_calls_tools(tools):
    looping = AIMessage(content="", tool_calls=[_call("list_videos", {})])
    model = _scripted(default=looping)
    agent = build_agent(model=model, tools=tools)
    out = agent.invoke({"messages": [HumanMessage("loop forever")]}, context=AgentContext(max_tool_calls=2))
    tool_msgs = [m for m in out["messages"] if isinstance(m, ToolMessage)]
    assert len(tool_msgs) == 2
    # the last model call had no tools and its (tool-calling) reply was turned into an answer
    assert model.calls[-1]["tools"] == [] and len(model.calls) == 3
    assert "No more tool calls are possible" in model.calls[-1]["messages"][0].text
    last = out["messages"][-1]
    assert isinstance(last, AIMessage) and not last.tool_calls and last.text == NO_ANSWER


def test_budget_is_per_question_in_a_chat_thread(tools):
    def call() -> AIMessage:
        return AIMessage(content="", tool_calls=[_call("list_videos", {})])

    model = _scripted(call(), AIMessage(content="two videos"), call(), AIMessage(content="still two"))
    agent = build_agent(model=model, tools=tools, checkpointer=InMemorySaver())
    cfg = {"configurable": {"thread_id": "chat-1"}}
    ctx = AgentContext(max_tool_calls=1)
    agent.invoke({"messages": [HumanMessage("which videos?")]}, cfg, context=ctx)
    out = agent.invoke({"messages": [HumanMessage("and now?")]}, cfg, context=ctx)
    assert [m.text for m in out["messages"] if isinstance(m, AIMessage) and m.text] == [
        "two videos",
        "still two",
    ]
    assert model.calls[2]["tools"] == ["retrieve_moments", "list_videos"]  # the budget was reset


def test_a_model_that_never_calls_tools_just_answers(tools):
    for reply, expected in [(AIMessage(content="No idea."), "No idea."), (AIMessage(content=""), NO_ANSWER)]:
        out = build_agent(model=_scripted(reply), tools=tools).invoke({"messages": [HumanMessage("when?")]})
        assert out["messages"][-1].text == expected and out["citations"] == []


def _traced(agent: Any, question: dict[str, Any], ctx: AgentContext | None = None) -> tuple[dict, list]:
    """Run the agent; return its final state and the trace (node name, update) in order."""
    trace, final = [], {}
    for mode, chunk in agent.stream(question, stream_mode=["updates", "values"], context=ctx):
        if mode == "values":
            final = chunk
        else:
            trace += list(chunk.items())
    return final, trace


def _retrievals(messages: list[BaseMessage]) -> list[ToolMessage]:
    return [m for m in messages if isinstance(m, ToolMessage) and m.name == "retrieve_moments"]


def test_a_video_named_in_the_question_is_retrieved_when_the_model_does_not(tools):
    """No ``video`` input and no tool call: the store id in the question is enough to ground."""
    draft = AIMessage(content="The video is about the Black Dog, a popular video game.")
    model = _scripted(draft, AIMessage(content="They play with it near the end."))
    question = {"messages": [HumanMessage(f"When do the friends play with the black dog in {DOG_VIDEO}?")]}
    out, trace = _traced(build_agent(model=model, tools=tools), question)
    assert [node for node, _ in trace] == ["agent", "ground", "tools", "agent", "ground", "answer"]
    (retrieval,) = _retrievals(out["messages"])
    assert retrieval.status == "success" and retrieval.tool_call_id.startswith("ground-")
    call = trace[1][1]["messages"][-1].tool_calls[0]
    assert call["args"] == {"video": DOG_VIDEO, "query": "When do the friends play with the black dog in"}
    # the ungrounded draft is gone; the model answered again with the windows in context
    assert all("video game" not in m.text for m in out["messages"])
    assert len(model.calls) == 2 and retrieval.text in [m.text for m in model.calls[1]["messages"]]
    s, e, _ = retrieval.artifact["moments"][0]
    answer = out["messages"][-1].text
    assert answer.startswith("They play with it near the end.")
    assert f"{seconds_text(s)}–{seconds_text(e)} s" in answer
    assert out["citations"][0]["video_id"] == DOG_VIDEO


def test_a_conversation_that_names_no_video_is_not_forced_to_retrieve(tools):
    """An id-shaped word the store does not know is no video; nothing is retrieved."""
    model = _scripted(AIMessage(content="Version 2.0-beta shipped in May."))
    out, trace = _traced(
        build_agent(model=model, tools=tools), {"messages": [HumanMessage("When did 2.0-beta ship?")]}
    )
    assert [node for node, _ in trace] == ["agent", "ground", "answer"]
    assert not [m for m in out["messages"] if isinstance(m, ToolMessage)] and out["citations"] == []
    assert out["messages"][-1].text == "Version 2.0-beta shipped in May." and len(model.calls) == 1


def test_a_failed_grounding_retrieval_is_said_in_the_answer(tools):
    model = _scripted(AIMessage(content="At 0:42."), AIMessage(content="At 0:42."))
    question = {"messages": [HumanMessage("When does the dog jump?")], "video": "no_such_video_1"}
    out, trace = _traced(build_agent(model=model, tools=tools), question, AgentContext(max_tool_calls=0))
    (retrieval,) = _retrievals(out["messages"])
    assert retrieval.status == "error" and retrieval.tool_call_id.startswith("ground-")
    answer = out["messages"][-1].text
    assert answer.startswith("At 0:42.") and "No moments could be retrieved for this answer" in answer
    assert retrieval.text in answer  # the tool's reason, e.g. that the video is not indexed
    assert [node for node, _ in trace].count("ground") == 2 and out["citations"] == []


def test_progress_of_agent_and_tool_share_one_custom_stream(tools):
    model = _scripted(
        AIMessage(content="", tool_calls=[_call("retrieve_moments", {"video": DOG_VIDEO, "query": "a dog"})]),
        AIMessage(content="done"),
    )
    agent = build_agent(model=model, tools=tools)

    async def run() -> list[tuple[str, Any]]:
        return [
            c
            async for c in agent.astream(
                {"messages": [HumanMessage("when?")]}, stream_mode=["updates", "custom"]
            )
        ]

    chunks = asyncio.run(run())
    custom = [c for mode, c in chunks if mode == "custom"]
    updates = [next(iter(c)) for mode, c in chunks if mode == "updates"]
    assert updates == ["agent", "tools", "agent", "ground", "answer"]  # ground: retrieved already
    assert [c.get("agent") for c in custom if "agent" in c] == [
        "model",
        "model_done",
        "tool",
        "tool_done",
        "model",
        "model_done",
        "answer",
    ]
    stages = [c["stage"] for c in custom if c.get("tool") == "retrieve_moments"]
    assert stages[0] == "load_video" and stages[-1] == "nms"


def test_agent_context_validates_its_settings(monkeypatch):
    from granalign.errors import ConfigError

    for bad in (
        {"max_tool_calls": 99},
        {"max_tool_calls": 2.5},
        {"max_tokens": True},
        {"temperature": -1.0},
        {"model": "local:smollm2"},
        {"api_key_env": "A B"},
    ):
        with pytest.raises(ConfigError):
            AgentContext(**bad)
    monkeypatch.setenv("GRANALIGN_AGENT_MODEL", "openai:http://127.0.0.1:1/v1#m")
    assert AgentContext().model_spec().target == "http://127.0.0.1:1/v1"
    assert AgentContext(model="openai:http://h:2/v1#x").model_spec().model == "x"


# ---------------------------------------------------------------------------------------------
# a real model behind a real OpenAI-compatible server
# ---------------------------------------------------------------------------------------------

_SERVED: dict[str, str] = {}


@pytest.fixture(scope="session")
def smollm2_endpoint(request, smollm2_folder, tmp_path_factory) -> str:  # noqa: F811
    """``transformers serve`` with SmolLM2 on a free loopback port, once per test session."""
    if "spec" in _SERVED:
        return _SERVED["spec"]
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "transformers_serve.log"
    cmd = [
        str(BIN / "transformers"),
        "serve",
        str(smollm2_folder),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
    ]
    # one torch thread: on a small, busy machine two spinning OpenMP threads make decoding ~10x slower
    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    running = server(cmd, f"http://127.0.0.1:{port}/health", log, env=env, timeout=180)
    running.__enter__()
    request.config.add_cleanup(lambda: running.__exit__(None, None, None))
    _SERVED["spec"] = f"openai:http://127.0.0.1:{port}/v1#{smollm2_folder}"
    return _SERVED["spec"]


def _dog_question(**extra: Any) -> dict[str, Any]:
    return {"messages": [HumanMessage("When are the friends playing with the black dog?")], **extra}


@pytest.mark.slow
def test_a_real_served_model_answer_carries_the_retrieved_windows(tools, smollm2_endpoint, capsys):
    """SmolLM2 through ChatOpenAI with the tools bound: the answer is grounded whatever it does."""
    ctx = AgentContext(model=smollm2_endpoint, max_tokens=16)
    out, trace = _traced(build_agent(tools=tools), _dog_question(video=DOG_VIDEO), ctx)
    first_reply = trace[0][1]["messages"][-1]
    assert first_reply.response_metadata.get("model_provider") == "openai"  # it really went over HTTP
    retrieval = next(m for m in _retrievals(out["messages"]) if m.status == "success")
    if not first_reply.tool_calls:  # SmolLM2-135M does not call tools: the ground node retrieved
        assert retrieval.tool_call_id.startswith("ground-") and trace[1][0] == "ground"
    s, e, _ = retrieval.artifact["moments"][0]
    last = out["messages"][-1]
    assert isinstance(last, AIMessage) and not last.tool_calls
    assert f"{seconds_text(s)}–{seconds_text(e)} s" in last.text
    assert out["citations"][0]["video_id"] == DOG_VIDEO
    with capsys.disabled():
        print(
            f"\n[agent transcript, real SmolLM2-135M via transformers serve]\n{transcript(out['messages'])}"
        )


@pytest.mark.slow
def test_a_real_model_without_tools_is_grounded_by_the_ground_node(tools, smollm2_endpoint):
    """max_tool_calls=0 hides the tools from the model, so only the ground node can retrieve."""
    ctx = AgentContext(model=smollm2_endpoint, max_tokens=16, max_tool_calls=0)
    out, trace = _traced(build_agent(tools=tools), _dog_question(video=DOG_VIDEO), ctx)
    assert [node for node, _ in trace] == ["agent", "ground", "tools", "agent", "ground", "answer"]
    assert trace[0][1]["messages"][-1].response_metadata.get("model_provider") == "openai"
    (retrieval,) = _retrievals(out["messages"])
    assert retrieval.status == "success" and retrieval.tool_call_id.startswith("ground-")
    assert trace[1][1]["messages"][-1].tool_calls[0]["args"] == {
        "video": DOG_VIDEO,
        "query": "When are the friends playing with the black dog?",
    }
    s, e, _ = retrieval.artifact["moments"][0]
    assert f"{seconds_text(s)}–{seconds_text(e)} s" in out["messages"][-1].text
    assert [c["video_id"] for c in out["citations"]] == [DOG_VIDEO]


@pytest.mark.slow
def test_a_real_model_asked_about_no_video_is_not_forced_to_retrieve(tools, smollm2_endpoint):
    ctx = AgentContext(model=smollm2_endpoint, max_tokens=16, max_tool_calls=0)
    out, trace = _traced(build_agent(tools=tools), _dog_question(), ctx)
    assert [node for node, _ in trace] == ["agent", "ground", "answer"]
    assert not [m for m in out["messages"] if isinstance(m, ToolMessage)] and out["citations"] == []
    assert out["messages"][-1].text


def kitchen_video_tools(tmp_path: Path, vid: str) -> list[Any]:
    """The tools over a store of one 20-s video ``vid`` whose man chops onions in its first 8 s."""
    import json

    from granalign.backends.embedder import make_embedder
    from granalign.io.captions_import import import_captions
    from granalign.io.store import Store

    caps = tmp_path / "caps.jsonl"
    row = {"vid": vid, "clip_len_s": 2, "captions": ["a man chops onions"] * 4 + ["an empty kitchen"] * 6}
    caps.write_text(json.dumps(row) + "\n")
    with Store(tmp_path / "store") as store:
        import_captions(store, make_embedder("local:all-MiniLM-L6-v2"), caps, source="test")
    settings = ToolSettings(context=Context(store_dir=str(tmp_path / "store")), roots=(), url_allowlist=())
    return granalign_tools(MomentRetriever(settings))


def test_a_long_store_id_named_in_the_question_is_grounded(tmp_path):
    """Ids run to 128 characters while list_videos filters by at most 64: the lookup passes the
    id's prefix and finds the exact id among the rows (before, the lookup was refused and the
    question went unanswered from the video)."""
    vid = "kitchen_" + "0123456789" * 9 + "_take2"  # 104 characters, id-shaped
    tools = kitchen_video_tools(tmp_path, vid)
    model = _scripted(AIMessage(content="Probably at the start."), AIMessage(content="Early on."))
    question = {"messages": [HumanMessage(f"When does the man chop onions in {vid}?")]}
    out, trace = _traced(build_agent(model=model, tools=tools), question)
    assert [node for node, _ in trace] == ["agent", "ground", "tools", "agent", "ground", "answer"]
    (retrieval,) = _retrievals(out["messages"])
    assert retrieval.status == "success" and retrieval.artifact["video_id"] == vid


# -- the ground step's look-up: "not found" only when the store says so --------------------------


def test_a_video_the_store_does_not_list_is_still_not_found(tools):
    """The look-up answered and does not list the id: no retrieval, no note, the draft stands."""
    model = _scripted(AIMessage(content="I know no such video."))
    out, trace = _traced(
        build_agent(model=model, tools=tools), {"messages": [HumanMessage("When does x in vid_404_x?")]}
    )
    assert [node for node, _ in trace] == ["agent", "ground", "answer"]
    assert out["messages"][-1].text == "I know no such video."
