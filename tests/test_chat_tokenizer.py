"""ChatTokenizer against transformers' AutoTokenizer on the same folders, output for output.

Every folder is built here in a second, without network: a byte-level BPE trained by `tokenizers`
on a few sentences (non-ASCII text and emoji included) with ChatML special tokens, saved by
transformers' `save_pretrained`, plus hand-edited variants that exercise the rarer loading paths
(a post-processor that adds tokens, an absent one, special tokens missing from the vocabulary,
model-specific and extra special tokens, legacy special_tokens_map.json / added_tokens.json,
padding and truncation stored in tokenizer.json, named template lists, split_special_tokens).
Each is compared on rendered chat templates, token ids, decoded text, ids to tokens, `len()`, the
special-token attributes and `all_special_ids`; hypothesis supplies the strings and id lists.

The `slow` test repeats the comparisons on a real model folder named by the environment variable
CHATCLI_TEST_REAL_TOKENIZER (skipped when it is unset).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatcli.lm.tokenizer import ChatTokenizer, supports
from conftest import train_byte_level_bpe

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "Hello world! How are you today? I'm fine, thanks.",
    "The quick brown fox jumps over the lazy dog, doesn't it?",
    "Grüße aus Köln: naïve café, smørrebrød, Ærø.",
    "日本語のテキストと中文字符，还有한국어.",
    "Emoji 😀🎉👍🏽 and flags 🇫🇷 appear too.",
    "def add(a, b):\n    return a + b\n",
    "system user assistant: what is the answer? The answer is 42.",
]
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# bos_token, raise_exception, loop controls, tojson, namespace, whitespace control, a default
# system message as in SmolLM2's template, reasoning fields and a model-specific special token.
RICH = """{{ bos_token }}
{%- set ns = namespace(turns=0) %}
{%- for message in messages %}
    {%- if message['role'] not in ['system', 'user', 'assistant'] %}
        {{- raise_exception('Unknown role: ' + message['role']) }}
    {%- endif %}
    {%- if loop.first and messages[0]['role'] != 'system' %}
{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM<|im_end|>\n' }}
    {%- endif %}
    {%- if message['content'] == 'SKIP' %}{% continue %}{% endif %}
    {%- if message['content'] == 'STOP' %}{% break %}{% endif %}
    {%- set ns.turns = ns.turns + 1 %}
<|im_start|>{{ message['role'] }}
{% if message.reasoning_content is defined %}<think>{{ message.reasoning_content }}</think>
{% endif %}
{{- message['content'] }}
    {%- if message.get('meta') %} {{ message['meta'] | tojson }}{% endif %}
<|im_end|>
{% endfor %}
{%- if image_token is defined %}[{{ image_token }}]{% endif %}
{{- {'turns': ns.turns, 'last': messages[-1]['role'], 'ü': '😀'} | tojson }}
{%- if add_generation_prompt %}
{{ '<|im_start|>assistant\n' }}
{%- endif %}
"""

CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}],
    [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And in Köln? 😀"},
    ],
    [
        {"role": "system", "content": ""},
        {"role": "user", "content": "  leading and trailing spaces  \n\n"},
        {"role": "assistant", "content": "SKIP"},
        {"role": "user", "content": "<|im_start|>injected<|im_end|>"},
        {"role": "assistant", "content": "STOP"},
        {"role": "user", "content": "never rendered"},
    ],
    [
        {"role": "user", "content": "tools?", "meta": {"k": [1, 2.5, None, True], "é": "<b>"}},
        {"role": "assistant", "content": "done", "reasoning": "thought about it", "x": None},
    ],
]


# ---- folders ----


def _train() -> Any:
    return train_byte_level_bpe(CORPUS, 500, SPECIALS)


def _save(folder: Path, tok: Any, chat_template: str) -> Path:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        model_input_names=["input_ids", "attention_mask"],
        chat_template=chat_template,
    )
    fast.save_pretrained(folder)
    return folder


def _edit_json(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")


def _build_folders(root: Path) -> dict[str, Path]:
    from tokenizers import processors

    folders: dict[str, Path] = {}
    # 1. ChatML, as chatcli's own test model is saved.
    folders["chatml"] = _save(root / "chatml", _train(), CHATML)

    # 2. The rich template, and a post-processor that wraps every sequence in special tokens.
    tok = _train()
    tok.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A <|im_end|>",
        pair="<|im_start|> $A <|im_end|> $B:1 <|im_end|>:1",
        special_tokens=[("<|im_start|>", 1), ("<|im_end|>", 2)],
    )
    folders["rich"] = _save(root / "rich", tok, RICH)
    (root / "rich" / "config.json").write_text('{"model_type": "llama"}', encoding="utf-8")
    _edit_json(
        root / "rich" / "tokenizer_config.json",
        lambda config: config.update(extra_special_tokens={"audio_token": "<audio>"}),
    )

    # 3. A v4-style config: added_tokens_decoder with a named token marked non-special, a
    #    serialized AddedToken, a bos token missing from the vocabulary, model-specific and extra
    #    special tokens, forced clean-up, and the templates as a list of named templates.
    v4 = shutil.copytree(folders["chatml"], root / "v4")
    (v4 / "chat_template.jinja").unlink()

    def _v4_config(config: dict[str, Any]) -> None:
        def entry(content: str, special: bool) -> dict[str, Any]:
            return {
                "content": content,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": special,
            }

        config.update(
            {
                "bos_token": "<s>",
                "eos_token": {"__type": "AddedToken", **entry("<|im_end|>", True)},
                "pad_token": None,
                "image_token": "<image>",
                "additional_special_tokens": ["<tool>", "<|im_start|>"],
                "clean_up_tokenization_spaces": True,
                "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output": True,
                "added_tokens_decoder": {
                    "0": entry("<|endoftext|>", True),
                    "1": entry("<|im_start|>", False),
                    "2": entry("<|im_end|>", False),
                    "1000": entry("<cfg_only>", False),
                },
                "chat_template": [
                    {"name": "default", "template": RICH},
                    {"name": "tool_use", "template": CHATML},
                ],
            }
        )

    _edit_json(v4 / "tokenizer_config.json", _v4_config)

    # 4. Legacy files: no added_tokens_decoder, so special_tokens_map.json, added_tokens.json and
    #    tokenizer.json's added tokens are read; no post-processor; padding (which supplies the pad
    #    token) and truncation stored in tokenizer.json; split_special_tokens; a str template.
    legacy = shutil.copytree(folders["chatml"], root / "legacy")
    (legacy / "chat_template.jinja").unlink()
    (legacy / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": "<|im_end|>",
                "model_max_length": 2048,
                "split_special_tokens": True,
                "chat_template": RICH,
            }
        ),
        encoding="utf-8",
    )
    (legacy / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "bos_token": {
                    "content": "<|im_start|>",
                    "lstrip": False,
                    "normalized": False,
                    "rstrip": False,
                    "single_word": False,
                },
                "unk_token": "<|endoftext|>",
                "additional_special_tokens": ["<|im_start|>", "<tool_call>"],
            }
        ),
        encoding="utf-8",
    )
    (legacy / "added_tokens.json").write_text('{"<extra_0>": 999}', encoding="utf-8")
    (legacy / "config.json").write_text('{"model_type": "llama"}', encoding="utf-8")

    def _legacy_backend(data: dict[str, Any]) -> None:
        data["post_processor"] = None
        data["truncation"] = {
            "direction": "Right",
            "max_length": 4,
            "strategy": "LongestFirst",
            "stride": 0,
        }
        data["padding"] = {
            "strategy": {"Fixed": 64},
            "direction": "Left",
            "pad_to_multiple_of": None,
            "pad_id": 0,
            "pad_type_id": 0,
            "pad_token": "<|endoftext|>",
        }

    _edit_json(legacy / "tokenizer.json", _legacy_backend)

    # 5. Several template files: chat_template.jinja is the default one.
    multi = shutil.copytree(folders["rich"], root / "multi")
    (multi / "additional_chat_templates").mkdir()
    (multi / "additional_chat_templates" / "tool_use.jinja").write_text(CHATML, encoding="utf-8")

    folders.update(v4=v4, legacy=legacy, multi=multi)
    return folders


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _build_folders(tmp_path_factory.mktemp("chat-tokenizers"))


@pytest.fixture(scope="module")
def pairs(folders: dict[str, Path]) -> dict[str, tuple[Any, ChatTokenizer]]:
    from transformers import AutoTokenizer

    return {
        name: (AutoTokenizer.from_pretrained(folder), ChatTokenizer.from_folder(folder))
        for name, folder in folders.items()
    }


NAMES = ["chatml", "rich", "v4", "legacy", "multi"]


# ---- comparisons shared with the slow test ----


def _render(tokenizer: Any, conversation: list[dict[str, Any]], generation: bool) -> Any:
    try:
        return tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=generation
        )
    except jinja2.exceptions.TemplateError as exc:
        return ("TemplateError", str(exc))


def _pipeline(backend: Any) -> dict[str, Any]:
    """The backend's whole serialized pipeline, less the truncation and padding that
    transformers switches off before each call (ChatTokenizer switches them off once)."""
    data = json.loads(backend.to_str())
    data.pop("truncation")
    data.pop("padding")
    return data


def assert_same_attributes(ref: Any, ours: ChatTokenizer) -> None:
    assert type(ref).__name__ == "TokenizersBackend"  # the class ChatTokenizer reproduces
    assert len(ours) == len(ref)
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        assert getattr(ours, name) == getattr(ref, name), name
        assert getattr(ours, name + "_id") == getattr(ref, name + "_id"), name
    assert set(ours.all_special_ids) == set(ref.all_special_ids)
    assert ours.all_special_ids == ref.all_special_ids
    assert ours.all_special_tokens == ref.all_special_tokens
    assert ours.special_tokens_map == ref.special_tokens_map
    assert ours.chat_template == ref.chat_template
    assert _pipeline(ours.backend_tokenizer) == _pipeline(ref.backend_tokenizer)


def assert_same_text(ref: Any, ours: ChatTokenizer, text: str) -> None:
    for add in (False, True):
        expected = ref(text, add_special_tokens=add)["input_ids"]
        assert ours(text, add_special_tokens=add)["input_ids"] == expected, (text, add)
        assert ours.encode(text, add_special_tokens=add) == expected, (text, add)


def assert_same_decode(ref: Any, ours: ChatTokenizer, ids: list[int]) -> None:
    for skip in (False, True):
        for clean in (None, False, True):
            expected = ref.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=clean)
            got = ours.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=clean)
            assert got == expected, (ids, skip, clean)
    assert ours.decode(ids) == ref.decode(ids)
    assert ours.convert_ids_to_tokens(ids) == ref.convert_ids_to_tokens(ids)


def assert_same_chat(ref: Any, ours: ChatTokenizer, conversation: list[dict[str, Any]]) -> None:
    for generation in (False, True):
        expected = _render(ref, conversation, generation)
        assert _render(ours, conversation, generation) == expected, (conversation, generation)


SAMPLE_TEXTS = [
    "",
    " ",
    "\n\n",
    "Hello world!",
    "  Grüße, naïve café — 日本語 😀🎉👍🏽🇫🇷 ",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|><|im_start|><|endoftext|>x<|im_end",
    "<s><tool><image><tool_call><extra_0><cfg_only> don't , . ?",
    "a" * 300,
    "\t tabs\tand\r\nCRLF\u00a0nbsp\u200bzwsp",
]


def assert_all_same(ref: Any, ours: ChatTokenizer) -> None:
    assert_same_attributes(ref, ours)
    for conversation in CONVERSATIONS:
        assert_same_chat(ref, ours, conversation)
    for text in SAMPLE_TEXTS:
        assert_same_text(ref, ours, text)
        ids = ref(text, add_special_tokens=True)["input_ids"]
        assert_same_decode(ref, ours, ids)
        # every prefix, so multi-byte characters are cut in the middle
        for end in range(len(ids)):
            assert_same_decode(ref, ours, ids[:end])
    specials = [*sorted(set(ref.all_special_ids)), len(ref) - 1, 0]
    assert_same_decode(ref, ours, specials + ref("a 😀 b")["input_ids"] + specials)


# ---- tests ----


@pytest.mark.parametrize("name", NAMES)
def test_matches_transformers_on_fixed_inputs(
    pairs: dict[str, tuple[Any, ChatTokenizer]], name: str
) -> None:
    ref, ours = pairs[name]
    assert_all_same(ref, ours)


def test_fixtures_cover_the_rare_paths(pairs: dict[str, tuple[Any, ChatTokenizer]]) -> None:
    """The variants really differ where they are meant to, so the comparisons above bite."""
    chatml, rich, v4, legacy, multi = (pairs[name][1] for name in NAMES)
    assert len(v4) == len(chatml) + 4  # <cfg_only>, <s>, <image> and <tool> were added
    assert rich.encode("hi", add_special_tokens=True)[0] == rich.bos_token_id
    added = v4.convert_ids_to_tokens(list(range(len(chatml), len(v4))))
    assert added == ["<cfg_only>", "<s>", "<image>", "<tool>"]
    assert legacy.pad_token == "<|endoftext|>"  # from tokenizer.json's padding
    assert len(legacy.encode("<|im_end|>")) > 1  # split_special_tokens
    assert len(legacy.encode("x " * 50)) > 4  # truncation switched off
    assert isinstance(v4.chat_template, dict) and isinstance(multi.chat_template, dict)
    assert "[<image>]" in v4.apply_chat_template(CONVERSATIONS[0])


def test_raise_exception_in_template(pairs: dict[str, tuple[Any, ChatTokenizer]]) -> None:
    ref, ours = pairs["rich"]
    bad = [{"role": "tool", "content": "x"}]
    with pytest.raises(jinja2.exceptions.TemplateError, match="Unknown role: tool"):
        ref.apply_chat_template(bad, tokenize=False)
    with pytest.raises(jinja2.exceptions.TemplateError, match="Unknown role: tool"):
        ours.apply_chat_template(bad, tokenize=False)


def test_template_errors_match(pairs: dict[str, tuple[Any, ChatTokenizer]]) -> None:
    ref, ours = pairs["chatml"]
    for tokenizer in (ref, ours):
        with pytest.raises(ValueError):
            tokenizer.apply_chat_template([], tokenize=False)
    with pytest.raises(ValueError):
        ours.apply_chat_template(CONVERSATIONS[0], tokenize=True)


def test_chat_template_can_be_overridden(folders: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(folders["chatml"])
    ours = ChatTokenizer.from_folder(folders["chatml"])
    ref.chat_template = ours.chat_template = RICH
    for conversation in CONVERSATIONS:
        assert_same_chat(ref, ours, conversation)
    ref.chat_template = ours.chat_template = None
    with pytest.raises(ValueError):
        ref.apply_chat_template(CONVERSATIONS[0], tokenize=False)
    with pytest.raises(ValueError):
        ours.apply_chat_template(CONVERSATIONS[0], tokenize=False)


def test_unsupported_folders_are_refused(folders: dict[str, Path], tmp_path: Path) -> None:
    assert all(supports(folder) for folder in folders.values())

    def variant(name: str, edit: Callable[[dict[str, Any]], None]) -> Path:
        folder = shutil.copytree(folders["chatml"], tmp_path / name)
        _edit_json(folder / "tokenizer_config.json", edit)
        return folder

    refused = [
        variant("qwen-class", lambda c: c.update(tokenizer_class="Qwen2Tokenizer")),
        variant("remote", lambda c: c.update(auto_map={"AutoTokenizer": [None, "x.Tok"]})),
        variant("no-class", lambda c: c.pop("tokenizer_class")),
    ]
    qwen = shutil.copytree(folders["chatml"], tmp_path / "qwen-type")
    (qwen / "config.json").write_text('{"model_type": "qwen2"}', encoding="utf-8")
    no_json = shutil.copytree(folders["chatml"], tmp_path / "no-json")
    (no_json / "tokenizer.json").unlink()
    for folder in [*refused, qwen, no_json]:
        assert not supports(folder), folder
        with pytest.raises(ValueError):
            ChatTokenizer.from_folder(folder)


HYPOTHESIS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Text with the special (and almost-special) tokens mixed in.
TEXTS = st.one_of(
    st.text(),
    st.lists(
        st.one_of(
            st.text(max_size=8),
            st.sampled_from([*SPECIALS, "<s>", "<tool>", "<image>", "<|im_", " ", "\n", "😀"]),
        ),
        max_size=12,
    ).map("".join),
)


@pytest.mark.parametrize("name", NAMES)
@HYPOTHESIS
@given(text=TEXTS)
def test_encode_matches_on_any_text(
    pairs: dict[str, tuple[Any, ChatTokenizer]], name: str, text: str
) -> None:
    ref, ours = pairs[name]
    assert_same_text(ref, ours, text)


@pytest.mark.parametrize("name", NAMES)
@HYPOTHESIS
@given(data=st.data())
def test_decode_matches_on_any_ids(
    pairs: dict[str, tuple[Any, ChatTokenizer]], name: str, data: st.DataObject
) -> None:
    ref, ours = pairs[name]
    ids = data.draw(st.lists(st.integers(0, len(ref) + 2), max_size=24))
    assert_same_decode(ref, ours, ids)
    # an id sequence that round-trips text, cut anywhere
    text = data.draw(TEXTS)
    encoded = ref(text, add_special_tokens=True)["input_ids"]
    cut = data.draw(st.integers(0, len(encoded)))
    assert_same_decode(ref, ours, encoded[:cut])
    assert_same_decode(ref, ours, encoded[cut:])


MESSAGES = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": TEXTS}
    ),
    min_size=1,
    max_size=5,
)


@pytest.mark.parametrize("name", NAMES)
@HYPOTHESIS
@given(conversation=MESSAGES)
def test_chat_template_matches_on_any_conversation(
    pairs: dict[str, tuple[Any, ChatTokenizer]], name: str, conversation: list[dict[str, Any]]
) -> None:
    ref, ours = pairs[name]
    assert_same_chat(ref, ours, conversation)


@pytest.mark.slow
def test_matches_transformers_on_the_real_tokenizer() -> None:
    folder = os.environ.get("CHATCLI_TEST_REAL_TOKENIZER")
    if not folder:
        pytest.skip("set CHATCLI_TEST_REAL_TOKENIZER to a model folder to compare on it")
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(folder)
    ours = ChatTokenizer.from_folder(Path(folder))
    assert_all_same(ref, ours)

    @settings(max_examples=300, deadline=None)
    @given(text=TEXTS, data=st.data(), conversation=MESSAGES)
    def check(text: str, data: st.DataObject, conversation: list[dict[str, Any]]) -> None:
        assert_same_text(ref, ours, text)
        assert_same_decode(ref, ours, data.draw(st.lists(st.integers(0, len(ref)), max_size=24)))
        assert_same_chat(ref, ours, conversation)

    check()


# -- a model-specific class whose pipeline is its saved file (a GGUF's tokenizer) -----------
def _gemma_folder(folder: Path) -> Path:
    """A tiny tokenizer saved by transformers' GemmaTokenizer (a model-specific class that
    rebuilds its pipeline from the vocabulary), as chatcli's GGUF export saves one."""
    from transformers.models.gemma.tokenization_gemma import GemmaTokenizer

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    for ch in "▁abcdefghijklmnopqrstuvwxyz,.!?":
        vocab[ch] = len(vocab)
    for i in range(256):
        vocab[f"<0x{i:02X}>"] = len(vocab)
    merges = [("▁", "h"), ("▁h", "e"), ("l", "l"), ("▁he", "ll"), ("▁hell", "o")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    GemmaTokenizer(vocab=vocab, merges=merges).save_pretrained(folder)
    return folder


GEMMA_TEXTS = ["hello world, héllo!", "  two  spaces\n\nnew lines\t", "你好 🙂", "<bos>hello<eos>"]


def test_a_checked_model_specific_class_is_reproduced(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from chatcli.lm.tokenizer import VERIFIED_FILE, record_reproduced
    from chatcli.loader import open_tokenizer

    folder = _gemma_folder(tmp_path / "gemma")
    theirs = AutoTokenizer.from_pretrained(folder)
    assert type(theirs).__name__ == "GemmaTokenizer"
    assert not supports(folder)
    assert record_reproduced(folder, theirs)
    assert json.loads((folder / VERIFIED_FILE).read_text())["class"] == "GemmaTokenizer"
    assert supports(folder)
    mine = open_tokenizer(folder)
    assert isinstance(mine, ChatTokenizer)
    for text in GEMMA_TEXTS:
        for special in (False, True):
            ids = theirs.encode(text, add_special_tokens=special)
            assert mine.encode(text, add_special_tokens=special) == ids
            assert mine.decode(ids) == theirs.decode(ids)
    # the record holds only while the files are the ones checked
    stat = (folder / "tokenizer.json").stat()
    os.utime(folder / "tokenizer.json", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert not supports(folder)


def test_a_class_that_rebuilds_another_pipeline_is_not_recorded(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from chatcli.lm.tokenizer import VERIFIED_FILE, record_reproduced

    folder = _gemma_folder(tmp_path / "gemma")
    saved = json.loads((folder / "tokenizer.json").read_text())
    saved["normalizer"] = None  # GemmaTokenizer puts its own back: not the file's pipeline
    (folder / "tokenizer.json").write_text(json.dumps(saved))
    assert not record_reproduced(folder, AutoTokenizer.from_pretrained(folder))
    assert not (folder / VERIFIED_FILE).exists()
    assert not supports(folder)
