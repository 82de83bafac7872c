"""Parser families on the recorded streams (tests/daemon/streams, reconstructed from the
formats' documentation): messages in order, session ids, usage, malformed lines, a
stream cut short, and the ACP conversation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from forgehall.daemon.adapters import session_for
from forgehall.daemon.adapters.base import Message, Session, Usage

STREAMS = Path(__file__).parent / "streams"
GARBAGE = (
    "this line is not JSON {",
    '{"type": "assistant", "message": {"content": [{"type": "te',
    "[1, 2, 3]",
)


def lines_of(name: str) -> list[str]:
    return [line for line in (STREAMS / name).read_text().splitlines() if line.strip()]


def read_all(session: Session, lines: list[str]) -> list[Message]:
    messages: list[Message] = []
    for line in lines:
        out, writes = session.feed(line + "\n")
        assert writes == []
        messages += out
    return messages


def kinds(messages: list[Message]) -> list[str]:
    return [m.kind for m in messages]


def tool(message: Message) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(message.content)
    return payload


# (stream, family, expected kinds, session id, usage by model, final text start)
CASES: list[tuple[str, str, list[str], str, dict[str, Usage], str]] = [
    (
        "claude.jsonl",
        "stream-json",
        ["thinking", "text", *["tool_use", "tool_result"] * 3, "text"],
        "9f1c2e7a-4b3d-4f6e-8a21-5c7d9e0b1a23",
        {
            "claude-haiku-4-5-20251001": Usage(1204, 87, 0, 0, 0.001639),
            "claude-sonnet-4-5-20250929": Usage(19, 431, 59739, 3031, 0.0854844),
        },
        "Fixed: the proxy",
    ),
    (
        "qwen.jsonl",
        "stream-json",
        ["thinking", "tool_use", "tool_result", "text"],
        "3b8f0d2e-6a4c-4f1e-9d7b-2c5a8e1f0b3d",
        {"qwen3-coder-plus": Usage(18470, 105, 12288, 0, None)},
        'Removed "host"',
    ),
    (
        "cursor.jsonl",
        "stream-json",
        ["thinking", "text", "tool_use", "tool_result", "tool_use", "tool_result", "text"],
        "c6b62c6f-7ead-4fd6-9922-e952131177ff",
        {},
        "Let me read",
    ),
    (
        "gemini.jsonl",
        "stream-json",
        ["text", "tool_use", "tool_result", "tool_use", "tool_result", "error", "text"],
        "7d2e4c1a-9b3f-4e8d-a6c5-1f0e2d3c4b5a",
        {
            "gemini-2.5-pro": Usage(5682, 571, 12288, 0, None),
            "gemini-2.5-flash-lite": Usage(1900, 100, 0, 0, None),
        },
        'Removed "host"',
    ),
    (
        "codex.jsonl",
        "codex-json",
        ["thinking", *["tool_use", "tool_result"] * 4, "text"],
        "0199a213-81c0-7800-8aa1-bbab2a035a53",
        {"gpt-5-codex": Usage(315, 1122, 24448, 0, None)},
        "The proxy no longer",
    ),
    (
        "opencode.jsonl",
        "opencode-json",
        ["thinking", "text", "tool_use", "tool_result", "tool_use", "tool_result", "text"],
        "ses_3b11bfdcdffeITCXse4fCuIRnU",
        {"anthropic/claude-sonnet-4-5": Usage(1500, 270, 21200, 800, 0.0224)},
        'Removed "host"',
    ),
    (
        "copilot.jsonl",
        "copilot-json",
        ["thinking", "text", "tool_use", "tool_result", "tool_use", "tool_result", "text"],
        "a3c1e0f2-5b7d-4c9e-8f1a-2b3c4d5e6f70",
        {"claude-sonnet-4.5": Usage(16310, 352, 23000, 1200, None)},
        'Removed "host"',
    ),
]
MODEL_ASKED = {"codex.jsonl": "gpt-5-codex", "opencode.jsonl": "anthropic/claude-sonnet-4-5"}


def _same_usage(actual: dict[str, Usage], expected: dict[str, Usage]) -> None:
    assert set(actual) == set(expected)
    for model, want in expected.items():
        got = actual[model]
        assert (got.input_tokens, got.output_tokens) == (want.input_tokens, want.output_tokens)
        assert (got.cache_read_tokens, got.cache_write_tokens) == (
            want.cache_read_tokens,
            want.cache_write_tokens,
        )
        if want.cost_usd is None:
            assert got.cost_usd is None
        else:
            assert got.cost_usd == pytest.approx(want.cost_usd)


@pytest.mark.parametrize(
    ("stream", "family", "expected", "session_id", "usage", "final"),
    CASES,
    ids=[case[0] for case in CASES],
)
def test_recorded_stream(
    stream: str,
    family: str,
    expected: list[str],
    session_id: str,
    usage: dict[str, Usage],
    final: str,
) -> None:
    session = session_for(family, model=MODEL_ASKED.get(stream))
    assert session.start("prompt", "/tmp", None) == []
    messages = read_all(session, lines_of(stream)) + session.finish(0)
    assert kinds(messages) == expected
    assert session.outcome.session_id == session_id
    assert session.outcome.error is None
    assert session.outcome.final_text is not None
    assert session.outcome.final_text.startswith(final)
    _same_usage(session.outcome.usage, usage)
    for message in messages:
        if message.kind in ("tool_use", "tool_result"):
            payload = tool(message)
            assert payload["id"], message
    uses = [tool(m)["id"] for m in messages if m.kind == "tool_use"]
    results = [tool(m)["id"] for m in messages if m.kind == "tool_result"]
    assert uses == results  # each call answered, in order


def test_claude_tool_calls_and_failures() -> None:
    session = session_for("stream-json")
    messages = read_all(session, lines_of("claude.jsonl"))
    first_use, first_result = tool(messages[2]), tool(messages[3])
    assert first_use == {
        "id": "toolu_01Bash1",
        "tool": "Bash",
        "input": {
            "command": "git log -3 --oneline -- src/proxy",
            "description": "Show recent proxy commits",
        },
    }
    assert first_result["output"].startswith("a1b2c3d proxy")
    assert first_result["is_error"] is False
    assert tool(messages[5])["output"].endswith("has been updated.")  # list-of-blocks content
    assert tool(messages[7])["is_error"] is True
    assert session.done  # the final result ends the run


def test_claude_usage_accumulates_before_the_result() -> None:
    """Running totals come from the assistant messages (each message id counted once)
    until the final result replaces them."""
    session = session_for("stream-json")
    read_all(session, lines_of("claude.jsonl")[:-1])
    totals = session.outcome.usage["claude-sonnet-4-5-20250929"]
    assert totals.output_tokens == 96 + 210 + 64 + 61  # msg_01A1 counted once, at its last
    assert totals.cost_usd is None


def test_claude_error_result() -> None:
    session = session_for("stream-json")
    event = {
        "type": "result",
        "subtype": "error_max_turns",
        "is_error": True,
        "session_id": "s-1",
        "usage": {"input_tokens": 5, "output_tokens": 7},
        "total_cost_usd": 0.01,
    }
    messages = read_all(session, [json.dumps(event)])
    assert kinds(messages) == ["error"]
    assert session.outcome.error == "error_max_turns"
    assert session.outcome.usage["unknown"].cost_usd == pytest.approx(0.01)


def test_gemini_error_result() -> None:
    session = session_for("stream-json")
    event = {
        "type": "result",
        "status": "error",
        "error": {"type": "FatalAuthenticationError", "message": "no credentials"},
        "stats": {"input_tokens": 0, "output_tokens": 0},
    }
    messages = read_all(session, [json.dumps(event)])
    assert messages == [Message("error", "no credentials")]
    assert session.outcome.error == "no credentials"


def test_codex_failed_turn() -> None:
    session = session_for("codex-json")
    events = [
        {"type": "thread.started", "thread_id": "t-1"},
        {"type": "error", "message": "stream disconnected; retrying 1/5"},
        {"type": "turn.failed", "error": {"message": "stream disconnected before completion"}},
    ]
    messages = read_all(session, [json.dumps(e) for e in events]) + session.finish(1)
    assert kinds(messages) == ["error", "error"]
    assert session.outcome.error == "stream disconnected before completion"


@pytest.mark.parametrize(("stream", "family"), [(c[0], c[1]) for c in CASES])
def test_malformed_lines_are_kept_as_raw_text(stream: str, family: str) -> None:
    clean = session_for(family)
    expected = read_all(clean, lines_of(stream))
    session = session_for(family)
    lines = lines_of(stream)
    mixed = [lines[0], *GARBAGE, *lines[1:], "", "   "]
    messages = read_all(session, mixed)
    raw = [m for m in messages if m.content in GARBAGE]
    assert [m.content for m in raw] == list(GARBAGE)
    assert all(m.kind == "text" for m in raw)
    assert [m for m in messages if m.content not in GARBAGE] == expected


WEIRD_EVENTS: list[Any] = [
    {"type": "assistant", "message": {"content": 42, "usage": "many"}},
    {"type": "assistant", "message": {"id": "m", "model": 7, "content": [None, "x", {}]}},
    {"type": "user", "message": {"content": [{"type": "tool_result", "content": {"a": 1}}]}},
    {"type": "result", "modelUsage": {"m": "not a dict"}, "usage": [1], "is_error": "yes"},
    {"type": "result", "stats": {"models": {"m": {"input_tokens": -5, "cached": "x"}}}},
    {"type": "tool_call", "subtype": "completed", "tool_call": {"x": 1, "y": {"result": 3}}},
    {"type": "message", "role": "assistant", "content": None, "delta": True},
    {"type": "item.completed", "item": {"type": "command_execution", "exit_code": "1"}},
    {"type": "item.completed", "item": {"type": "mcp_tool_call", "result": "text"}},
    {"type": "item.completed", "item": {"type": "file_change", "changes": "all"}},
    {"type": "turn.completed", "usage": None},
    {"type": "step_finish", "part": {"tokens": {"cache": 3}, "cost": "free"}},
    {"type": "tool_use", "part": {"state": "done"}},
    {"type": "error", "error": "boom"},
    {"type": "assistant.message", "data": {"toolRequests": [None, 3]}},
    {"type": "tool.execution_complete", "data": {"result": [1, 2]}},
    {"type": "assistant.usage", "data": None},
    {"type": "result", "exitCode": 2},
    {"session_id": 12, "sessionID": ["x"], "type": None},
    {"type": ["list"]},
]


@pytest.mark.parametrize(
    "family", ["stream-json", "codex-json", "opencode-json", "copilot-json", "plain", "acp"]
)
def test_surprising_shapes_never_raise(family: str) -> None:
    session = session_for(family)
    session.start("prompt", "/tmp", None)
    for event in WEIRD_EVENTS:
        messages, _ = session.feed(json.dumps(event))
        known = ("text", "thinking", "tool_use", "tool_result", "error")
        assert all(m.kind in known for m in messages)
    for line in ["\x00\x01 binary", "{" * 5000, "null", "7", '"a string"']:
        session.feed(line)
    session.finish(0)


@pytest.mark.parametrize(("stream", "family"), [(c[0], c[1]) for c in CASES])
def test_crash_mid_stream(stream: str, family: str) -> None:
    lines = lines_of(stream)
    session = session_for(family)
    read_all(session, lines[: len(lines) // 2])
    last = session.finish(1)
    assert last[-1] == Message("error", "the CLI exited with code 1 before its final result")
    assert session.outcome.error == "the CLI exited with code 1 before its final result"


def test_truncated_stream_with_exit_zero_is_flagged() -> None:
    session = session_for("stream-json")
    read_all(session, lines_of("claude.jsonl")[:4])
    assert session.finish(0) == [Message("error", "the CLI's output ended before its final result")]
    assert session.outcome.error is None


def test_streamed_deltas_are_joined_and_flushed_at_the_end() -> None:
    session = session_for("stream-json")
    chunks = [{"type": "message", "role": "assistant", "content": c, "delta": True} for c in "abc"]
    assert read_all(session, [json.dumps(c) for c in chunks]) == []
    assert session.finish(1)[0] == Message("text", "abc")


def test_huge_content_is_bounded() -> None:
    session = session_for("stream-json")
    text = "x" * 1_000_000
    event = {"type": "assistant", "message": {"content": [{"type": "text", "text": text}]}}
    (message,) = read_all(session, [json.dumps(event)])
    assert len(message.content) < 61_000
    assert message.content.endswith("[truncated 940000 characters]")


def test_plain_lines_are_text() -> None:
    session = session_for("plain")
    messages = read_all(session, ["hello", "", '{"type": "result"}', "done"])
    assert messages == [
        Message("text", "hello"),
        Message("text", '{"type": "result"}'),
        Message("text", "done"),
    ]
    assert session.finish(0) == []
    assert session.outcome.final_text == 'hello\n{"type": "result"}\ndone'
    assert session.finish(2)[-1].kind == "error"


def test_unknown_family() -> None:
    with pytest.raises(KeyError, match="unknown parser family 'xml'"):
        session_for("xml")


# --- ACP ------------------------------------------------------------------------------


def acp_conversation(
    session: Session, agent_lines: list[str]
) -> tuple[list[Message], list[dict[str, Any]]]:
    started = session.start("fix it", "/w", None)
    written: list[dict[str, Any]] = [json.loads(line) for line in started]
    messages: list[Message] = []
    for line in agent_lines:
        out, writes = session.feed(line)
        messages += out
        written += [json.loads(w) for w in writes]
    return messages, written


def test_acp_recorded_conversation() -> None:
    session = session_for("acp")
    messages, written = acp_conversation(session, lines_of("acp.jsonl"))
    assert [w.get("method", w.get("id")) for w in written] == [
        "initialize",
        "session/new",
        "session/prompt",
        0,  # the permission request, answered
        1,  # fs/read_text_file, refused
    ]
    assert written[0]["params"]["protocolVersion"] == 1
    assert written[0]["params"]["clientCapabilities"]["terminal"] is False
    assert written[1]["params"] == {"cwd": "/w", "mcpServers": []}
    assert written[2]["params"] == {
        "sessionId": "sess_4f2a9c1e7b3d",
        "prompt": [{"type": "text", "text": "fix it"}],
    }
    assert written[3]["result"] == {"outcome": {"outcome": "selected", "optionId": "allow-always"}}
    assert written[4]["error"]["code"] == -32601
    assert all(w["jsonrpc"] == "2.0" for w in written)
    assert kinds(messages) == [
        "thinking",
        "thinking",
        "text",
        "tool_use",
        "tool_result",
        "tool_use",
        "tool_result",
        "text",
    ]
    assert messages[0].content == "The Host header is probably in the hop-by-hop set."
    assert messages[2].content == "Let me read the header module."
    assert tool(messages[6]) == {
        "id": "call_002",
        "output": "old text matched 2 places",
        "is_error": True,
    }
    assert session.done
    assert session.outcome.session_id == "sess_4f2a9c1e7b3d"
    _same_usage(session.outcome.usage, {"kimi-k2-turbo": Usage(15300, 500, 9000, 0, None)})
    assert session.finish(0) == []
    assert session.outcome.error is None


def _rpc(**payload: Any) -> str:
    return json.dumps({"jsonrpc": "2.0", **payload})


def test_acp_resume_loads_the_session_and_skips_replayed_history() -> None:
    session = session_for("acp")
    written = [json.loads(line) for line in session.start("go on", "/w", "sess_old")]
    replies = [
        _rpc(id=1, result={"protocolVersion": 1, "agentCapabilities": {"loadSession": True}}),
        _rpc(
            method="session/update",
            params={
                "sessionId": "sess_old",
                "update": {
                    "sessionUpdate": "agent_message_chunk",
                    "content": {"type": "text", "text": "old history"},
                },
            },
        ),
        _rpc(id=2, result=None),
        _rpc(id=3, result={"stopReason": "end_turn"}),
    ]
    messages: list[Message] = []
    for reply in replies:
        out, writes = session.feed(reply)
        messages += out
        written += [json.loads(w) for w in writes]
    assert [w["method"] for w in written] == ["initialize", "session/load", "session/prompt"]
    assert written[1]["params"]["sessionId"] == "sess_old"
    assert written[2]["params"]["sessionId"] == "sess_old"
    assert messages == []
    assert session.outcome.session_id == "sess_old"
    assert session.done


def test_acp_failed_load_starts_a_new_session() -> None:
    session = session_for("acp")
    session.start("go on", "/w", "sess_gone")
    _, writes = session.feed(
        _rpc(id=1, result={"protocolVersion": 1, "agentCapabilities": {"loadSession": True}})
    )
    assert json.loads(writes[0])["method"] == "session/load"
    messages, writes = session.feed(_rpc(id=2, error={"code": -32002, "message": "not found"}))
    assert messages[0].kind == "error"
    assert json.loads(writes[0])["method"] == "session/new"
    _, writes = session.feed(_rpc(id=3, result={"sessionId": "sess_new"}))
    assert json.loads(writes[0])["method"] == "session/prompt"
    assert session.outcome.session_id == "sess_new"


def test_acp_without_load_support_starts_a_new_session() -> None:
    session = session_for("acp")
    session.start("go on", "/w", "sess_old")
    _, writes = session.feed(_rpc(id=1, result={"protocolVersion": 1}))
    assert json.loads(writes[0])["method"] == "session/new"


def test_acp_errors_end_the_run() -> None:
    session = session_for("acp")
    session.start("go", "/w", None)
    messages, writes = session.feed(_rpc(id=1, error={"code": -32000, "message": "auth required"}))
    assert writes == []
    assert messages == [Message("error", "initialize failed: auth required")]
    assert session.done
    assert session.outcome.error == "initialize failed: auth required"


def test_acp_refusal_is_an_error_and_no_allow_option_cancels() -> None:
    session = session_for("acp")
    session.start("go", "/w", None)
    session.feed(_rpc(id=1, result={"protocolVersion": 1}))
    session.feed(_rpc(id=2, result={"sessionId": "s"}))
    _, writes = session.feed(
        _rpc(
            id=9,
            method="session/request_permission",
            params={"options": [{"optionId": "no", "kind": "reject_once"}]},
        )
    )
    assert json.loads(writes[0])["result"] == {"outcome": {"outcome": "cancelled"}}
    messages, _ = session.feed(_rpc(id=3, result={"stopReason": "refusal"}))
    assert messages == [Message("error", "the agent stopped: refusal")]
    assert session.done


def test_acp_agent_exiting_early() -> None:
    session = session_for("acp")
    session.start("go", "/w", None)
    session.feed("not json at all")
    assert session.finish(0)[-1] == Message(
        "error", "the CLI's output ended before its final result"
    )
