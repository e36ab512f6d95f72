"""The root `chatcli` command: wiring only, plus the one error formatter.

`main()` is the console-script entry point. It runs the Typer app and is the only
place that turns a `ChatcliError` (or a usage error from the parser) into one
`error: …; hint: …` line and an exit code. `CHATCLI_DEBUG=1` shows tracebacks.
SIGTERM and SIGHUP unwind like Ctrl-C (so partial answers are saved and the
terminal is restored) and exit with 128 + the signal number. Ctrl-C while a model
loads is held until the step ends (`chatcli.interrupts.deferred`), then one line says
so ("warning: interrupted while loading the model") and the exit code is 130.
Typer's shell completion is on (`--install-completion`, `--show-completion`); a
shell's completion request (`_CHATCLI_COMPLETE=complete_bash …`) is answered by
`main()` too, before any command runs.
Nothing heavy is imported here: `chatcli --help` stays instant.

Fast exit: run as a program (`main()` with no arguments: the console script and
`python -m chatcli`), a command that returned normally after loading torch ends the
process with `os._exit` and skips the interpreter's teardown (~0.3 s of freeing torch's
modules and objects). By then every history write is committed (the store commits each
one before returning; the recorder is closed in the command's `finally`) and the
terminal is restored; what is skipped is only freeing memory. The atexit handlers still
run, stdout and stderr are flushed first, and the exit code is the one `sys.exit` would
give. It is skipped — the ordinary exit happens — when `main(argv)` is called with
arguments (tests, embedding), on any error or interrupt path, when a non-daemon thread
is still running, when a flush fails (e.g. a reader that went away: reported as
before), and when `CHATCLI_NO_FAST_EXIT=1`.
"""

from __future__ import annotations

import os
import sys

import typer

from chatcli.cli import ask, chat, compare, history, models, serve, strategies

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
app.command("compile")(models.compile_step)
app.command("strategies")(strategies.strategies)
app.command("serve")(serve.serve)
app.add_typer(models.app, name="models")
app.add_typer(history.app, name="history")


def _debug() -> bool:
    return os.environ.get("CHATCLI_DEBUG", "") not in ("", "0")


def _fast_exit_allowed() -> bool:
    if os.environ.get("CHATCLI_NO_FAST_EXIT", "") not in ("", "0"):
        return False
    if "torch" not in sys.modules:  # nothing slow to tear down
        return False
    import threading

    main_thread = threading.main_thread()
    return not any(t.is_alive() and not t.daemon and t is not main_thread
                   for t in threading.enumerate())


def _exit_now(code: int) -> None:
    """End the process with `code` without the interpreter's teardown, if it is safe;
    return (and let the caller exit the ordinary way) if it is not."""
    import atexit

    if not _fast_exit_allowed():
        return
    try:
        _flush()
    except (OSError, ValueError):  # a closed pipe: the ordinary exit reports it as before
        return
    atexit._run_exitfuncs()  # what others registered still runs (logging, coverage); once
    try:
        _flush()
    except (OSError, ValueError):
        return
    os._exit(code)


def _flush() -> None:
    sys.stdout.flush()
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> None:
    from chatcli import interrupts
    from chatcli.errors import ChatcliError, OutputClosed
    from chatcli.ui.console import UI

    interrupts.install()
    command = typer.main.get_command(app)
    normal = False
    try:
        code = command.main(args=argv, prog_name="chatcli", standalone_mode=False)
        normal = True
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
        normal = False
    elif interrupts.interrupted_during() is not None:  # Ctrl-C held until a step ended
        ui = UI()
        if ui.err_tty:
            print(file=sys.stderr)  # the line the terminal echoed ^C on
        ui.warn(f"interrupted while {interrupts.interrupted_during()}")
        code, normal = 130, False
    if "chatcli.serve.client" in sys.modules:  # the resident server's model is free again
        from chatcli.serve.client import close_all

        close_all()
    if "chatcli.tools.mcp" in sys.modules:  # --mcp servers end with the command
        from chatcli.tools import mcp

        mcp.close_all()
    code = code if isinstance(code, int) else 0
    if normal and argv is None:
        _exit_now(code)
    sys.exit(code)
