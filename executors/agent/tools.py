"""The agent's environment: Anthropic's text editor and bash client tools over a job's workspace.

The models are trained on these tools' shapes, so the tool definitions are Anthropic's own
(``text_editor_20250728``, ``bash_20250124``); what they do is ours, confined to the checkout.
Every failure is a :class:`ToolResult` with ``is_error`` set, never an exception: the model reads
the reason and tries something else.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from codeworker import logs
from codeworker.coordination.locks import LockHeld
from codeworker.executors.base import Workspace
from codeworker.sandbox.commands import clip
from codeworker.worker import metrics

log = logging.getLogger(__name__)

EDITOR = "str_replace_based_edit_tool"
BASH = "bash"

TOOL_DEFINITIONS: list[dict[str, Any]] = [
    {"type": "text_editor_20250728", "name": EDITOR},
    {"type": "bash_20250124", "name": BASH},
]
"""Anthropic's client tool definitions (the SDK's ToolTextEditor20250728Param, ToolBash20250124Param)."""

SNIPPET_LINES = 4
"""Lines of context shown around an edit."""

LISTING_LIMIT = 400
"""Entries a directory view lists at most."""


@dataclass(frozen=True)
class ToolResult:
    """What goes back to the model as one ``tool_result`` block."""

    text: str
    is_error: bool = False


class ToolError(Exception):
    """A tool call that cannot be carried out; its message is what the model reads."""


class Environment(Protocol):
    """Where the agent's tool calls run (mini-swe-agent's Environment)."""

    definitions: list[dict[str, Any]]

    def call(self, name: str, tool_input: dict[str, Any]) -> ToolResult: ...

    def stop_if_cancelled(self) -> None:
        """Raise OperationCancelled once the job was cancelled (asked before every turn)."""


def numbered(lines: list[str], first: int = 1) -> str:
    return "\n".join(f"{number:6}\t{line}" for number, line in enumerate(lines, start=first))


class Tools:
    """The text editor and bash tools of one job."""

    definitions = TOOL_DEFINITIONS

    def __init__(self, workspace: Workspace, max_output: int, max_view_bytes: int) -> None:
        self.workspace = workspace
        self.max_output = max_output
        self.max_view_bytes = max_view_bytes

    def stop_if_cancelled(self) -> None:
        self.workspace.stop_if_cancelled()

    def call(self, name: str, tool_input: dict[str, Any]) -> ToolResult:
        """The tool's answer, scrubbed of every secret the worker knows before the model (or the
        trajectory) sees it. A secret in a tool's output means something got past the sandbox's
        confinement: it is counted and logged (without the secret) for an alert."""
        result = self._call(name, tool_input)
        text, scrubbed = logs.scrub_counted(result.text)
        if not scrubbed:
            return result
        metrics.secrets_scrubbed(name, scrubbed)
        log.error(
            "a %s tool result held %d worker secret(s); scrubbed before the model saw it "
            "(a confinement failure)",
            name,
            scrubbed,
            extra={"lifecycle": "secret_scrubbed"},
        )
        return ToolResult(text, result.is_error)

    def _call(self, name: str, tool_input: dict[str, Any]) -> ToolResult:
        try:
            if name == EDITOR:
                text = self._editor(tool_input)
            elif name == BASH:
                text = self._bash(tool_input)
            else:
                raise ToolError(f"unknown tool {name!r}; the tools are {EDITOR} and {BASH}")
        except ToolError as exc:
            return ToolResult(clip(str(exc), self.max_output), is_error=True)
        except LockHeld as exc:
            return ToolResult(f"cannot write: {exc}; leave this file alone or work around it", is_error=True)
        except ValueError as exc:  # PathEscape and relative_path's refusals
            return ToolResult(f"refused: {exc}. Paths must stay inside {self.workspace.root}", is_error=True)
        except (OSError, UnicodeError) as exc:
            return ToolResult(f"{type(exc).__name__}: {exc}", is_error=True)
        return ToolResult(clip(text, self.max_output))

    # -- bash ------------------------------------------------------------------------------

    def _bash(self, tool_input: dict[str, Any]) -> str:
        if tool_input.get("restart"):
            return "bash restarted (every command runs in a fresh sandboxed shell anyway)"
        command = tool_input.get("command")
        if not isinstance(command, str) or not command.strip():
            raise ToolError("bash needs a non-empty 'command'")
        result = self.workspace.run(command)
        if result.timed_out:
            status = "[command timed out and was killed]"
        else:
            status = f"[exit code {result.exit_code}]"
        return f"{result.output.rstrip()}\n{status}" if result.output.strip() else status

    # -- text editor -----------------------------------------------------------------------

    def _editor(self, tool_input: dict[str, Any]) -> str:
        command = tool_input.get("command")
        path = tool_input.get("path")
        if not isinstance(path, str) or not path:
            raise ToolError("the text editor needs a 'path'")
        handlers = {
            "view": self._view,
            "create": self._create,
            "str_replace": self._replace,
            "insert": self._insert,
        }
        if command not in handlers:
            raise ToolError(f"unknown command {command!r}; use one of {', '.join(handlers)}")
        return handlers[command](path, tool_input)

    def _relative(self, path: str) -> str:
        real = self.workspace.resolve(path)
        return str(real.relative_to(self.workspace.root.resolve()))

    def _read(self, path: str) -> tuple[Path, str]:
        real = self.workspace.resolve(path)
        if not real.exists():
            raise ToolError(f"{path} does not exist")
        if real.is_dir():
            raise ToolError(f"{path} is a directory")
        if not real.is_file():  # a FIFO made in bash would block the worker in open() for good
            raise ToolError(f"{path} is not a regular file (a FIFO, socket or device); use bash for it")
        size = real.stat().st_size
        if size > self.max_view_bytes:
            raise ToolError(
                f"{path} is {size} bytes, more than the {self.max_view_bytes} bytes the editor may read "
                "(CODEWORKER_MAX_VIEW_BYTES); look at parts of it with bash (grep -n, sed -n, head)"
            )
        return real, real.read_text(encoding="utf-8")

    def _write(self, path: str, content: str) -> None:
        """Write through the workspace (which locks the file), refusing a file the editor could not
        read back: the same limit keeps view, edit and create symmetrical."""
        size = len(content.encode("utf-8"))
        if size > self.max_view_bytes:
            raise ToolError(
                f"{path} would be {size} bytes, more than the {self.max_view_bytes} bytes the editor "
                "may write (CODEWORKER_MAX_VIEW_BYTES); nothing changed"
            )
        self.workspace.write_file(self._relative(path), content)

    def _view(self, path: str, tool_input: dict[str, Any]) -> str:
        real = self.workspace.resolve(path)
        if real.is_dir():
            return self._listing(real, path)
        _, content = self._read(path)
        lines = content.split("\n")
        if content.endswith("\n"):
            lines.pop()
        view_range = tool_input.get("view_range")
        if view_range is None:
            return numbered(lines)
        if (
            not isinstance(view_range, list)
            or len(view_range) != 2
            or not all(isinstance(n, int) for n in view_range)
        ):
            raise ToolError("view_range must be two line numbers [start, end]; end -1 means the last line")
        start, end = view_range
        end = len(lines) if end == -1 else end
        if not 1 <= start <= max(len(lines), 1) or end < start or end > len(lines):
            raise ToolError(f"view_range {view_range} is outside the file's {len(lines)} lines")
        return numbered(lines[start - 1 : end], start)

    def _listing(self, real: Path, shown: str) -> str:
        entries: list[str] = []
        for child in sorted(real.rglob("*")):
            relative = child.relative_to(real)
            if len(relative.parts) > 2 or any(part.startswith(".") for part in relative.parts):
                continue
            entries.append(f"{relative}/" if child.is_dir() else str(relative))
            if len(entries) >= LISTING_LIMIT:
                entries.append(f"[... listing stopped at {LISTING_LIMIT} entries]")
                break
        header = f"Files and directories up to 2 levels deep in {shown}, hidden items excluded:"
        return "\n".join([header, *entries])

    def _create(self, path: str, tool_input: dict[str, Any]) -> str:
        text = tool_input.get("file_text")
        if not isinstance(text, str):
            raise ToolError("create needs 'file_text'")
        real = self.workspace.resolve(path)
        if real.is_dir():
            raise ToolError(f"{path} is a directory")
        existed = real.exists()
        self._write(path, text)
        return f"{'Overwrote' if existed else 'Created'} {self._relative(path)} ({len(text)} characters)"

    def _replace(self, path: str, tool_input: dict[str, Any]) -> str:
        old, new = tool_input.get("old_str"), tool_input.get("new_str", "")
        if not isinstance(old, str) or not old or not isinstance(new, str):
            raise ToolError("str_replace needs a non-empty 'old_str' and a string 'new_str'")
        _, content = self._read(path)
        count = content.count(old)
        if count == 0:
            if new and new in content:
                line = content[: content.index(new)].count("\n") + 1
                raise ToolError(
                    f"old_str is not in {path}, but new_str already is (line {line}): "
                    "the edit looks applied already; nothing changed"
                )
            raise ToolError(f"old_str was not found in {path}; nothing changed.{_nearest(content, old)}")
        if count > 1:
            lines = _match_lines(content, old)
            raise ToolError(
                f"old_str matches {count} times in {path} (at lines {', '.join(map(str, lines))}); "
                "nothing changed. Include more surrounding lines so that it matches exactly once"
            )
        start_line = content[: content.index(old)].count("\n") + 1
        updated = content.replace(old, new, 1)
        self._write(path, updated)
        return f"Edited {self._relative(path)}. The changed region now reads:\n" + _snippet(
            updated, start_line, new.count("\n") + 1
        )

    def _insert(self, path: str, tool_input: dict[str, Any]) -> str:
        text = tool_input.get("insert_text", tool_input.get("new_str"))
        after = tool_input.get("insert_line")
        if not isinstance(text, str) or not isinstance(after, int):
            raise ToolError("insert needs 'insert_line' (0 = before the first line) and 'insert_text'")
        _, content = self._read(path)
        lines = content.split("\n")
        trailing = content.endswith("\n")
        if trailing:
            lines.pop()
        if not 0 <= after <= len(lines):
            raise ToolError(f"insert_line {after} is outside 0..{len(lines)}")
        new_lines = text.removesuffix("\n").split("\n")
        lines[after:after] = new_lines
        updated = "\n".join(lines) + ("\n" if trailing or not content else "")
        self._write(path, updated)
        return f"Inserted {len(new_lines)} line(s) into {self._relative(path)}:\n" + _snippet(
            updated, after + 1, len(new_lines)
        )


def _match_lines(content: str, needle: str) -> list[int]:
    lines, start = [], content.find(needle)
    while start != -1:
        lines.append(content[:start].count("\n") + 1)
        start = content.find(needle, start + 1)
    return lines


def _snippet(content: str, first: int, count: int) -> str:
    lines = content.split("\n")
    low = max(1, first - SNIPPET_LINES)
    high = min(len(lines), first + count - 1 + SNIPPET_LINES)
    return numbered(lines[low - 1 : high], low)


def _nearest(content: str, old: str) -> str:
    """The file's lines that look most like old_str, so the model can correct its quote.

    A window scores by the longest run it shares with old_str (a typo still leaves long runs),
    then by overall similarity.
    """
    lines = content.split("\n")
    wanted = old.strip("\n")
    width = wanted.count("\n") + 1
    best, best_at = (0.0, 0.0), 0
    for at in range(max(1, len(lines) - width + 1)):
        window = "\n".join(lines[at : at + width])
        matcher = difflib.SequenceMatcher(None, window, wanted, autojunk=False)
        shared = matcher.find_longest_match(0, len(window), 0, len(wanted)).size / max(1, len(wanted.strip()))
        score = (round(shared, 2), matcher.ratio())
        if score > best:
            best, best_at = score, at
    if best[0] < 0.5:
        return " No similar lines either: view the file first."
    candidate = numbered(lines[best_at : best_at + width], best_at + 1)
    return f" The nearest candidate lines (check whitespace and exact text):\n{candidate}"
