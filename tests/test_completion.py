"""Shell completion: `--show-completion`, `--install-completion` and the completion protocol.

Tests run without a parent shell to detect, so the shell is given explicitly
(Typer's `_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION` makes both options take a
SHELL value). Completion runs through chatcli's own `main()` in a subprocess, as a
shell would run it; HOME is a temporary folder, so nothing is installed for real.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BASH_SCRIPT = """\
_chatcli_completion() {
    local IFS=$'
'
    COMPREPLY=( $( env COMP_WORDS="${COMP_WORDS[*]}" \\
                   COMP_CWORD=$COMP_CWORD \\
                   _CHATCLI_COMPLETE=complete_bash $1 ) )
    return 0
}

complete -o default -F _chatcli_completion chatcli
"""

# Runs the real entry point, then says on stderr whether anything heavy was imported.
RUN_MAIN = (
    "import sys\n"
    "from chatcli.cli.app import main\n"
    "try:\n    main(sys.argv[1:])\n"
    "except SystemExit as exc:\n    code = exc.code\n"
    "else:\n    code = 0\n"
    "heavy = [m for m in ('torch', 'transformers', 'sqlite3') if m in sys.modules]\n"
    "print('heavy:', heavy, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def _run(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("_CHATCLI", "COMP_"))}
    full.update(HOME=str(home), CHATCLI_HOME=str(home / "chatcli"),
                _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1", **env)
    return subprocess.run([sys.executable, "-c", RUN_MAIN, *args], capture_output=True,
                          text=True, env=full, timeout=60)


def _complete(home: Path, words: str, cword: int) -> subprocess.CompletedProcess[str]:
    return _run(home, _CHATCLI_COMPLETE="complete_bash", COMP_WORDS=words, COMP_CWORD=str(cword))


def test_show_completion_prints_the_script_for_the_shell_given(tmp_path: Path) -> None:
    bash = _run(tmp_path, "--show-completion", "bash")
    assert (bash.returncode, bash.stderr) == (0, "heavy: []\n")
    assert bash.stdout == BASH_SCRIPT
    zsh = _run(tmp_path, "--show-completion", "zsh")
    assert zsh.returncode == 0
    assert zsh.stdout.startswith("#compdef chatcli\n")
    assert "_CHATCLI_COMPLETE=complete_zsh chatcli" in zsh.stdout
    assert zsh.stdout.endswith("compdef _chatcli_completion chatcli\n")


def test_completing_a_command_name(tmp_path: Path) -> None:
    result = _complete(tmp_path, "chatcli mod", 1)
    assert (result.returncode, result.stdout, result.stderr) == (0, "models\n", "heavy: []\n")
    assert _complete(tmp_path, "chatcli h", 1).stdout == "history\n"
    assert _complete(tmp_path, "chatcli models ", 2).stdout == "list\nshow\n"


def test_completing_options_and_choices(tmp_path: Path) -> None:
    options = _complete(tmp_path, "chatcli models list --j", 3)
    assert (options.returncode, options.stdout) == (0, "--json\n")
    choices = _complete(tmp_path, "chatcli history export 1 --format ", 5)
    assert (choices.returncode, choices.stdout) == (0, "md\njson\n")


def test_install_completion_for_bash(tmp_path: Path) -> None:
    result = _run(tmp_path, "--install-completion", "bash")
    script = tmp_path / ".bash_completions" / "chatcli.sh"
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"bash completion installed in {script}\n"
        "Completion will take effect once you restart the terminal\n"
    )
    assert script.read_text() == BASH_SCRIPT.rstrip("\n")
    assert (tmp_path / ".bashrc").read_text() == f"\nsource '{script}'\n"


def test_help_lists_the_completion_options(tmp_path: Path) -> None:
    result = _run(tmp_path, "--help")
    assert (result.returncode, result.stderr) == (0, "heavy: []\n")
    assert "--install-completion" in result.stdout
    assert "--show-completion" in result.stdout
