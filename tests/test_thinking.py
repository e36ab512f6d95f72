"""Reasoning models: the thinking switch, thinking split from the answer, and its budget.

A random-weight model whose tokenizer has Qwen3's `<think>` / `</think>` added tokens
carries Qwen3's real chat template (tests/data/templates) as alias `qwen3`, and an
R1-style template whose generation prompt opens the block as alias `r1`. Random
weights never think on their own: a constraint makes the answer think (a block, then
words), and the R1-style prompt starts inside the block, which --thinking-budget ends.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from chatcli.conversation import Message
from chatcli.thinking import ThinkingFormat, ThinkingSplitter, format_of, template_switch
from conftest import QWEN3, run_cli

# DeepSeek-R1's distills open the block in the generation prompt and drop earlier turns'
# thinking themselves.
R1 = ("{% for m in messages %}{% if m.role == 'user' %}<|im_start|>user\n{{ m.content }}"
      "<|im_end|>\n{% elif m.role == 'assistant' %}{% set c = m.content %}"
      "{% if '</think>' in c %}{% set c = c.split('</think>')[-1] %}{% endif %}"
      "<|im_start|>assistant\n{{ c }}<|im_end|>\n{% endif %}{% endfor %}"
      "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}")


@pytest.fixture
def thinking_home(home: Path, thinker: Path) -> Path:
    toml = home / "models.toml"
    toml.write_text(toml.read_text() + f'\n[models.qwen3]\nsource = "path"\npath = "{thinker}"\n'
                    f'dtype = "float32"\n\n[models.r1]\nsource = "path"\npath = "{thinker}"\n'
                    f'dtype = "float32"\nchat_template = {json.dumps(R1)}\n')
    return home


def ask_json(*args: str) -> dict[str, Any]:
    result = run_cli(["ask", "--json", "--no-server", *args])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


# -- the splitter ---------------------------------------------------------------------------
def split(text: str, fmt: ThinkingFormat, step: int) -> tuple[str, str, int]:
    splitter = ThinkingSplitter(fmt)
    thought = said = ""
    for i in range(0, len(text), step):
        t, s = splitter.feed(text[i:i + step])
        thought, said = thought + t, said + s
    t, s = splitter.flush()
    return thought + t, said + s, splitter.thought


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
@pytest.mark.parametrize(("text", "inside", "thought", "said"), [
    ("<think>\nweigh it\n</think>\n\nThe answer.", False, "weigh it", "The answer."),
    ("<think>\na\n\nb\n\n</think>c", False, "a\n\nb", "c"),
    ("  <think>a</think>b", False, "a", "b"),
    ("weigh it\n</think>\n\nThe answer.", True, "weigh it", "The answer."),
    ("No thinking, and <think> later is text.", False, "", "No thinking, and <think> later is "
     "text."),
    ("<thin>k", False, "", "<thin>k"),
    ("<think>cut short", False, "cut short", ""),
    ("<think>\n</thi", False, "</thi", ""),
    ("", False, "", ""),
])
def test_the_splitter_gives_the_same_parts_however_the_text_arrives(
        text: str, inside: bool, thought: str, said: str, step: int) -> None:
    got = split(text, ThinkingFormat(inside=inside), step)
    assert got[:2] == (thought, said)
    assert got[2] == (inside or text.lstrip().startswith("<think>"))


def test_a_template_with_a_think_block_has_a_format() -> None:
    assert format_of(QWEN3, "<|im_start|>assistant\n") == ThinkingFormat(inside=False)
    assert format_of(R1, "<|im_start|>assistant\n<think>\n") == ThinkingFormat(inside=True)
    assert format_of("{{ messages }}", "") is None
    assert template_switch("{{ messages }}", True) is None


# -- the switch: rendered as transformers renders it -----------------------------------------
CONVERSATION = [Message("system", "Be brief."), Message("user", "Hi"),
                Message("assistant", "<think>\ngreet\n</think>\n\nHello!"),
                Message("user", "And 2+2?")]


@pytest.mark.parametrize("think", [None, True, False])
def test_the_switch_renders_as_transformers_renders_enable_thinking(
        thinker: Path, think: bool | None) -> None:
    from transformers import AutoTokenizer

    from chatcli.lm.tokenizer import ChatTokenizer
    from chatcli.prompt import render_text

    hf = AutoTokenizer.from_pretrained(thinker)
    kwargs = {} if think is None else {"enable_thinking": think}
    want = hf.apply_chat_template([m.as_dict() for m in CONVERSATION], tokenize=False,
                                  add_generation_prompt=True, **kwargs)
    ours = ChatTokenizer.from_folder(thinker)
    if think is not None:
        ours.chat_template = template_switch(QWEN3, think)
    assert render_text(ours, CONVERSATION) == want
    assert want.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n" if think is False
                         else "<|im_start|>assistant\n")
    assert "greet" not in want  # Qwen3 drops the thinking of turns before the last question


def test_no_think_reaches_the_prompt_and_a_template_without_a_switch_is_refused(
        thinking_home: Path) -> None:
    shown = run_cli(["chat", "--no-server", "-m", "qwen3", "--no-think", "-n", "2"],
                    input="Hi\n/prompt\n")
    assert shown.exit_code == 0, shown.stderr
    assert "<|im_start|>assistant\n<think>\n\n</think>\n\n" in shown.stdout
    refused = run_cli(["ask", "--no-server", "--no-think", "-n", "2", "hi"])
    assert (refused.exit_code, refused.stderr) == (2, (
        "error: --no-think: the chat template of 'tiny' has no thinking switch "
        "(enable_thinking); hint: drop --no-think: this model thinks as its template says\n"))


# -- the answer: thinking apart --------------------------------------------------------------
THINK_THEN_SAY = ["--regex", "<think>[a-z ]{12}</think>[a-z]{6}", "-n", "60"]


def test_thinking_is_split_from_the_answer_in_json_history_and_stats(
        thinking_home: Path, thinker: Path) -> None:
    from transformers import AutoTokenizer

    out = ask_json("-m", "qwen3", *THINK_THEN_SAY, "hi")
    whole = AutoTokenizer.from_pretrained(thinker).decode(out["token_ids"],
                                                          skip_special_tokens=True)
    found = re.fullmatch(r"<think>([a-z ]{12})</think>([a-z]{6})", whole)
    assert found, whole
    assert (out["thinking"], out["text"]) == (found[1], found[2])
    assert 0 < out["thinking_tokens"] < out["completion_tokens"]
    assert out["thinking_budget_hit"] is False
    saved = json.loads(run_cli(["history", "export", "1", "--format", "json"]).stdout)
    reply = saved["messages"][-1]
    assert reply["content"] == found[2]
    assert reply["meta"]["params"]["thinking"] == found[1]
    assert reply["meta"]["params"]["thinking_tokens"] == out["thinking_tokens"]
    stats = run_cli(["ask", "--no-server", "--stats", "-m", "qwen3", *THINK_THEN_SAY, "hi"])
    assert (f"thinking_tokens={out['thinking_tokens']} answer_tokens="
            f"{out['completion_tokens'] - out['thinking_tokens']} ") in stats.stderr


def test_piped_output_is_the_answer_unless_the_thinking_is_asked_for(
        thinking_home: Path) -> None:
    out = ask_json("-m", "qwen3", *THINK_THEN_SAY, "hi")
    plain = run_cli(["ask", "--no-server", "-m", "qwen3", *THINK_THEN_SAY, "hi"])
    assert (plain.exit_code, plain.stdout) == (0, out["text"] + "\n")
    shown = run_cli(["ask", "--no-server", "--show-thinking", "-m", "qwen3", *THINK_THEN_SAY,
                     "hi"])
    assert shown.stdout == f"<think>\n{out['thinking']}\n</think>\n\n{out['text']}\n"
    both = run_cli(["ask", "--hide-thinking", "--show-thinking", "hi"])
    assert (both.exit_code, both.stderr) == (2, "error: --hide-thinking and --show-thinking "
                                                "contradict each other; hint: use one of them\n")


# -- the budget ------------------------------------------------------------------------------
def test_the_budget_closes_the_thinking_and_the_model_answers(
        thinking_home: Path, thinker: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(thinker)
    forced = tok("\n</think>\n\n", add_special_tokens=False)["input_ids"]
    free = ask_json("-m", "r1", "-n", "12", "hi")
    assert free["thinking_tokens"] == free["completion_tokens"]  # it never closes alone
    out = ask_json("-m", "r1", "--thinking-budget", "3", "-n", "12", "hi")
    ids = out["token_ids"]
    assert ids[:3] == free["token_ids"][:3]  # the same thinking up to the budget
    assert ids[3:3 + len(forced)] == forced  # then chatcli's close, token by token
    assert out["thinking_budget_hit"] is True
    assert out["thinking"] == tok.decode(ids[:3]).strip("\n")
    assert out["text"] == tok.decode(ids[3 + len(forced):], skip_special_tokens=True).lstrip()
    assert out["thinking_tokens"] == 3 + forced.index(tok.convert_tokens_to_ids("</think>")) + 1
    noted = run_cli(["ask", "--no-server", "-m", "r1", "--thinking-budget", "3", "-n", "12",
                     "hi"])
    assert "chatcli: thinking reached its budget of 3 tokens: chatcli closed it, and the " \
           "model answered\n" in noted.stderr
    assert noted.stdout == out["text"] + "\n"


@pytest.mark.parametrize(("args", "error"), [
    (["-m", "r1", "-S", "beam"], "error: --thinking-budget ends one answer's thinking, and "
     "strategy 'beam' searches several at once; hint: use --strategy greedy or sample with it\n"),
    (["-m", "r1", "--regex", "[a-z]+"], "error: --thinking-budget and a constraint do not go "
     "together yet: the constraint shapes the whole answer, thinking included; hint: drop one "
     "of them\n"),
    ([], "error: --thinking-budget: 'tiny' does not think (its chat template has no <think> "
     "block); hint: drop --thinking-budget\n"),
])
def test_a_budget_that_cannot_apply_is_one_line(thinking_home: Path, args: list[str],
                                                error: str) -> None:
    result = run_cli(["ask", "--no-server", "--thinking-budget", "2", "-n", "4", *args, "hi"])
    assert (result.exit_code, result.stderr) == (2, error)


# -- on a terminal ---------------------------------------------------------------------------
@pytest.mark.parametrize("hide", [False, True])
def test_a_terminal_shows_the_thinking_dim_and_apart_unless_hidden(
        thinking_home: Path, hide: bool) -> None:
    from screen import Terminal

    out = ask_json("-m", "qwen3", *THINK_THEN_SAY, "hi")
    flags = ["--hide-thinking"] if hide else []
    term = Terminal(thinking_home, ["ask", "--no-server", "-m", "qwen3", *flags,
                                    *THINK_THEN_SAY, "hi"], columns=50)
    assert term.finish() == 0
    lines = term.lines()
    if hide:
        assert lines == [out["text"], f"(thought for {out['thinking_tokens']} tokens: "
                                      "--hide-thinking)"]
        return
    assert lines == ["Thinking", out["thinking"].strip(), "─" * 50, out["text"]]
    dim = term.raw.index(b"\x1b[2m")  # the thought is written dim, before the answer
    assert dim < term.raw.index(out["thinking"].strip().encode()) < term.raw.rindex(
        out["text"].encode())


def test_a_served_answer_thinks_as_one_made_here(thinking_home: Path) -> None:
    from test_serve import start_server, stop, without_timing

    served = start_server(thinking_home)
    try:
        for args in (["-m", "r1", "--thinking-budget", "3", "-n", "12"],
                     ["-m", "qwen3", *THINK_THEN_SAY]):
            result = run_cli(["ask", "--json", *args, "hi"])
            assert result.exit_code == 0, result.stderr
            here = ask_json(*args, "hi")
            assert without_timing(json.loads(result.stdout), False) == without_timing(here,
                                                                                      False)
            assert here["thinking_tokens"]
        assert served.text().count("answered") == 2
    finally:
        stop(served)


def test_history_show_quotes_the_thinking_before_the_answer(thinking_home: Path) -> None:
    out = ask_json("-m", "qwen3", *THINK_THEN_SAY, "hi")
    shown = run_cli(["history", "show", "1"]).stdout
    assert (f"## Assistant\n\n> *Thinking ({out['thinking_tokens']} tokens)*\n>\n"
            f"> {out['thinking'].rstrip()}\n\n{out['text']}\n") in shown


# -- a server that parses the thinking out ---------------------------------------------------
def test_a_servers_reasoning_content_is_thinking_too(home: Path) -> None:
    from screen import add_script_alias, script_server

    with script_server("The answer is 4.", reasoning="Two and two\nmake four.") as server:
        add_script_alias(home, server)
        out = json.loads(run_cli(["ask", "--json", "-m", "script", "2+2?"]).stdout)
        assert (out["text"], out["thinking"]) == ("The answer is 4.", "Two and two\nmake four.")
        assert out["thinking_tokens"] == 5  # one per streamed piece (word)
        piped = run_cli(["ask", "-m", "script", "--show-thinking", "2+2?"])
        assert piped.stdout == "<think>\nTwo and two\nmake four.\n</think>\n\nThe answer is 4.\n"
        chat = run_cli(["chat", "-m", "script"], input="2+2?\n/stats\n")
        assert chat.stdout.startswith("The answer is 4.\n")
        assert "thinking_tokens=5 " in chat.stdout


def test_compare_compares_the_answers_with_their_thinking_apart(thinking_home: Path) -> None:
    out = ask_json("-m", "qwen3", *THINK_THEN_SAY, "hi")
    result = run_cli(["compare", "--json", "--no-server", "-m", "qwen3", "-S", "greedy",
                      *THINK_THEN_SAY, "hi"])
    assert result.exit_code == 0, result.stderr
    [greedy] = json.loads(result.stdout)["results"]
    assert (greedy["text"], greedy["thinking"]) == (out["text"], out["thinking"])


def test_the_road_not_taken_at_a_thinking_step_thinks_again(thinking_home: Path) -> None:
    args = ["-m", "r1", "--thinking-budget", "3", "-n", "12"]
    first = ask_json(*args, "hi")
    other = ask_json(*args, "--alt", "2:2", "hi")
    assert other["alternative"]["original_token_id"] == first["token_ids"][1]
    assert other["token_ids"][0] == first["token_ids"][0]
    assert other["token_ids"][1] != first["token_ids"][1]
    assert other["thinking_budget_hit"] is True and other["thinking_tokens"] >= 3
    assert other["thinking"] != first["thinking"]
