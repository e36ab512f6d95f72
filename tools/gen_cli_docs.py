"""Write docs/cli.md from chatcli's own `--help`, or check that it is current.

A development tool, not part of the chatcli package. It walks the Typer app
(`chatcli.cli.app.app`) and renders every command's and sub-command's `--help`, in
the order `chatcli --help` lists them, one section each. The rendering is fixed so
the file is the same on every machine: a 100-column terminal (click wraps help at
78), no colour, built-in strategies only (`CHATCLI_NO_PLUGINS=1`), an empty
CHATCLI_HOME (no user's models.toml), and that folder and the home folder written as
`$CHATCLI_HOME` and `~` should any help text ever name them.

    python tools/gen_cli_docs.py            # rewrite docs/cli.md
    python tools/gen_cli_docs.py --check    # exit 1, naming the first stale command

`--check` prints one line on stderr and exits 1 when the file is missing or differs
from what the code renders now; `--output PATH` writes or checks another file.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "cli.md"
COLUMNS = 100
REGENERATE = "python tools/gen_cli_docs.py"

# Set before chatcli, typer or rich are imported: they read some of these once.
_FIXED_ENV = {
    "COLUMNS": str(COLUMNS),
    "LINES": "50",
    "TERM": "dumb",
    "NO_COLOR": "1",
    "CHATCLI_NO_PLUGINS": "1",
}
_UNSET_ENV = ("FORCE_COLOR", "CLICOLOR_FORCE", "TERMINAL_WIDTH", "TTY_COMPATIBLE",
              "TTY_INTERACTIVE", "_TYPER_FORCE_DISABLE_TERMINAL", "CHATCLI_DEBUG")

HEADER = f"""# Command-line reference

<!-- Generated from chatcli's --help by `{REGENERATE}`: do not edit by hand;
     tests/test_cli_docs.py fails when this file is stale. -->

Every chatcli command's `--help`, as printed on a terminal at least 80 columns wide
(`chatcli COMMAND --help` or `-h` shows the same text). After changing a command, an
option or its help, regenerate this file with `{REGENERATE}`.
"""


def fix_environment(home: Path) -> None:
    """Make help rendering independent of the caller's terminal, settings and models:
    `home` (an empty folder) becomes CHATCLI_HOME, so no user's models.toml is read."""
    os.environ.update(_FIXED_ENV, CHATCLI_HOME=str(home), HF_HUB_OFFLINE="1")
    for name in _UNSET_ENV:
        os.environ.pop(name, None)


def _commands(command: Any, path: list[str]) -> Iterator[tuple[list[str], Any]]:
    """(path, command) for `command` and every visible sub-command, depth first."""
    yield path, command
    if not hasattr(command, "list_commands"):
        return
    ctx = command.context_class(command, info_name=path[-1])
    for name in command.list_commands(ctx):
        sub = command.get_command(ctx, name)
        if sub is not None and not getattr(sub, "hidden", False):
            yield from _commands(sub, [*path, name])


def _normalise(text: str) -> str:
    text = text.replace(os.environ["CHATCLI_HOME"], "$CHATCLI_HOME")
    text = text.replace(str(Path.home()), "~")
    return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n") + "\n"


def _help(command: Any, path: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        command.main(args=[*path[1:], "--help"], prog_name=path[0], standalone_mode=False)
    return _normalise(out.getvalue())


def sections() -> list[tuple[str, str]]:
    """(command line, its --help text) for every command, in `chatcli --help` order."""
    import typer

    from chatcli.cli.app import app

    root = typer.main.get_command(app)
    return [(" ".join(path), _help(root, path)) for path, _ in _commands(root, ["chatcli"])]


def _anchor(title: str) -> str:
    return title.replace(" ", "-")


def render(parts: list[tuple[str, str]]) -> str:
    """The whole of docs/cli.md for these sections."""
    toc = "\n".join(f"- [`{title}`](#{_anchor(title)})" for title, _ in parts)
    body = "\n".join(f"## {title}\n\n```text\n{text}```\n" for title, text in parts)
    return f"{HEADER}\n{toc}\n\n{body}"


def _section_texts(document: str) -> dict[str, str]:
    """Each `## title` of a docs/cli.md and the text under it, up to the next one."""
    found: dict[str, str] = {}
    title = None
    for line in document.splitlines(keepends=True):
        if line.startswith("## "):
            title = line[3:].strip()
            found[title] = ""
        elif title is not None:
            found[title] += line
    return found


def first_difference(current: str, expected: list[tuple[str, str]]) -> str:
    """What is stale in `current`, in words: the first command whose section differs."""
    have = _section_texts(current)
    want = _section_texts(render(expected))
    for title, text in want.items():
        if title not in have:
            return f"'{title}' is missing"
        if have[title] != text:
            return f"'{title} --help' changed"
    for title in have:
        if title not in want:
            return f"'{title}' is no longer a command"
    return "its header or contents list changed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the file differs from the current --help texts")
    parser.add_argument("--output", type=Path, default=DOCS, help="default: docs/cli.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="chatcli-docs-") as home:
        fix_environment(Path(home))
        parts = sections()
    text = render(parts)
    target: Path = args.output.resolve()
    shown = str(target.relative_to(ROOT)) if target.is_relative_to(ROOT) else str(target)
    if not args.check:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        print(f"wrote {shown}: {len(parts)} commands")
        return 0
    if not target.is_file():
        print(f"error: {shown} does not exist; hint: run '{REGENERATE}'", file=sys.stderr)
        return 1
    current = target.read_text(encoding="utf-8")
    if current != text:
        what = first_difference(current, parts)
        print(f"error: {shown} is out of date: {what}; hint: run '{REGENERATE}'",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
