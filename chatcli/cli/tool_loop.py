"""The tools of ask and chat: the flags checked, the tools loaded.

Contract: `setup(ToolFlags(...), model, base_url, models_file, constraint, raw, alt)` is
what a command starts from: the `Toolset` (tools, the constraint, what the template
shows, consent), or None without tool flags. `prepare(tool, tool_module, choice,
max_calls, timeout, constraint, raw, alt, allow, mcp)` checks the tool flags before
anything loads (one line each: a constraint, --raw or --alt with --tool; --tool-choice,
--max-tool-calls, --tool-timeout out of range; tool flags without a tool) and loads the
tools (`chatcli.tools.functions.toolbox`: --tool, --tool-module, and the MCP servers of
--mcp, started), or None without any.
`local_only(model, base_url, models_file)` refuses a server's alias: a server's own
tools field is not used yet. The call loop itself is `chatcli.tools.loop`.

Knows nothing about the terminal beyond `chatcli.ui.tools`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chatcli.cli.options import ToolFlags
from chatcli.errors import UsageError


@dataclass(frozen=True)
class Toolset:
    """The tools of a command: by name, the answers' shape a user turn starts with, their
    OpenAI form as JSON (what the template shows: `ModelChoice.tools`), and the flags."""

    tools: dict[str, Any]
    constraint: Any
    listing: str
    flags: ToolFlags

    def consent(self, ui: Any) -> Any:
        from chatcli.tools.runner import Consent
        from chatcli.ui.tools import asker

        f = self.flags
        return Consent(f.allow_tools, set(f.allow_tool or ()), asker(ui))


def setup(flags: ToolFlags, model: str | None, base_url: str | None, models_file: Any,
          constraint: Any, raw: bool = False, alt: str | None = None) -> Toolset | None:
    """The flags checked and the tools loaded (`local_only`, `prepare`), or None."""
    f = flags
    if f.tool or f.tool_module or f.mcp:
        local_only(model, base_url, models_file)
    tools = prepare(f.tool, f.tool_module, f.choice, f.max_calls, f.timeout, constraint, raw,
                    alt, f.allow_tools or bool(f.allow_tool), f.mcp)
    if not tools:
        return None
    import json

    from chatcli.tools.calls import constraint as shape

    return Toolset(tools, shape(tools, f.choice or "auto"),
                   json.dumps([t.as_dict() for t in tools.values()]), flags)


def prepare(tool: list[str] | None, tool_module: list[str] | None, choice: str | None,
            max_calls: int, timeout: float, constraint: Any, raw: bool,
            alt: str | None, allow: bool, mcp: list[str] | None = None
            ) -> dict[str, Any] | None:
    if not (tool or tool_module or mcp):
        if allow or choice is not None:
            flag = "--tool-choice" if choice is not None else "--allow-tools"
            raise UsageError(f"{flag} goes with --tool, --tool-module or --mcp",
                             f"add --tool FILE.py, or drop {flag}")
        return None
    from chatcli.tools.calls import CHOICES
    from chatcli.tools.functions import toolbox

    if constraint is not None:
        raise UsageError("--tool shapes the answer itself (a call, or words), so it does not "
                         "go with --schema, --json-object, --regex, --grammar or --choice",
                         "drop one of them")
    if raw:
        raise UsageError("--tool needs the chat template: a raw completion has no system "
                         "prompt to say what the tools are", "drop --raw")
    if alt is not None:
        raise UsageError("--alt and --tool do not go together yet", "drop one of them")
    if choice is not None and choice not in CHOICES:
        raise UsageError(f"--tool-choice must be one of {', '.join(CHOICES)} (got {choice!r})",
                         "e.g. --tool-choice required")
    if max_calls < 1:
        raise UsageError(f"--max-tool-calls must be at least 1 (got {max_calls})",
                         "e.g. --max-tool-calls 8")
    if not timeout > 0:
        raise UsageError(f"--tool-timeout must be a number of seconds > 0 (got {timeout})",
                         "e.g. --tool-timeout 30")
    return toolbox(list(tool or []), list(tool_module or []), list(mcp or []), timeout)


def local_only(model: str | None, base_url: str | None, models_file: Any) -> None:
    """Tools run with local models for now: a server's alias (or --base-url) is refused
    in one line, before anything loads."""
    from chatcli.registry import load_registry

    if base_url is not None:
        raise served_model("--base-url")
    spec = load_registry(models_file).resolve(model)
    if spec.backend != "local":
        raise served_model(f"'{spec.alias}' (backend {spec.backend})")


def served_model(where: str) -> UsageError:
    """The refusal of tools with a server's model (`where`: the alias or --base-url)."""
    return UsageError(f"tools run with local models for now, and {where} is a server",
                      "use a local model (-m), or drop the tool flags")
