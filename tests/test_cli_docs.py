"""docs/cli.md is chatcli's `--help`, current: the snapshot of every command's help.

`tools/gen_cli_docs.py` writes docs/cli.md from the Typer app; these tests run it as a
developer or CI would and fail, naming the command to run, when the file is stale (a
flag or help text changed without regenerating it). The rendering must not depend on
the caller's terminal width, colour settings, CHATCLI_HOME, home folder or plugins.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "gen_cli_docs.py"
DOCS = ROOT / "docs" / "cli.md"
REGENERATE = "python tools/gen_cli_docs.py"


def run_tool(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(TOOL), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def hostile_env(tmp_path: Path) -> dict[str, str]:
    """An environment that would change the help text if the tool did not fix it."""
    env = dict(os.environ)
    env.pop("CHATCLI_NO_PLUGINS", None)
    home = tmp_path / "user home"
    (home / "chatcli").mkdir(parents=True)
    (home / "chatcli" / "models.toml").write_text(
        'default = "mine"\n[models.mine]\nsource = "path"\npath = "/nowhere"\n')
    env.update(COLUMNS="43", LINES="7", FORCE_COLOR="1", CLICOLOR_FORCE="1", TERM="xterm-256color",
               TERMINAL_WIDTH="51", CHATCLI_HOME=str(home / "chatcli"), HOME=str(home),
               SHELL="/bin/zsh", CHATCLI_DEBUG="1", OMP_NUM_THREADS="7")
    return env


def test_docs_cli_md_is_current() -> None:
    result = run_tool("--check")
    assert result.returncode == 0, (
        f"{result.stderr.strip()}\ndocs/cli.md no longer matches chatcli's --help: "
        f"run '{REGENERATE}' and commit docs/cli.md")
    assert (result.stdout, result.stderr) == ("", "")


def test_docs_do_not_depend_on_terminal_colour_home_or_plugins(tmp_path: Path) -> None:
    result = run_tool("--check", env=hostile_env(tmp_path))
    assert (result.returncode, result.stderr) == (0, "")


def test_docs_have_one_section_per_command_in_help_order() -> None:
    titles = [line[3:] for line in DOCS.read_text().splitlines() if line.startswith("## ")]
    assert titles == [
        "chatcli", "chatcli ask", "chatcli chat", "chatcli compare", "chatcli pull",
        "chatcli compile",
        "chatcli strategies", "chatcli serve", "chatcli models", "chatcli models list",
        "chatcli models show",
        "chatcli history", "chatcli history list", "chatcli history show",
        "chatcli history export", "chatcli history rm",
    ]


def test_sections_are_what_the_real_entry_point_prints() -> None:
    env = {**os.environ, "COLUMNS": "100", "CHATCLI_NO_PLUGINS": "1"}
    printed = subprocess.run([sys.executable, "-m", "chatcli", "history", "export", "--help"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.startswith("Usage: chatcli history export [OPTIONS] ")
    section = DOCS.read_text().split("## chatcli history export\n\n```text\n", 1)[1]
    assert section.split("```\n", 1)[0] == printed.stdout


def test_check_names_the_first_stale_command(tmp_path: Path) -> None:
    stale = tmp_path / "cli.md"
    text = DOCS.read_text()
    assert text.count("  -n, --limit ") == 1  # only `history list` has it
    stale.write_text(text.replace("  -n, --limit ", "  -n, --last  "))
    result = run_tool("--check", "--output", str(stale))
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"error: {stale} is out of date: 'chatcli history list --help' changed; "
        f"hint: run '{REGENERATE}'\n")


def test_check_names_a_missing_command_and_a_missing_file(tmp_path: Path) -> None:
    stale = tmp_path / "cli.md"
    text = DOCS.read_text()
    start = text.index("## chatcli pull\n")
    stale.write_text(text[:start] + text[text.index("## chatcli strategies\n"):])
    result = run_tool("--check", "--output", str(stale))
    assert (result.returncode, result.stderr) == (
        1, f"error: {stale} is out of date: 'chatcli pull' is missing; "
           f"hint: run '{REGENERATE}'\n")
    absent = tmp_path / "none.md"
    result = run_tool("--check", "--output", str(absent))
    assert (result.returncode, result.stderr) == (
        1, f"error: {absent} does not exist; hint: run '{REGENERATE}'\n")


def test_generating_writes_a_file_that_checks_clean(tmp_path: Path) -> None:
    target = tmp_path / "docs" / "cli.md"
    written = run_tool("--output", str(target))
    assert (written.returncode, written.stdout, written.stderr) == (
        0, f"wrote {target}: 16 commands\n", "")
    assert target.read_text() == DOCS.read_text()
    assert run_tool("--check", "--output", str(target)).returncode == 0
