"""`chatcli chat`: piped turns, history, KV-cache reuse, and the real REPL in a pty."""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from chatcli.chat.session import ChatSession, DecodingRequest
from chatcli.conversation import Conversation
from chatcli.decoding.registry import strategy_registry
from chatcli.loader import load_model
from chatcli.progress import SilentReporter
from chatcli.registry import load_registry
from chatcli.runtime import Runtime
from conftest import Tiny, printed, reference_generate, run_cli
from screen import default_signals


def greedy_reply(tiny: Tiny, messages: list[dict[str, str]], n: int) -> str:
    tok, out, _ = reference_generate(tiny, messages, max_new_tokens=n)
    new = out[0].tolist()
    if tok.eos_token_id in new:
        new = new[: new.index(tok.eos_token_id)]
    return tok.decode(new, skip_special_tokens=True)


def stored(home: Path) -> list[tuple[Any, ...]]:
    """Each conversation's current path (root to leaf): what chat -c continues."""
    with sqlite3.connect(home / "data" / "history.db") as db:
        return db.execute(
            "WITH RECURSIVE path(id) AS (SELECT leaf_id FROM conversations WHERE leaf_id IS NOT "
            "NULL UNION ALL SELECT m.parent_id FROM messages AS m JOIN path ON m.id = path.id "
            "WHERE m.parent_id IS NOT NULL) "
            "SELECT conversation_id, role, content, interrupted FROM messages "
            "WHERE id IN (SELECT id FROM path) ORDER BY conversation_id, position"
        ).fetchall()


def every(home: Path) -> list[tuple[Any, ...]]:
    """Every message of every branch, in the order written."""
    with sqlite3.connect(home / "data" / "history.db") as db:
        return db.execute(
            "SELECT conversation_id, role, content, interrupted FROM messages ORDER BY id"
        ).fetchall()


def test_piped_lines_are_turns_and_saved(cli, tiny_model: Tiny, home: Path) -> None:
    r1 = greedy_reply(tiny_model, [{"role": "user", "content": "Hi"}], 10)
    r2 = greedy_reply(tiny_model, [{"role": "user", "content": "Hi"},
                                   {"role": "assistant", "content": r1},
                                   {"role": "user", "content": "What did I just say?"}], 10)
    result = run_cli(["chat", "-n", "10"], input="Hi\nWhat did I just say?\n")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == printed(r1) + printed(r2)
    assert result.stderr == ""
    assert stored(home) == [(1, "user", "Hi", 0), (1, "assistant", r1, 0),
                            (1, "user", "What did I just say?", 0), (1, "assistant", r2, 0)]
    # `chat -c` resumes it; `ask -c` continues it too.
    again = run_cli(["chat", "-c", "-n", "4"], input="/exit\n")
    assert again.stderr == "chatcli: continuing conversation 1 (4 messages)\n"
    assert again.stdout.startswith(f"> Hi\n{printed(r1)}> What did I just say?\n")
    asked = run_cli(["ask", "-c", "-n", "4", "And now?"])
    assert asked.exit_code == 0
    assert [row[:2] for row in stored(home)][-2:] == [(1, "user"), (1, "assistant")]
    assert len(stored(home)) == 6


def test_dropped_turns_warn_and_show_in_context(cli, home: Path) -> None:
    lines = "".join(f"Tell me about topic number {i} please\n" for i in range(6))
    result = run_cli(["chat", "--context-window", "120", "-n", "24"], input=lines + "/context\n")
    assert result.exit_code == 0, result.stderr
    warnings = [w for w in result.stderr.splitlines() if w.startswith("warning: context window")]
    assert warnings and all("/context shows what the model sees" in w for w in warnings)
    table = result.stdout.splitlines()
    assert any(line.split()[-1:] == ["dropped"] for line in table)
    footer = [line for line in table if line.startswith("prompt ")][-1]
    assert "(context window 120 - max new tokens 24)" in footer
    kept = int(footer.split()[1])
    assert kept <= 96


def test_no_truncate_refuses_long_message(cli) -> None:
    result = run_cli(["chat", "--no-truncate", "--context-window", "64", "-n", "16"],
                     input=("word " * 80) + "\n")
    assert "error: the newest message needs " in result.stderr
    assert result.exit_code == 1  # the message is kept in history; piped: the turn failed


def test_slash_commands(cli, tmp_path: Path) -> None:
    out = tmp_path / "chat.json"
    script = "\n".join([
        "/help", "/sytem be brief", "/set top_p 0.5", "/strategy sample", "/set top_p 2",
        "/set top_p 0.5", "/system Be brief.", "Hi", "/prompt", "/stats", f"/save {out}",
        "/undo", "/undo", f"/load {out}", "/exit", "never sent",
    ]) + "\n"
    result = run_cli(["chat", "-n", "6", "--seed", "1"], input=script)
    assert result.exit_code == 0
    err = result.stderr.splitlines()
    assert err[0] == ("error: unknown command '/sytem'; hint: did you mean /system? "
                      "/help lists the commands")
    assert err[1] == ("error: /set top_p: strategy 'greedy' has no parameter 'top_p'; "
                      "hint: use /strategy sample first")
    assert err[2] == "chatcli: strategy = sample"
    assert err[3] == ("error: /set top_p 2: top_p must be in (0, 1]; "
                      "hint: 'chatcli strategies' lists every parameter")
    assert err[4:] == [
        "chatcli: top_p = 0.5", "chatcli: system prompt set",
        f"chatcli: saved to {out}", "chatcli: removed the last exchange (2 messages)",
        "chatcli: nothing to undo", f"chatcli: loaded 2 messages from {out}",
    ]
    assert result.stdout.startswith("/help           this list\n/system TEXT    set the ")
    assert "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n" \
           "<|im_start|>assistant\n" in result.stdout
    assert "strategy=sample seed=1 " in result.stdout


def test_candidates_command(cli) -> None:
    result = run_cli(["chat", "-n", "3"], input="/candidates 2\nHi\n/candidates 0\nHi\n")
    assert result.stderr == "chatcli: candidates = 2\nchatcli: candidates = 0 (off)\n"
    assert sum(line.startswith("step ") for line in result.stdout.splitlines()) == 1


def _session(home: Path, reuse: bool, window: int) -> ChatSession:
    import dataclasses

    spec = dataclasses.replace(load_registry().resolve("tiny"), context_window=window)
    loaded = load_model(spec, Runtime("cpu", "float32", 1), SilentReporter())
    return ChatSession(loaded, strategy_registry(),
                       DecodingRequest("greedy", {"max_new_tokens": 12}), Conversation(),
                       reuse_cache=reuse)


@pytest.mark.parametrize("window", [256, 110])
def test_cache_reuse_is_token_identical(home: Path, window: int) -> None:
    runs = {}
    reused = []
    for reuse in (True, False):
        session = _session(home, reuse, window)
        replies = []
        for i in range(7):
            session.add_user(f"Question {i}: what about the fox?")
            gen, _ = session.start_reply()
            for _ in gen:
                pass
            replies.append(gen.token_ids)
            if reuse:
                reused.append(session.cache.reused)
            session.finish_reply(gen)
        runs[reuse] = replies
    assert runs[True] == runs[False]
    assert reused[0] == 0 and reused[1] > 20  # turn 2 prefilled only the new suffix
    if window == 110:
        # A dropped turn changes the prompt right after its first tokens: only the
        # shared head ("<|im_start|>user\nQuestion ") is reused, the rest is rebuilt.
        assert min(reused[2:]) < 16


# -- the real REPL in a pseudo-terminal ---------------------------------------------

pexpect = pytest.importorskip("pexpect")


@pytest.fixture(scope="module")
def slow_model(tiny_model: Tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wider model with a long context, so that an answer takes seconds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("slow-model")
    for name in os.listdir(tiny_model.folder):
        if name.startswith(("tokenizer", "chat_template", "special")):
            shutil.copy(tiny_model.folder / name, folder / name)
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=400, hidden_size=256, intermediate_size=768,
                         num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=8192, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
        model.lm_head.weight[2].zero_()  # EOS logit 0: never the argmax, the answer runs on
    model.save_pretrained(folder)
    return folder


def spawn(home: Path, *args: str) -> Any:
    env = dict(os.environ, CHATCLI_HOME=str(home), TERM="xterm", COLUMNS="100",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    child = pexpect.spawn(sys.executable, ["-m", "chatcli", "chat", *args], env=env,
                          encoding="utf-8", codec_errors="replace", timeout=120,
                          dimensions=(40, 100), preexec_fn=default_signals)
    return child


def test_repl_in_a_terminal(home: Path, slow_model: Path) -> None:
    with (home / "models.toml").open("a") as f:
        f.write(f'\n[models.slow]\nsource = "path"\npath = "{slow_model}"\ndtype = "float32"\n')
    child = spawn(home, "-m", "slow", "-n", "6000")
    child.expect("/help for commands")
    child.expect("›")
    child.send("typed but abandoned")
    child.sendintr()  # Ctrl-C at the prompt clears the line
    child.expect("›")
    child.sendline("Hello")
    child.expect(r"Hello\S*\r\r\n")
    child.expect(r"\S")  # the answer has begun (on a busy machine, seconds later)
    time.sleep(1)  # it streams for many seconds
    child.sendintr()  # Ctrl-C mid-answer stops only the answer
    child.expect("answer interrupted; the partial reply is kept in the history")
    child.expect("›")
    child.sendline("/context")
    child.expect(r"assistant\W+\d+\W+kept")
    child.expect("›")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    rows = stored(home)
    assert [(r[1], r[3]) for r in rows] == [("user", 0), ("assistant", 1)]
    assert rows[0][2] == "Hello" and rows[1][2]

    child = spawn(home, "-c", "-n", "8")
    child.expect("continuing conversation 1")
    child.expect("> Hello")
    child.expect("›")
    child.sendline("/undo")
    child.expect(r"removed the last exchange \(2 messages\)")
    child.expect("›")
    # Each entry is read only after the previous one is done, so /stats output marks the
    # end of an answer (a bare prompt glyph could match the echo of the line just sent).
    child.sendline("Again")
    child.sendline("/stats")
    child.expect(r"completion_tokens=\d+")
    child.sendline("/retry")
    child.sendline("/stats")
    child.expect(r"completion_tokens=\d+")
    child.expect("›")
    child.sendeof()  # Ctrl-D leaves
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert stored(home)[0][1:3] == ("user", "Again")
    assert [r[1] for r in stored(home)] == ["user", "assistant"]
    # /retry kept the first answer, a second version of it
    assert [r[1] for r in every(home)] == ["user", "assistant", "assistant"]
    assert stored(home)[1] == every(home)[2]
