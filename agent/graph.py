"""The video-QA agent: a tool-calling chat loop around ``retrieve_moments``.

``agent → (tools → agent)* → answer``: the model either calls tools or answers; ``answer``
makes sure the final reply cites the windows the tool found.  A hand-written loop rather than a
prebuilt agent, because the behaviour that matters here is in the edges:

* **Bounded**: at most ``max_tool_calls`` tool calls per user question (counted from the
  messages since the last human message, so a long chat thread does not starve).  When the
  budget is spent the model is called *without* tools and must answer.
* **Never crashes on a model's mistakes**: an unknown tool name, arguments that are not JSON,
  arguments the tool refuses (the tools validate everything, see :mod:`tools.safety`) and even
  a tool that raises all come back to the model as ``ToolMessage(status="error")`` it can read.
  A model that never calls a tool simply answers; a reply with no text gets a plain fallback.
* **Grounded answers**: the tool's artifact (moments, saliency) travels in the ``ToolMessage``;
  the ``answer`` node appends the windows (in seconds) when the model's reply does not already
  cite them, and returns them as ``citations`` for a UI.
* **Progress**: every step writes a custom stream event (``stream_mode="custom"``), and the
  retrieval tool forwards the graph's own stage events into the same stream.

Tests drive the loop with a scripted chat model; ``langgraph.json`` serves :data:`graph`, whose
model comes from :class:`agent.context.AgentContext` at run time.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Annotated, Any, NotRequired

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import BaseTool
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.runtime import Runtime, get_runtime
from typing_extensions import TypedDict

from agent.context import AgentContext
from tools.safety import MAX_VIDEO_ARG_CHARS, UnsafeInputError, clean_text

log = logging.getLogger(__name__)

RETRIEVE_TOOL = "retrieve_moments"
NO_ANSWER = "I could not find an answer to that."


class AgentInput(TypedDict):
    """A chat turn; ``video`` optionally names the video the conversation is about."""

    messages: Annotated[list[AnyMessage], add_messages]
    video: NotRequired[str]


class AgentOutput(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]
    citations: list[dict[str, Any]]


class AgentState(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]
    video: NotRequired[str]
    citations: NotRequired[list[dict[str, Any]]]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _emit(runtime: Runtime[AgentContext], **event: Any) -> None:
    writer = getattr(runtime, "stream_writer", None)
    if writer is not None:
        writer({"agent": event.pop("step"), **event})


def _this_turn(messages: Sequence[AnyMessage]) -> list[AnyMessage]:
    """Messages after the last human message (the current question's loop)."""
    for i in range(len(messages) - 1, -1, -1):
        if isinstance(messages[i], HumanMessage):
            return list(messages[i + 1 :])
    return list(messages)


def _calls_used(messages: Sequence[AnyMessage]) -> int:
    return sum(isinstance(m, ToolMessage) for m in _this_turn(messages))


def _video_hint(state: AgentState) -> str:
    """The conversation's video as a data line of the system prompt (cleaned, bounded)."""
    raw = state.get("video")
    if not raw:
        return ""
    try:
        video = clean_text(raw, name="video", max_chars=MAX_VIDEO_ARG_CHARS)
    except UnsafeInputError:
        return ""
    return f"\nThe user is asking about the video with id {video!r}; pass it as `video`."


@lru_cache(maxsize=16)
def _chat_model(
    base_url: str, model: str, api_key: str, temperature: float, max_tokens: int, timeout: float
) -> Any:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        base_url=base_url,
        model=model,
        api_key=api_key,  # type: ignore[arg-type]
        temperature=temperature,
        max_tokens=max_tokens,  # type: ignore[call-arg]
        timeout=timeout,
        max_retries=2,
    )


def chat_model_for(ctx: AgentContext) -> BaseChatModel:
    """ChatOpenAI against the context's OpenAI-compatible endpoint (one client per setting)."""
    spec = ctx.model_spec()
    model: BaseChatModel = _chat_model(
        spec.target,
        spec.model,
        ctx.api_key(),
        float(ctx.temperature),
        int(ctx.max_tokens),
        float(ctx.timeout_s),
    )
    return model


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _cites(text: str, citations: list[dict[str, Any]]) -> bool:
    """True when the reply names the start and end (±0.5 s) of some retrieved best window."""
    numbers = [float(x) for x in _NUMBER.findall(text)]
    for cite in citations:
        if not cite["moments"]:
            continue
        start, end = cite["moments"][0][:2]
        if any(abs(n - start) <= 0.5 for n in numbers) and any(abs(n - end) <= 0.5 for n in numbers):
            return True
    return False


def _footer(citations: list[dict[str, Any]], per_video: int = 3) -> str:
    lines = []
    for cite in citations:
        if not cite["moments"]:
            lines.append(f"No matching moment was found in video {cite['video_id']}.")
            continue
        windows = ", ".join(f"{s:.1f}–{e:.1f} s" for s, e, _ in cite["moments"][:per_video])
        lines.append(f"Retrieved moments in video {cite['video_id']} (best first): {windows}.")
    return "\n".join(lines)


def _retrieval_result(message: AnyMessage) -> dict[str, Any] | None:
    """The structured result of a successful ``retrieve_moments`` call, if ``message`` is one.

    Our LangChain tool puts it in the artifact; the same tool reached over MCP (through
    ``langchain-mcp-adapters``) wraps the JSON result as ``{"structured_content": ...}``.
    """
    if not isinstance(message, ToolMessage) or message.name != RETRIEVE_TOOL or message.status == "error":
        return None
    art = message.artifact
    if isinstance(art, dict) and isinstance(art.get("structured_content"), dict):
        art = art["structured_content"]
    if not isinstance(art, dict) or not isinstance(art.get("moments"), list) or "video_id" not in art:
        return None
    return art


def _citations(messages: Sequence[AnyMessage]) -> list[dict[str, Any]]:
    """The retrieval results of this turn (video, query, windows), from the tool messages."""
    out = []
    for m in _this_turn(messages):
        art = _retrieval_result(m)
        if art is not None:
            out.append({"video_id": art["video_id"], "query": art.get("query"), "moments": art["moments"]})
    return out


def _error_message(call_id: str, name: str, text: str) -> ToolMessage:
    return ToolMessage(content=f"Error: {text}", tool_call_id=call_id, name=name, status="error")


# ---------------------------------------------------------------------------------------------
# the graph
# ---------------------------------------------------------------------------------------------


def build_agent(
    model: BaseChatModel | None = None, tools: Sequence[BaseTool] | None = None, *, checkpointer: Any = None
) -> Any:
    """Compile the agent.  ``model`` overrides the context's endpoint (tests use a stand-in);
    ``tools`` default to ``retrieve_moments`` and ``list_videos`` configured from the environment.

    ``agent`` and ``tools`` have a sync and an async implementation (a ``RunnableLambda`` with
    both), so ``invoke`` works and ``ainvoke``/``astream`` (the LangGraph server) never block the
    event loop; async-only tools such as those ``langchain-mcp-adapters`` makes work too."""
    if tools is None:
        from tools.langchain_tool import granalign_tools

        tools = granalign_tools()
    by_name = {t.name: t for t in tools}

    def _context(runtime: Runtime[AgentContext]) -> AgentContext:
        return runtime.context if isinstance(runtime.context, AgentContext) else AgentContext()

    def _model_request(state: AgentState) -> tuple[Any, list[AnyMessage], int, Runtime[AgentContext]]:
        runtime = get_runtime(AgentContext)
        ctx = _context(runtime)
        budget = ctx.max_tool_calls - _calls_used(state["messages"])
        llm = model if model is not None else chat_model_for(ctx)
        runnable: Any = llm.bind_tools(list(by_name.values())) if budget > 0 and by_name else llm
        prompt = ctx.system_prompt + _video_hint(state)
        if budget <= 0:
            prompt += "\nNo more tool calls are possible: answer now from the results you have."
        _emit(runtime, step="model", tool_budget=max(budget, 0))
        return runnable, [SystemMessage(prompt), *state["messages"]], budget, runtime

    def _model_reply(reply: Any, budget: int, runtime: Runtime[AgentContext]) -> dict[str, Any]:
        if not isinstance(reply, AIMessage):
            reply = AIMessage(content=str(getattr(reply, "content", reply)))
        if budget <= 0 and (reply.tool_calls or reply.invalid_tool_calls):
            # out of budget: keep the text, drop the calls (an unanswered call breaks the next turn)
            raw = {
                k: v for k, v in reply.additional_kwargs.items() if k not in ("tool_calls", "function_call")
            }
            reply = reply.model_copy(
                update={"tool_calls": [], "invalid_tool_calls": [], "additional_kwargs": raw}
            )
        _emit(runtime, step="model_done", tool_calls=len(reply.tool_calls) + len(reply.invalid_tool_calls))
        return {"messages": [reply]}

    def call_model(state: AgentState) -> dict[str, Any]:
        """Ask the model for the next step; without tools once the budget is spent."""
        runnable, messages, budget, runtime = _model_request(state)
        return _model_reply(runnable.invoke(messages), budget, runtime)

    async def acall_model(state: AgentState) -> dict[str, Any]:
        runnable, messages, budget, runtime = _model_request(state)
        return _model_reply(await runnable.ainvoke(messages), budget, runtime)

    def _tool_plan(state: AgentState) -> tuple[list[tuple[dict[str, Any], Any]], Runtime[AgentContext]]:
        """(tool call, tool or an error ToolMessage) for every call of the last reply."""
        runtime = get_runtime(AgentContext)
        last = state["messages"][-1]
        assert isinstance(last, AIMessage)
        budget = _context(runtime).max_tool_calls - _calls_used(state["messages"])
        plan: list[tuple[dict[str, Any], Any]] = []
        for call in last.tool_calls:
            call_id, name = call.get("id") or "", call["name"]
            request = {"type": "tool_call", "id": call_id, "name": name, "args": call["args"]}
            if len(plan) >= budget:
                plan.append(
                    (request, _error_message(call_id, name, "tool-call budget for this question is used up"))
                )
            elif name not in by_name:
                error = f"unknown tool {name!r}; available: {sorted(by_name)}"
                plan.append((request, _error_message(call_id, name, error)))
            else:
                plan.append((request, by_name[name]))
        for i, bad in enumerate(last.invalid_tool_calls):
            call_id, name = bad.get("id") or f"invalid-{i}", bad.get("name") or "unknown"
            error = "the tool call's arguments were not a valid JSON object; call the tool again"
            plan.append(({"id": call_id, "name": name}, _error_message(call_id, name, error)))
        return plan, runtime

    def _tool_reply(request: dict[str, Any], reply: Any, runtime: Runtime[AgentContext]) -> ToolMessage:
        message = (
            reply
            if isinstance(reply, ToolMessage)
            else ToolMessage(content=str(reply), tool_call_id=request["id"], name=request["name"])
        )
        _emit(runtime, step="tool_done", name=request["name"], status=message.status)
        return message

    def _tool_failed(request: dict[str, Any], exc: Exception) -> ToolMessage:
        log.exception("tool %s raised", request["name"])  # a tool bug must not end the conversation
        return _error_message(
            request["id"], request["name"], f"tool {request['name']} failed ({type(exc).__name__})"
        )

    def run_tools(state: AgentState) -> dict[str, Any]:
        """Run the requested tools; every failure becomes an error ToolMessage for the model."""
        plan, runtime = _tool_plan(state)
        replies: list[ToolMessage] = []
        for request, target in plan:
            if isinstance(target, ToolMessage):
                replies.append(target)
                continue
            _emit(runtime, step="tool", name=request["name"])
            try:
                reply = target.invoke(request)
            except Exception as exc:
                reply = _tool_failed(request, exc)
            replies.append(_tool_reply(request, reply, runtime))
        return {"messages": replies}

    async def arun_tools(state: AgentState) -> dict[str, Any]:
        plan, runtime = _tool_plan(state)
        replies: list[ToolMessage] = []
        for request, target in plan:
            if isinstance(target, ToolMessage):
                replies.append(target)
                continue
            _emit(runtime, step="tool", name=request["name"])
            try:
                reply = await target.ainvoke(request)
            except Exception as exc:
                reply = _tool_failed(request, exc)
            replies.append(_tool_reply(request, reply, runtime))
        return {"messages": replies}

    def answer(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
        """Finish the reply: cite the retrieved windows if the model did not."""
        ctx = _context(runtime)
        last = state["messages"][-1]
        citations = _citations(state["messages"])
        text = last.text if isinstance(last, AIMessage) else ""
        final = text.strip()
        if ctx.cite_windows and citations and not _cites(final, citations):
            final = f"{final}\n\n{_footer(citations)}" if final else _footer(citations)
        if not final:
            final = NO_ANSWER
        _emit(runtime, step="answer", cited=len(citations))
        update: dict[str, Any] = {"citations": citations}
        if isinstance(last, AIMessage) and final != text:
            # same id: add_messages replaces the model's reply; its metadata (model, usage) is kept
            update["messages"] = [last.model_copy(update={"content": final})]
        elif not isinstance(last, AIMessage):
            update["messages"] = [AIMessage(content=final)]
        return update

    def route(state: AgentState) -> str:
        last = state["messages"][-1]
        if isinstance(last, AIMessage) and (last.tool_calls or last.invalid_tool_calls):
            return "tools"
        return "answer"

    builder = StateGraph(
        AgentState, context_schema=AgentContext, input_schema=AgentInput, output_schema=AgentOutput
    )
    builder.add_node("agent", RunnableLambda(call_model, afunc=acall_model, name="agent"))
    builder.add_node("tools", RunnableLambda(run_tools, afunc=arun_tools, name="tools"))
    builder.add_node("answer", answer)
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", route, ["tools", "answer"])
    builder.add_edge("tools", "agent")
    builder.add_edge("answer", END)
    return builder.compile(name="granalign-video-qa", checkpointer=checkpointer)


graph = build_agent()
"""The agent ``langgraph.json`` serves; its model comes from AgentContext / the environment."""
