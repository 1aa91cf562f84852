"""Following one classic run through its server-sent events (no I/O here).

`RunTracker.feed` takes each `(event_type, data)` the SDK's run stream yields and keeps what the backend needs: the
run id and status, the failure, the Code Interpreter calls (code, logs, images) and the order in which steps and
messages appeared, so outputs can be shown in that order. It returns a short progress message when there is news.
Event payloads are read as plain mappings of the wire JSON (the SDK's models are mappings), so unknown or missing
fields never crash the run.
"""

from __future__ import annotations

import ast
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "expired", "incomplete"})
ERROR_EVENT = "error"
DONE_EVENT = "done"


def dig(obj: object, *path: str | int) -> object:
    """Walk mappings and lists by key/index; None as soon as a step is missing."""
    for key in path:
        if isinstance(key, int):
            if not isinstance(obj, list | tuple) or not -len(obj) <= key < len(obj):
                return None
            obj = obj[key]
        else:
            if not isinstance(obj, Mapping):
                return None
            obj = obj.get(key)
    return obj


def as_str(obj: object) -> str | None:
    return obj if isinstance(obj, str) and obj else None


def as_list(obj: object) -> list[object]:
    return list(obj) if isinstance(obj, list | tuple) else []


@dataclass
class CodeCall:
    """One Code Interpreter tool call: the code the agent ran, its logs and the ids of images it displayed."""

    step_id: str
    index: int
    code: str = ""
    logs: list[str] = field(default_factory=list)
    image_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RunFailure:
    code: str | None
    message: str | None


EntryKind = Literal["step", "message"]


class RunTracker:
    """State of one run, built from its stream events."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.status: str | None = None
        self.failure: RunFailure | None = None
        self.incomplete_reason: str | None = None
        self.required_tools: list[str] = []
        self.stream_error: str | None = None
        self.done = False
        self.events = 0
        self.order: list[tuple[EntryKind, str]] = []
        self.calls: dict[tuple[str, int], CodeCall] = {}
        self.messages: dict[str, Mapping[str, object]] = {}
        self._last_progress: str | None = None

    # -- state ------------------------------------------------------------------------------------------------

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def requires_action(self) -> bool:
        return self.status == "requires_action"

    @property
    def finished(self) -> bool:
        """Nothing more will come that we wait for: a terminal status, requires_action, an error or `done`."""
        return self.terminal or self.requires_action or self.stream_error is not None or self.done

    def calls_in_order(self) -> list[CodeCall]:
        steps = [entry_id for kind, entry_id in self.order if kind == "step"]
        rank = {step_id: i for i, step_id in enumerate(steps)}
        return sorted(self.calls.values(), key=lambda c: (rank.get(c.step_id, len(rank)), c.index))

    # -- events -----------------------------------------------------------------------------------------------

    def feed(self, event_type: str, data: object) -> str | None:
        """Take one event; return a progress message when it says something new."""
        self.events += 1
        message: str | None = None
        if event_type == DONE_EVENT:
            self.done = True
        elif event_type == ERROR_EVENT:
            self.stream_error = _error_text(data)
            message = "Azure reported a stream error"
        elif event_type.startswith("thread.run.step."):
            message = self._on_step(event_type, data)
        elif event_type.startswith("thread.run."):
            message = self._on_run(data)
        elif event_type.startswith("thread.message."):
            message = self._on_message(event_type, data)
        if message is None or message == self._last_progress:
            return None
        self._last_progress = message
        return message

    def _on_run(self, data: object) -> str | None:
        self.run_id = as_str(dig(data, "id")) or self.run_id
        status = as_str(dig(data, "status"))
        if status is None:
            return None
        self.status = status
        if status == "failed" or dig(data, "last_error") is not None:
            err = dig(data, "last_error")
            if err is not None:
                self.failure = RunFailure(as_str(dig(err, "code")), as_str(dig(err, "message")))
        if status == "incomplete":
            self.incomplete_reason = as_str(dig(data, "incomplete_details", "reason"))
        if status == "requires_action":
            calls = as_list(dig(data, "required_action", "submit_tool_outputs", "tool_calls"))
            self.required_tools = [
                as_str(dig(c, "function", "name")) or as_str(dig(c, "type")) or "unknown tool" for c in calls
            ]
        return {
            "queued": "Azure run queued",
            "in_progress": "Azure agent is working",
            "requires_action": "Azure run is waiting for a client tool",
            "cancelling": "Azure run is being cancelled",
        }.get(status, f"Azure run {status}")

    def _on_step(self, event_type: str, data: object) -> str | None:
        step_id = as_str(dig(data, "id"))
        if step_id is None:
            return None
        if event_type == "thread.run.step.delta":
            details = dig(data, "delta", "step_details")
            running = False
            for position, call in enumerate(as_list(dig(details, "tool_calls"))):
                running = self._merge_delta(step_id, position, call) or running
            return "Code Interpreter is running the code" if running else "Agent is writing code"
        if ("step", step_id) not in self.order:
            self.order.append(("step", step_id))
        step_type = as_str(dig(data, "type")) or as_str(dig(data, "step_details", "type"))
        if event_type == "thread.run.step.completed":
            for position, call in enumerate(as_list(dig(data, "step_details", "tool_calls"))):
                self._replace_call(step_id, position, call)
        if step_type == "message_creation":
            return "Agent is writing the answer"
        if event_type == "thread.run.step.completed":
            return "Code Interpreter step finished"
        return "Agent is writing code"

    def _merge_delta(self, step_id: str, position: int, call: object) -> bool:
        if dig(call, "type") not in (None, "code_interpreter"):
            return False
        index = dig(call, "index")
        key = (step_id, index if isinstance(index, int) else position)
        entry = self.calls.setdefault(key, CodeCall(step_id, key[1]))
        entry.code += as_str(dig(call, "code_interpreter", "input")) or ""
        outputs = as_list(dig(call, "code_interpreter", "outputs"))
        _add_outputs(entry, outputs)
        return bool(outputs)

    def _replace_call(self, step_id: str, position: int, call: object) -> None:
        if dig(call, "type") != "code_interpreter":
            return
        entry = CodeCall(step_id, position, as_str(dig(call, "code_interpreter", "input")) or "")
        _add_outputs(entry, as_list(dig(call, "code_interpreter", "outputs")))
        self.calls[(step_id, position)] = entry

    def _on_message(self, event_type: str, data: object) -> str | None:
        message_id = as_str(dig(data, "id"))
        if message_id is None:
            return None
        if event_type != "thread.message.delta" and ("message", message_id) not in self.order:
            self.order.append(("message", message_id))
        if event_type == "thread.message.completed" and isinstance(data, Mapping):
            self.messages[message_id] = data
        return "Agent is writing the answer"


def _add_outputs(entry: CodeCall, outputs: list[object]) -> None:
    for out in outputs:
        kind = dig(out, "type")
        if kind == "logs":
            logs = as_str(dig(out, "logs"))
            if logs:
                entry.logs.append(logs)
        elif kind == "image":
            file_id = as_str(dig(out, "image", "file_id"))
            if file_id and file_id not in entry.image_ids:
                entry.image_ids.append(file_id)


def _error_text(data: object) -> str:
    """The SDK hands `error` event data over as `str(dict)`; read it back as a literal when it is one."""
    if isinstance(data, str):
        with contextlib.suppress(ValueError, SyntaxError, MemoryError, RecursionError):
            data = ast.literal_eval(data)
    text = as_str(dig(data, "message")) or as_str(dig(data, "error", "message"))
    if text:
        return text
    return str(data)[:500] if data else "unknown stream error"
