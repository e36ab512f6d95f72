"""The root `chatcli` command: wiring only, plus the one error formatter.

`main()` is the console-script entry point. It runs the Typer app and is the only
place that turns a `ChatcliError` (or a usage error from the parser) into one
`error: …; hint: …` line and an exit code. `CHATCLI_DEBUG=1` shows tracebacks.
SIGTERM and SIGHUP unwind like Ctrl-C (so partial answers are saved and the
terminal is restored) and exit with 128 + the signal number.
Typer's shell completion is on (`--install-completion`, `--show-completion`); a
shell's completion request (`_CHATCLI_COMPLETE=complete_bash …`) is answered by
`main()` too, before any command runs.
Nothing heavy is imported here: `chatcli --help` stays instant.
"""

from __future__ import annotations

import os
import sys

import typer

from chatcli.cli import ask, chat, compare, history, models, strategies

app = typer.Typer(
    name="chatcli",
    help="Chat with local language models, and see how they answer.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("ask")(ask.ask)
app.command("chat")(chat.chat)
app.command("compare")(compare.compare)
app.command("pull")(models.pull)
app.command("strategies")(strategies.strategies)
app.add_typer(models.app, name="models")
app.add_typer(history.app, name="history")


def _debug() -> bool:
    return os.environ.get("CHATCLI_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> None:
    from chatcli import interrupts
    from chatcli.errors import ChatcliError, OutputClosed
    from chatcli.ui.console import UI

    interrupts.install()
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="chatcli", standalone_mode=False)
    except ChatcliError as exc:
        if _debug():
            raise
        UI().error(exc.message, exc.hint)
        code = exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        print(file=sys.stderr)
        code = 130
    except typer.TyperException as exc:  # usage errors from the parser
        if _debug():
            raise
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "chatcli"
        UI().error(exc.format_message().rstrip("."), f"see '{where} --help'")
        code = getattr(exc, "exit_code", 2)
    except (OutputClosed, BrokenPipeError):
        # The reader went away (e.g. `| head -1`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 0
    if interrupts.received() is not None:  # typer answers any KeyboardInterrupt with 130
        code = 128 + interrupts.received()
    sys.exit(code if isinstance(code, int) else 0)
