"""The video-QA agent: a tool-calling chat loop around ``retrieve_moments``.

``agent → (tools → agent)* → ground → [tools → agent → ground] → answer``: the model either calls
tools or answers; ``ground`` makes sure an answer about a video rests on a retrieval; ``answer``
makes sure the final reply cites the windows the tool found.  A hand-written loop rather than a
prebuilt agent, because the behaviour that matters here is in the edges:

* **Bounded**: at most ``max_tool_calls`` tool calls per user question (counted from the
  messages since the last human message, so a long chat thread does not starve).  When the
  budget is spent the model is called *without* tools and must answer.
* **Never crashes on a model's mistakes**: an unknown tool name, arguments that are not JSON,
  arguments the tool refuses (the tools validate everything, see :mod:`tools.safety`) and even
  a tool that raises all come back to the model as ``ToolMessage(status="error")`` it can read,
  never naming this server's folders, lock holders or server addresses (:mod:`tools.redact`,
  also for tools other than ours; the log keeps the full text).
  A reply with no text gets a plain fallback.
* **Grounded whatever the model**: small models answer "when …?" from their imagination without
  calling a tool.  When the model answers and this question has no retrieval result yet, but the
  conversation names a video (the input's ``video``, or a store id or video file named in a user
  message), the ``ground`` node calls ``retrieve_moments`` itself with the user's question,
  replaces the ungrounded draft with that call, and the model answers again with the windows in
  context.  It does so once per question; if that retrieval fails, the answer says so.
* **Cited answers**: the tool's artifact (moments, saliency) travels in the ``ToolMessage``;
  the ``answer`` node appends the windows (in seconds) when the model's reply does not already
  cite them, and returns them as ``citations`` for a UI.
* **Concurrent tool calls**: the calls of one model reply run at once, as LangGraph's
  ``ToolNode`` runs them (threads under ``invoke``, ``asyncio.gather`` under ``ainvoke``), and
  their replies come back in the order of the calls.
* **Progress**: every step writes a custom stream event (``stream_mode="custom"``), and the
  retrieval tool forwards the graph's own stage events into the same stream.  A step's
  ``tool`` events come first, in call order, and each call's ``tool_done`` when it ends, so
  several calls' events interleave.

Tests drive the loop with a scripted chat model and with a real SmolLM2 behind ``transformers
serve``; ``langgraph.json`` serves :data:`graph`, whose model comes from
:class:`agent.context.AgentContext` at run time.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, NotRequired, cast

import openai
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AnyMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langchain_core.runnables.config import get_executor_for_config
from langchain_core.tools import BaseTool
from langgraph.errors import GraphBubbleUp
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.runtime import Runtime, get_runtime
from typing_extensions import TypedDict

from agent.context import ENV_MODEL, AgentContext
from granalign.errors import BackendError
from granalign.io.video import VIDEO_EXTENSIONS
from granalign.text import seconds_text
from tools.langchain_tool import MAX_CONTAINS_CHARS, MomentRetriever
from tools.safety import MAX_QUERY_CHARS, MAX_VIDEO_ARG_CHARS, VIDEO_ID_RE

log = logging.getLogger(__name__)

RETRIEVE_TOOL = "retrieve_moments"
LIST_TOOL = "list_videos"
NO_ANSWER = "I could not find an answer to that."
GROUND_CALL_PREFIX = "ground-"
"""Id prefix of the ``retrieve_moments`` calls the ``ground`` node makes (not the model's)."""
MAX_ID_LOOKUPS = 8
"""At most this many id-shaped words of the user's messages are looked up in the store per question."""


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


def _context(runtime: Runtime[AgentContext]) -> AgentContext:
    return runtime.context if isinstance(runtime.context, AgentContext) else AgentContext()


def _this_turn(messages: Sequence[AnyMessage]) -> list[AnyMessage]:
    """Messages after the last human message (the current question's loop)."""
    for i in range(len(messages) - 1, -1, -1):
        if isinstance(messages[i], HumanMessage):
            return list(messages[i + 1 :])
    return list(messages)


def _calls_used(messages: Sequence[AnyMessage]) -> int:
    return sum(isinstance(m, ToolMessage) for m in _this_turn(messages))


def _state_video(state: AgentState) -> str:
    """The input's ``video`` as given (stripped); empty when absent or unusable.

    Not normalised as a query is (NFKC, whitespace runs): a stored id may hold characters NFKC
    folds (``clip²``, ``№``), and ``clip2`` is no video.  One with control, invisible or line
    characters (which the tool refuses as well) would end up in the system prompt: unusable."""
    raw = state.get("video")
    if not isinstance(raw, str):
        return ""
    text = raw.strip()
    if not text or len(text) > MAX_VIDEO_ARG_CHARS or not text.isprintable():
        return ""
    return text


def _video_hint(state: AgentState) -> str:
    """The conversation's video as a data line of the system prompt."""
    video = _state_video(state)
    return f"\nThe user is asking about the video with id {video!r}; pass it as `video`." if video else ""


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
        shown = cite["moments"][:per_video]
        windows = ", ".join(f"{seconds_text(s)}–{seconds_text(e)} s" for s, e, _ in shown)
        lines.append(f"Retrieved moments in video {cite['video_id']} (best first): {windows}.")
    return "\n".join(lines)


def _structured(message: ToolMessage) -> Any:
    """A tool message's structured result: our tools' artifact, or the JSON result of the same
    tool reached over MCP (``langchain-mcp-adapters`` wraps it as ``{"structured_content": ...}``)."""
    art = message.artifact
    if isinstance(art, dict) and isinstance(art.get("structured_content"), dict):
        return art["structured_content"]
    return art


def _retrieval_result(message: AnyMessage) -> dict[str, Any] | None:
    """The structured result of a successful ``retrieve_moments`` call, if ``message`` is one."""
    if not isinstance(message, ToolMessage) or message.name != RETRIEVE_TOOL or message.status == "error":
        return None
    art = _structured(message)
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


def _has_calls(state: AgentState) -> bool:
    last = state["messages"][-1]
    return isinstance(last, AIMessage) and bool(last.tool_calls or last.invalid_tool_calls)


# ---------------------------------------------------------------------------------------------
# grounding: which video the conversation names, and the retrieval the agent makes itself
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Mention:
    """A video the conversation may name; ``checked`` ones need no store look-up (the input's
    ``video`` and file names: the tool validates them), id-shaped words must be listed."""

    text: str
    checked: bool


@dataclass(frozen=True)
class _Grounding:
    """A question that has no retrieval yet: the user's words and the videos they may be about."""

    question: str
    mentions: list[_Mention]


_EDGE_PUNCT = "\"'`()[]{}<>,;!?"


def _words_naming_videos(text: str) -> list[_Mention]:
    """Video files and store-id-shaped words of a user message, in order.

    An id-shaped word has a digit or one of ``_ : -`` (YouTube-style ids such as
    ``SyMt-tik9q0_660.0_810.0``), so plain English words never cost a store look-up."""
    out = []
    for raw in text.split():
        word = raw.strip(_EDGE_PUNCT).rstrip(".")
        if word.lower().endswith(VIDEO_EXTENSIONS) and len(word) <= MAX_VIDEO_ARG_CHARS:
            if _names_a_file(word):  # ".mp4" or "*.mkv" names a format, not a video
                out.append(_Mention(word, checked=True))
        elif VIDEO_ID_RE.fullmatch(word) and len(word) >= 4 and re.search(r"[\d_:-]", word):
            out.append(_Mention(word, checked=False))
    return out


def _names_a_file(word: str) -> bool:
    """Whether a word ending in a video extension has a file name before it (``clip.mp4``), not
    just the extension (``.mp4``, ``*.mkv``, ``videos/.mov``): a question about file formats
    names no video."""
    name = re.split(r"[\\/]", word)[-1]
    return any(c.isalnum() for c in name[: name.rfind(".")])


def _grounding_needed(state: AgentState, tools: dict[str, BaseTool]) -> _Grounding | None:
    """The question to ground, when the model answered without a retrieval result this turn
    and the ``ground`` node has not tried yet; None otherwise."""
    messages = state["messages"]
    turn = _this_turn(messages)
    if RETRIEVE_TOOL not in tools or len(turn) == len(messages):  # no user message
        return None
    if any(_retrieval_result(m) is not None for m in turn) or any(
        isinstance(m, ToolMessage) and m.tool_call_id.startswith(GROUND_CALL_PREFIX) for m in turn
    ):
        return None
    humans = [m.text for m in messages if isinstance(m, HumanMessage)]
    video = _state_video(state)
    mentions = [_Mention(video, checked=True)] if video else []
    lookups = 0
    for text in reversed(humans):  # the latest message first: it names the video now in question
        for mention in _words_naming_videos(text):
            lookups += not mention.checked
            if mention.checked or lookups <= MAX_ID_LOOKUPS:
                mentions.append(mention)
    return _Grounding(humans[-1], mentions) if mentions else None


def _listed(reply: Any, video_id: str) -> bool:
    """Whether a ``list_videos`` reply lists exactly ``video_id``."""
    art = _structured(reply) if isinstance(reply, ToolMessage) and reply.status != "error" else None
    rows = art.get("videos") if isinstance(art, dict) else None
    return isinstance(rows, list) and any(isinstance(r, dict) and r.get("video_id") == video_id for r in rows)


def _lookup_call(video_id: str) -> dict[str, Any]:
    # list_videos filters by at most MAX_CONTAINS_CHARS characters; ids run to 128, and
    # _listed then looks for the exact id among the rows that share its prefix
    args = {"contains": video_id[:MAX_CONTAINS_CHARS], "limit": 200}
    return {"type": "tool_call", "id": f"{GROUND_CALL_PREFIX}lookup", "name": LIST_TOOL, "args": args}


def _lookup_result(call: dict[str, Any], reply: Any, video_id: str) -> bool | str:
    """A ``list_videos`` reply: whether it lists ``video_id``, or (an error reply) why the
    look-up failed, with this deployment's internals replaced (:func:`_model_safe`)."""
    if isinstance(reply, ToolMessage) and reply.status == "error":
        log.warning("list_videos failed while looking up %r: %s", video_id, reply.text)
        return _model_safe(call, reply).text or "list_videos failed"
    return _listed(reply, video_id)


def _lookup_failed(exc: Exception, video_id: str) -> str:
    """A look-up that raised: the reason a model may read (the log keeps the full error)."""
    return MomentRetriever().model_message(exc, LIST_TOOL, {"video": video_id})


def _lookup_note(video: str, reason: str) -> str:
    return f"No moments could be retrieved for this answer: looking up the video {video!r} failed. {reason}"


def _grounding_update(
    need: _Grounding, video: str, state: AgentState, found: bool | str = True
) -> dict[str, Any]:
    """Replace the model's ungrounded draft by the agent's own ``retrieve_moments`` call; when
    the look-up of ``video`` failed (``found`` is the reason), say so under the draft instead."""
    draft = state["messages"][-1]
    if isinstance(found, str):  # the store could not say: never "no such video"
        _emit(get_runtime(AgentContext), step="ground", video=video, failed=True)
        note = _lookup_note(video, found)
        if isinstance(draft, AIMessage) and draft.text.strip():
            return {"messages": [draft.model_copy(update={"content": f"{draft.text.strip()}\n\n{note}"})]}
        return {"messages": [AIMessage(content=note, name="ground")]}
    query = " ".join(w for w in need.question.split() if w.strip(_EDGE_PUNCT).rstrip(".") != video)
    query = query[:MAX_QUERY_CHARS].strip()
    if not query:
        return {}
    call = {
        "type": "tool_call",
        "id": f"{GROUND_CALL_PREFIX}{uuid.uuid4().hex[:12]}",
        "name": RETRIEVE_TOOL,
        "args": {"video": video, "query": query},
    }
    _emit(get_runtime(AgentContext), step="ground", video=video, query=query)
    remove = [RemoveMessage(id=draft.id)] if isinstance(draft, AIMessage) and draft.id else []
    return {"messages": [*remove, AIMessage(content="", tool_calls=[call], name="ground")]}


def _grounding_note(messages: Sequence[AnyMessage]) -> str:
    """Why the ``ground`` node's retrieval gave no windows (its tool error), if it failed."""
    for m in _this_turn(messages):
        if (
            isinstance(m, ToolMessage)
            and m.tool_call_id.startswith(GROUND_CALL_PREFIX)
            and m.status == "error"
        ):
            return f"No moments could be retrieved for this answer. {m.text}"
    return ""


# ---------------------------------------------------------------------------------------------
# the nodes
# ---------------------------------------------------------------------------------------------


def _model_failed(runtime: Runtime[AgentContext], exc: Exception) -> BackendError:
    """The chat model's failure as one line naming the endpoint (API clients see the message)."""
    spec = _context(runtime).model_spec()
    return BackendError(
        f"the chat model {spec.model!r} at {spec.target} failed ({type(exc).__name__}: {exc}); "
        f"check the server, or set the model (context 'model' or ${ENV_MODEL})"
    )


def _model_reply(reply: Any, budget: int, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    if not isinstance(reply, AIMessage):
        reply = AIMessage(content=str(getattr(reply, "content", reply)))
    if budget <= 0 and (reply.tool_calls or reply.invalid_tool_calls):
        # out of budget: keep the text, drop the calls (an unanswered call breaks the next turn)
        raw = {k: v for k, v in reply.additional_kwargs.items() if k not in ("tool_calls", "function_call")}
        reply = reply.model_copy(
            update={"tool_calls": [], "invalid_tool_calls": [], "additional_kwargs": raw}
        )
    _emit(runtime, step="model_done", tool_calls=len(reply.tool_calls) + len(reply.invalid_tool_calls))
    return {"messages": [reply]}


def _model_safe(request: dict[str, Any], message: ToolMessage) -> ToolMessage:
    """A tool's error as the model may read it: this deployment's folders, addresses and lock
    holders replaced (our tools do so themselves; an MCP or third-party tool may not)."""
    if message.status != "error" or not isinstance(message.content, str):
        return message
    args = request.get("args")
    keep = [v for v in args.values() if isinstance(v, str)] if isinstance(args, dict) else []
    text = MomentRetriever().redactor().text(message.content, keep)  # settings of this process
    if text == message.content:
        return message
    log.warning("tool %s answered: %s", request["name"], message.content)
    return message.model_copy(update={"content": text})


def _tool_reply(request: dict[str, Any], reply: Any, runtime: Runtime[AgentContext]) -> ToolMessage:
    message = _model_safe(
        request,
        reply
        if isinstance(reply, ToolMessage)
        else ToolMessage(content=str(reply), tool_call_id=request["id"], name=request["name"]),
    )
    _emit(runtime, step="tool_done", name=request["name"], call_id=request["id"], status=message.status)
    return message


def _tool_failed(request: dict[str, Any], exc: Exception) -> ToolMessage:
    log.exception("tool %s raised", request["name"])  # a tool bug must not end the conversation
    return _error_message(
        request["id"], request["name"], f"tool {request['name']} failed ({type(exc).__name__})"
    )


_Plan = list[tuple[dict[str, Any], BaseTool | ToolMessage]]
"""A step's tool calls in order: each request with its tool, or the error that answers it."""
_Run = tuple[dict[str, Any], BaseTool, Runtime[AgentContext]]
"""A tool call to run: the request, its tool and the node's runtime (for progress events)."""
_Outcome = ToolMessage | GraphBubbleUp
"""How one tool call of a step ended: its reply, or LangGraph's control flow it raised."""


def _run_call(request: dict[str, Any], tool: BaseTool, runtime: Runtime[AgentContext]) -> _Outcome:
    """One tool call of a step (in a worker thread); a ``GraphBubbleUp`` is returned, not raised,
    so that :func:`_step_update` raises it once the step's other calls have ended."""
    try:
        reply = tool.invoke(request)
    except GraphBubbleUp as bubble:  # an interrupt() or a Command for a parent graph: LangGraph's
        return bubble  # control flow, not a failure (the run pauses, or the parent takes over)
    except Exception as exc:
        reply = _tool_failed(request, exc)
    return _tool_reply(request, reply, runtime)


async def _arun_call(request: dict[str, Any], tool: BaseTool, runtime: Runtime[AgentContext]) -> _Outcome:
    try:
        reply = await tool.ainvoke(request)
    except GraphBubbleUp as bubble:
        return bubble
    except Exception as exc:
        reply = _tool_failed(request, exc)
    return _tool_reply(request, reply, runtime)


def _step_update(plan: _Plan, outcomes: Sequence[_Outcome]) -> dict[str, Any]:
    """The replies in the order of the calls (``outcomes``: those of the plan's runnable calls).

    A call that interrupted (or handed over to a parent graph) ends the step the way LangGraph's
    ``ToolNode`` does: the first such call in call order is raised once every call has ended,
    and the other replies are dropped (the node runs all of them again on resume)."""
    bubbles = [o for o in outcomes if isinstance(o, GraphBubbleUp)]
    if bubbles:
        raise bubbles[0]
    replies = iter(cast(Sequence[ToolMessage], outcomes))
    return {"messages": [target if isinstance(target, ToolMessage) else next(replies) for _, target in plan]}


@dataclass(frozen=True)
class _Nodes:
    """The nodes that need the model and the tools; ``model=None`` takes the context's endpoint.

    ``agent``, ``tools`` and ``ground`` have a sync and an async implementation (a
    ``RunnableLambda`` with both), so ``invoke`` works and ``ainvoke``/``astream`` (the LangGraph
    server) never block the event loop; async-only tools such as those
    ``langchain-mcp-adapters`` makes work too."""

    model: BaseChatModel | None
    tools: dict[str, BaseTool]

    def _model_request(self, state: AgentState) -> tuple[Any, list[AnyMessage], int, Runtime[AgentContext]]:
        runtime = get_runtime(AgentContext)
        ctx = _context(runtime)
        budget = ctx.max_tool_calls - _calls_used(state["messages"])
        llm = self.model if self.model is not None else chat_model_for(ctx)
        runnable: Any = llm.bind_tools(list(self.tools.values())) if budget > 0 and self.tools else llm
        prompt = ctx.system_prompt + _video_hint(state)
        if budget <= 0:
            prompt += "\nNo more tool calls are possible: answer now from the results you have."
        _emit(runtime, step="model", tool_budget=max(budget, 0))
        return runnable, [SystemMessage(prompt), *state["messages"]], budget, runtime

    def call_model(self, state: AgentState) -> dict[str, Any]:
        """Ask the model for the next step; without tools once the budget is spent."""
        runnable, messages, budget, runtime = self._model_request(state)
        try:
            reply = runnable.invoke(messages)
        except openai.APIError as exc:
            raise _model_failed(runtime, exc) from exc
        return _model_reply(reply, budget, runtime)

    async def acall_model(self, state: AgentState) -> dict[str, Any]:
        runnable, messages, budget, runtime = self._model_request(state)
        try:
            reply = await runnable.ainvoke(messages)
        except openai.APIError as exc:
            raise _model_failed(runtime, exc) from exc
        return _model_reply(reply, budget, runtime)

    def _tool_plan(self, state: AgentState) -> tuple[_Plan, Runtime[AgentContext]]:
        """(tool call, tool or an error ToolMessage) for every call of the last reply.

        The ``ground`` node's own call is outside the model's budget: it runs even when the
        model may call no tool at all."""
        runtime = get_runtime(AgentContext)
        last = state["messages"][-1]
        assert isinstance(last, AIMessage)
        budget = _context(runtime).max_tool_calls - _calls_used(state["messages"])
        plan: _Plan = []
        for call in last.tool_calls:
            call_id, name = call.get("id") or "", call["name"]
            request = {"type": "tool_call", "id": call_id, "name": name, "args": call["args"]}
            if len(plan) >= budget and not call_id.startswith(GROUND_CALL_PREFIX):
                plan.append(
                    (request, _error_message(call_id, name, "tool-call budget for this question is used up"))
                )
            elif name not in self.tools:
                error = f"unknown tool {name!r}; available: {sorted(self.tools)}"
                plan.append((request, _error_message(call_id, name, error)))
            else:
                plan.append((request, self.tools[name]))
        for i, bad in enumerate(last.invalid_tool_calls):
            call_id, name = bad.get("id") or f"invalid-{i}", bad.get("name") or "unknown"
            error = "the tool call's arguments were not a valid JSON object; call the tool again"
            plan.append(({"id": call_id, "name": name}, _error_message(call_id, name, error)))
        return plan, runtime

    def _tool_calls(self, state: AgentState) -> tuple[_Plan, list[_Run]]:
        """The plan, and (request, tool, runtime) for each call to run; their ``tool`` events
        are written now, in call order, before any of them starts."""
        plan, runtime = self._tool_plan(state)
        runs: list[_Run] = [(request, tool, runtime) for request, tool in plan if isinstance(tool, BaseTool)]
        for request, _, _ in runs:
            _emit(runtime, step="tool", name=request["name"], call_id=request["id"])  # pairs it with its
        return plan, runs  # tool_done when several calls overlap

    def run_tools(self, state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        """Run the requested tools at once, as LangGraph's ``ToolNode`` does (threads of the
        config's executor, ``max_concurrency`` bounding them); every failure becomes an error
        ToolMessage for the model, and the replies come in the order of the calls.

        LangGraph's own control flow passes through (``GraphBubbleUp``): a tool that calls
        ``langgraph.types.interrupt`` pauses the run (with a checkpointer) once the step's other
        calls have ended, and the node runs again, every call of the step, when it is resumed
        with ``Command(resume=...)``."""
        plan, runs = self._tool_calls(state)
        with get_executor_for_config(config) as pool:  # copies the context: config, stream, runtime
            outcomes = list(pool.map(lambda run: _run_call(*run), runs))
        return _step_update(plan, outcomes)

    async def arun_tools(self, state: AgentState) -> dict[str, Any]:
        """:meth:`run_tools` on the event loop: the calls run at once (``asyncio.gather``).

        Unlike ``ToolNode``'s async path, which raises the first interrupt at once and leaves
        the other calls running behind the paused run, the step waits for every call, as the
        sync path (and ``ToolNode``'s) does."""
        plan, runs = self._tool_calls(state)
        outcomes = await asyncio.gather(*(_arun_call(*run) for run in runs))
        return _step_update(plan, outcomes)

    def _known(self, mention: _Mention) -> bool | str:
        """Whether the store lists ``mention``; a str when the look-up itself failed (the reason,
        as the model and its user may read it): a busy store or a lost Chroma server is not
        "no such video"."""
        if mention.checked:
            return True
        if LIST_TOOL not in self.tools:
            return False
        call = _lookup_call(mention.text)
        try:
            return _lookup_result(call, self.tools[LIST_TOOL].invoke(call), mention.text)
        except GraphBubbleUp:
            raise
        except Exception as exc:
            return _lookup_failed(exc, mention.text)

    async def _aknown(self, mention: _Mention) -> bool | str:
        if mention.checked:
            return True
        if LIST_TOOL not in self.tools:
            return False
        call = _lookup_call(mention.text)
        try:
            return _lookup_result(call, await self.tools[LIST_TOOL].ainvoke(call), mention.text)
        except GraphBubbleUp:
            raise
        except Exception as exc:
            return _lookup_failed(exc, mention.text)

    def ground(self, state: AgentState) -> dict[str, Any]:
        """The model answered without a retrieval: if the conversation names a video, retrieve."""
        need = _grounding_needed(state, self.tools)
        if need is None:
            return {}
        for mention in need.mentions:
            found = self._known(mention)
            if found is not False:
                return _grounding_update(need, mention.text, state, found)
        return {}

    async def aground(self, state: AgentState) -> dict[str, Any]:
        need = _grounding_needed(state, self.tools)
        if need is None:
            return {}
        for mention in need.mentions:
            found = await self._aknown(mention)
            if found is not False:
                return _grounding_update(need, mention.text, state, found)
        return {}


def answer(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    """Finish the reply: cite the retrieved windows if the model did not (or say retrieval failed)."""
    ctx = _context(runtime)
    last = state["messages"][-1]
    citations = _citations(state["messages"])
    text = last.text if isinstance(last, AIMessage) else ""
    final = text.strip()
    if ctx.cite_windows and citations and not _cites(final, citations):
        final = f"{final}\n\n{_footer(citations)}" if final else _footer(citations)
    elif ctx.cite_windows and not citations and (note := _grounding_note(state["messages"])):
        final = f"{final}\n\n{note}" if final else note
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


def after_model(state: AgentState) -> str:
    return "tools" if _has_calls(state) else "ground"


def after_ground(state: AgentState) -> str:
    return "tools" if _has_calls(state) else "answer"


# ---------------------------------------------------------------------------------------------
# the graph
# ---------------------------------------------------------------------------------------------


def build_agent(
    model: BaseChatModel | None = None, tools: Sequence[BaseTool] | None = None, *, checkpointer: Any = None
) -> Any:
    """Compile the agent.  ``model`` overrides the context's endpoint (tests use a stand-in);
    ``tools`` default to ``retrieve_moments`` and ``list_videos`` configured from the environment."""
    if tools is None:
        from tools.langchain_tool import granalign_tools

        tools = granalign_tools()
    nodes = _Nodes(model, {t.name: t for t in tools})
    builder = StateGraph(
        AgentState, context_schema=AgentContext, input_schema=AgentInput, output_schema=AgentOutput
    )
    builder.add_node("agent", RunnableLambda(nodes.call_model, afunc=nodes.acall_model, name="agent"))
    builder.add_node("tools", RunnableLambda(nodes.run_tools, afunc=nodes.arun_tools, name="tools"))
    builder.add_node("ground", RunnableLambda(nodes.ground, afunc=nodes.aground, name="ground"))
    builder.add_node("answer", answer)
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", after_model, ["tools", "ground"])
    builder.add_conditional_edges("ground", after_ground, ["tools", "answer"])
    builder.add_edge("tools", "agent")
    builder.add_edge("answer", END)
    return builder.compile(name="granalign-video-qa", checkpointer=checkpointer)


graph = build_agent()
"""The agent ``langgraph.json`` serves; its model comes from AgentContext / the environment."""
