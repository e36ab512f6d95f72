"""A Hugging Face tokenizer folder loaded without transformers, with its chat template.

Contract: `ChatTokenizer.from_folder(folder)` reads tokenizer.json and tokenizer_config.json (plus
chat_template.jinja, additional_chat_templates/*.jinja, special_tokens_map.json and
added_tokens.json when present) with the `tokenizers` library and behaves exactly like
`transformers.AutoTokenizer.from_pretrained(folder)` (transformers 5.x, the `TokenizersBackend`
class) for the subset chatcli uses: `apply_chat_template(..., tokenize=False)`, `__call__` /
`encode` with or without the post-processor's special tokens, `decode` (`skip_special_tokens`,
`clean_up_tokenization_spaces`), `convert_ids_to_tokens`, `len()`, the special-token attributes
and `all_special_ids`. Every step of transformers' loading that changes those results is mirrored:
special tokens named in the config but missing from the added vocabulary are added to it, the
named tokens of `added_tokens_decoder` are re-added as special, a missing post-processor is
replaced by the empty template, truncation and padding stored in tokenizer.json are switched off,
and the chat template is rendered in the same sandboxed jinja environment (`trim_blocks`,
`lstrip_blocks`, loop controls, the `generation` tag, `tojson`, `raise_exception`, `strftime_now`,
`dict`, `namespace`) with the same variables (messages, add_generation_prompt, tools=None,
documents=None and every named special token).

`file_problem(folder)` says why tokenizer.json cannot be read at all (truncated, corrupt);
`from_folder` raises `ValueError` for such a file too.

`supports(folder)` (and `unsupported_reason(folder)`) says up front whether a folder is one
this module reproduces exactly: its tokenizer_config.json must name the generic class
(`TokenizersBackend` or `PreTrainedTokenizerFast`), carry no remote code and belong to no
model type for which transformers substitutes its own tokenizer class (those classes rebuild
the pipeline from the vocabulary instead of using tokenizer.json). `from_folder` raises
`ValueError` for other folders, so callers can fall back to transformers. The one
exception is a folder chatcli wrote itself (a GGUF's tokenizer, saved by transformers):
`record_reproduced(folder, tokenizer)` checks there that the model-specific class
transformers loads serializes to exactly the folder's tokenizer.json and encodes a
probe text as this module does, and then records so (`VERIFIED_FILE`, with the files'
sizes and times); such a folder is supported while its files are unchanged.

Not reproduced: tokenize=True, batches, tools, documents, continue_final_message and
sanitize_control_tokens in `apply_chat_template`; padding, truncation and tensors in `__call__`;
transformers' log warnings (such as the one for clean-up requested on a BPE model, which is
skipped silently here). `encode` and `__call__` default to add_special_tokens=False.

It deliberately knows nothing about models, generation or decoding strategies: text and messages
go in, token ids and text come out. It never imports transformers (only `tokenizers`, `jinja2` and
the standard library), which is the point: importing it costs tens of milliseconds, not a second.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.exceptions
import jinja2.ext
import jinja2.nodes
import jinja2.parser
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Tokenizer, processors

__all__ = ["ChatTokenizer", "supports"]

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_DIR = "additional_chat_templates"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
ADDED_TOKENS_FILE = "added_tokens.json"

# transformers' PreTrainedTokenizerBase.SPECIAL_TOKENS_ATTRIBUTES, in its order.
NAMED_SPECIAL_TOKENS: tuple[str, ...] = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)

# Classes that AutoTokenizer loads as `TokenizersBackend`, straight from tokenizer.json.
GENERIC_TOKENIZER_CLASSES = frozenset({"TokenizersBackend", "PreTrainedTokenizerFast"})

# Model types for which AutoTokenizer (5.x) may pick a model-specific class even when
# tokenizer_config.json names the generic one: transformers'
# MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS and the Mistral family (MistralCommonBackend
# when mistral-common is installed).
MODEL_TYPES_WITH_OWN_TOKENIZER = frozenset(
    {
        "arctic",
        "camembertv2-base",
        "chatlm",
        "cohere_asr",
        "ernie4_5",
        "ernie4_5_moe",
        "fuyu",
        "h2ovl_chat",
        "hyperclovax",
        "hyperclovax_vision_v2",
        "hyperclovax_vlm",
        "internlm2",
        "internlm3",
        "iquestcoder",
        "jamba",
        "llava",
        "llava_next",
        "minicpm3",
        "minicpmv",
        "minimax_m2",
        "ministral",
        "ministral3",
        "mistral",
        "mistral3",
        "mistral_large4",
        "mixtral",
        "modernbert",
        "modernbert-decoder",
        "molmo",
        "molmo2",
        "nemotron",
        "nvfp4",
        "opencua",
        "openvla",
        "paddleocr_vl",
        "phi3",
        "phi3_v",
        "phimoe",
        "pixtral",
        "qwen2",
        "qwen3_5",
        "qwen3_5_moe",
        "qwen3_5_moe_text",
        "qwen4_exp",
        "siglip2",
        "smolvlm",
        "step3_vl",
        "vipllava",
        "voxtral",
        "voxtral_realtime",
    }
)

# The names a message's reasoning is passed under; the first is the one chat templates read.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")

# transformers' PreTrainedTokenizerBase.clean_up_tokenization, in its order.
_CLEAN_UP_REPLACEMENTS = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


VERIFIED_FILE = ".chatcli-tokenizer.json"
"""In a folder chatcli wrote: the model-specific tokenizer class this module was checked to
reproduce there, and the sizes and times of the files checked."""

_PROBE_TEXT = ("Hello, world!  Two  spaces,\ttabs\n\nand lines. héllo wörld 你好 🙂 "
               "def f(x):\n    return x ** 2  # code\n1234567890 ... ?!")


def _stamps(folder: Path) -> dict[str, list[int]]:
    stamps = {}
    for name in (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE):
        info = (folder / name).stat()
        stamps[name] = [info.st_size, info.st_mtime_ns]
    return stamps


def _verified_class(folder: Path) -> str | None:
    """The class `record_reproduced` checked in `folder`, while its files are unchanged."""
    try:
        record = json.loads((folder / VERIFIED_FILE).read_text(encoding="utf-8"))
        if record.get("files") != _stamps(folder):
            return None
    except (OSError, ValueError, AttributeError):
        return None
    found = record.get("class")
    return found if isinstance(found, str) else None


def record_reproduced(folder: Path, tokenizer: Any) -> bool:
    """In `folder`, just written by transformers' `tokenizer.save_pretrained` (a folder
    chatcli owns), record that this module reproduces it when `tokenizer`'s class is not
    the generic one but its pipeline is exactly the saved tokenizer.json (so the generic
    load of that file builds the same one) and it encodes and decodes a probe text (with
    and without special tokens) as `ChatTokenizer` does. Returns whether it did."""
    folder = Path(folder)
    tokenizer_class = type(tokenizer).__name__
    if tokenizer_class in GENERIC_TOKENIZER_CLASSES or \
            _unsupported_reason(folder, tokenizer_class) is not None:
        return False
    backend = getattr(tokenizer, "backend_tokenizer", None)
    try:
        saved = json.loads((folder / TOKENIZER_FILE).read_text(encoding="utf-8"))
        if backend is None or json.loads(backend.to_str()) != saved:
            return False
        (folder / VERIFIED_FILE).write_text(json.dumps(
            {"class": tokenizer_class, "files": _stamps(folder)}) + "\n", encoding="utf-8")
        mine = ChatTokenizer.from_folder(folder)
        same = all(mine.encode(_PROBE_TEXT, add_special_tokens=special)
                   == tokenizer.encode(_PROBE_TEXT, add_special_tokens=special)
                   for special in (False, True))
        ids = tokenizer.encode(_PROBE_TEXT, add_special_tokens=True)
        same = same and mine.decode(ids) == tokenizer.decode(ids) and \
            mine.all_special_ids == tokenizer.all_special_ids
    except (OSError, ValueError):
        same = False
    if not same:
        (folder / VERIFIED_FILE).unlink(missing_ok=True)
    return same


def _unsupported_reason(folder: Path, verified: str | None = None) -> str | None:
    """Why `folder` is not one this module reproduces exactly, or None when it is
    (`verified`: the model-specific class to accept, else the folder's record's)."""
    if not (folder / TOKENIZER_FILE).is_file():
        return f"no {TOKENIZER_FILE}"
    config_path = folder / TOKENIZER_CONFIG_FILE
    if not config_path.is_file():
        return f"no {TOKENIZER_CONFIG_FILE}"
    config = _read_json(config_path)
    if not isinstance(config, dict):
        return f"{TOKENIZER_CONFIG_FILE} is not a JSON object"
    tokenizer_class = config.get("tokenizer_class")
    if tokenizer_class not in GENERIC_TOKENIZER_CLASSES and tokenizer_class is not None \
            and tokenizer_class == (verified or _verified_class(folder)):
        return None if "auto_map" not in config else "the tokenizer uses remote code (auto_map)"
    if tokenizer_class not in GENERIC_TOKENIZER_CLASSES:
        return f"tokenizer class {tokenizer_class!r} is not the generic one"
    if "auto_map" in config:
        return "the tokenizer uses remote code (auto_map)"
    if "fast_tokenizer_files" in config:
        return "the tokenizer has versioned tokenizer files"
    model_config_path = folder / "config.json"
    if model_config_path.is_file():
        model_config = _read_json(model_config_path)
        if isinstance(model_config, dict):
            names = {model_config.get("model_type"), model_config.get("model_name")}
            if names & MODEL_TYPES_WITH_OWN_TOKENIZER:
                return "transformers picks a model-specific tokenizer class for this model type"
    return None


def supports(folder: Path) -> bool:
    """Whether `ChatTokenizer.from_folder(folder)` reproduces AutoTokenizer exactly."""
    return _unsupported_reason(Path(folder)) is None


def unsupported_reason(folder: Path) -> str | None:
    """Why `ChatTokenizer.from_folder(folder)` would not reproduce AutoTokenizer (None: it does)."""
    return _unsupported_reason(Path(folder))


def file_problem(folder: Path) -> str | None:
    """Why the `tokenizers` library cannot read `folder`'s tokenizer.json (None: it can,
    or there is none): a truncated or corrupt file, named to the user instead of a
    traceback."""
    path = Path(folder) / TOKENIZER_FILE
    if not path.is_file():
        return None
    try:
        _read_tokenizer_file(path)
    except ValueError as exc:
        return str(exc)
    return None


def _read_tokenizer_file(path: Path) -> Tokenizer:
    """`Tokenizer.from_file`, whose bare `Exception` for a bad file becomes a ValueError."""
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{path.name} cannot be read by the tokenizers library ({first})") from exc


def _convert_added_tokens(obj: Any) -> Any:
    """Serialized `{"__type": "AddedToken", ...}` dicts (at any depth) become AddedTokens."""
    if isinstance(obj, dict) and obj.get("__type") == "AddedToken":
        fields = {key: value for key, value in obj.items() if key != "__type"}
        return AddedToken(**fields)
    if isinstance(obj, (list, tuple)):
        return [_convert_added_tokens(item) for item in obj]
    if isinstance(obj, dict):
        return {key: _convert_added_tokens(value) for key, value in obj.items()}
    return obj


def _read_chat_templates(folder: Path) -> str | dict[str, str] | None:
    """chat_template.jinja (as "default") and additional_chat_templates/*.jinja, as transformers
    reads them: one default template is a str, several are a dict by name."""
    templates: dict[str, str] = {}
    default_file = folder / CHAT_TEMPLATE_FILE
    if default_file.is_file():
        templates["default"] = default_file.read_text(encoding="utf-8")
    template_dir = folder / CHAT_TEMPLATE_DIR
    if template_dir.is_dir():
        for template_file in template_dir.glob("*.jinja"):
            name = template_file.name.removesuffix(".jinja")
            templates[name] = template_file.read_text(encoding="utf-8")
    if len(templates) == 1 and "default" in templates:
        return templates["default"]
    return templates or None


# ---- chat template rendering (transformers.utils.chat_template_utils) ----


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` renders its body unchanged.

    transformers uses the tag to record which characters the assistant wrote; rendering to text
    does not need those indices, so only the output is reproduced.
    """

    tags = frozenset({"generation"})

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_render_body")
        return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    @jinja2.pass_eval_context
    def _render_body(self, context: jinja2.nodes.EvalContext, caller: Any) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Unlike jinja's own filter: no HTML escaping, and the json.dumps options are exposed.
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _TemplateDict:
    """`dict(...)` for templates, without exposing the dict type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """jinja's `namespace`, refusing underscore-prefixed attributes."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        # Same signature trick as jinja's Namespace, so that `namespace(self=...)` still works.
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                "Chat templates cannot store underscore-prefixed attributes on a namespace, "
                f"but got {name!r}. Please rename the attribute."
            )


@lru_cache
def _compile(chat_template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env.from_string(chat_template)


def _message_objects_to_dicts(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _message_objects_to_dicts(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_message_objects_to_dicts(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_message_objects_to_dicts(item) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: _message_objects_to_dicts(getattr(value, field.name))
            for field in dataclasses.fields(value)
        }
    if callable(getattr(value, "model_dump", None)):
        return _message_objects_to_dicts(value.model_dump())
    return value


def _normalize_messages(conversation: Any) -> list[dict[str, Any]]:
    """Messages as dicts, without the keys whose value is None."""
    messages = _message_objects_to_dicts(getattr(conversation, "messages", conversation))
    normalized = []
    for message in messages:
        if not isinstance(message, dict):
            raise TypeError(
                "Chat messages should be dicts, dataclasses or pydantic models, "
                f"but got {message!r}."
            )
        normalized.append({key: value for key, value in message.items() if value is not None})
    return normalized


def _is_numpy_scalar(value: Any) -> bool:
    return type(value).__module__ == "numpy" and callable(getattr(value, "item", None))


def _plain_template_data(value: Any) -> Any:
    """Rebuild what the template sees out of plain JSON types (sandbox hygiene)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {
            _plain_template_data(key): _plain_template_data(item) for key, item in value.items()
        }
    if isinstance(value, list):
        return [_plain_template_data(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_plain_template_data(item) for item in value)
    if _is_numpy_scalar(value):
        return _plain_template_data(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: _plain_template_data(getattr(value, field.name))
            for field in dataclasses.fields(value)
        }
    if callable(getattr(value, "model_dump", None)):
        return _plain_template_data(value.model_dump())
    return f"<{type(value).__name__}>"


def _alias_reasoning_fields(chat: list[Any]) -> list[Any]:
    aliased = []
    for message in chat:
        if isinstance(message, dict):
            reasoning = next(
                (message[key] for key in _REASONING_FIELDS if message.get(key) is not None), None
            )
            if reasoning is not None:
                message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        aliased.append(message)
    return aliased


# ---- the tokenizer ----


class ChatTokenizer:
    """The subset of a transformers fast tokenizer that chatcli uses, on `tokenizers` alone."""

    chat_template: str | dict[str, str] | None

    def __init__(
        self,
        backend: Tokenizer,
        special_tokens: dict[str, str | AddedToken],
        extra_special_tokens: list[Any],
        chat_template: str | dict[str, str] | None,
        clean_up_tokenization_spaces: bool = False,
        clean_up_for_bpe: bool = False,
    ) -> None:
        """Wrap a ready backend; `from_folder` builds one the way transformers does."""
        self._tokenizer = backend
        # Named special tokens, the standard seven then model-specific ones, in transformers' order.
        self._special_tokens = special_tokens
        self._extra_special_tokens = extra_special_tokens
        self.chat_template = chat_template
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self._clean_up_for_bpe = clean_up_for_bpe

    @classmethod
    def from_folder(cls, folder: Path) -> ChatTokenizer:
        """Load `folder` like `AutoTokenizer.from_pretrained(folder)`; ValueError if unsupported."""
        folder = Path(folder)
        reason = _unsupported_reason(folder)
        if reason is not None:
            raise ValueError(f"{folder}: {reason}; load this tokenizer with transformers instead")

        # -- PreTrainedTokenizerBase._from_pretrained --
        kwargs: dict[str, Any] = _read_json(folder / TOKENIZER_CONFIG_FILE)
        kwargs.pop("tokenizer_class", None)
        kwargs.pop("init_inputs", None)
        kwargs.pop("add_bos_token", None)  # dropped whenever tokenizer.json exists
        kwargs.pop("add_eos_token", None)
        chat_templates = _read_chat_templates(folder)
        if chat_templates is not None:
            kwargs["chat_template"] = chat_templates
        if "additional_special_tokens" in kwargs and not kwargs.get("extra_special_tokens"):
            kwargs["extra_special_tokens"] = kwargs.pop("additional_special_tokens")
        model_specific = {
            key: kwargs.pop(key)
            for key in list(kwargs)
            if key not in NAMED_SPECIAL_TOKENS
            and key.endswith("_token")
            and isinstance(kwargs[key], (str, AddedToken))
        }
        if isinstance(kwargs.get("extra_special_tokens"), dict):
            model_specific.update(kwargs.pop("extra_special_tokens"))

        backend = _read_tokenizer_file(folder / TOKENIZER_FILE)
        added_tokens_decoder: dict[int, AddedToken] = {}
        added_tokens_map: dict[str, AddedToken] = {}
        if "added_tokens_decoder" in kwargs:
            for index, token in kwargs["added_tokens_decoder"].items():
                if isinstance(token, dict):
                    token = AddedToken(**token)
                if not isinstance(token, AddedToken):
                    raise TypeError(f"bad entry {token!r} in added_tokens_decoder")
                added_tokens_decoder[int(index)] = token
                added_tokens_map[str(token)] = token
        else:
            cls._read_legacy_added_tokens(
                folder, backend, kwargs, model_specific, added_tokens_decoder, added_tokens_map
            )
        kwargs["added_tokens_decoder"] = added_tokens_decoder
        kwargs = _convert_added_tokens(kwargs)
        for key in NAMED_SPECIAL_TOKENS:
            if key in kwargs and added_tokens_map and kwargs[key] is not None:
                kwargs[key] = added_tokens_map.get(str(kwargs[key]), kwargs[key])

        # -- TokenizersBackend.__init__ (the backend is tokenizer.json, loaded above) --
        padding = backend.padding
        if padding is not None:
            kwargs.setdefault("pad_token", padding["pad_token"])
        # transformers switches both off before every call without padding or truncation
        backend.no_truncation()
        backend.no_padding()
        update_post_processor = backend.post_processor is None

        # -- PreTrainedTokenizerBase.__init__ --
        if "additional_special_tokens" in kwargs and "extra_special_tokens" not in kwargs:
            kwargs["extra_special_tokens"] = kwargs.pop("additional_special_tokens")
        special: dict[str, str | AddedToken] = {}
        extras: list[Any] = []
        auto_model_specific: dict[str, Any] = {}
        for key in list(kwargs):
            value = kwargs[key]
            if key in NAMED_SPECIAL_TOKENS:
                if value is None:
                    continue
                if not isinstance(value, (str, AddedToken)):
                    raise TypeError(f"Special token {key} has to be either str or AddedToken")
                special[key] = value
            elif key == "extra_special_tokens":
                if isinstance(value, dict):
                    auto_model_specific.update(value)
                elif isinstance(value, (list, tuple)):
                    extras = list(value)
                elif value is not None:
                    raise TypeError("extra_special_tokens must be a list or a dict of named tokens")
            elif (
                key.endswith("_token")
                and key not in NAMED_SPECIAL_TOKENS
                and isinstance(value, (str, AddedToken))
            ):
                auto_model_specific[key] = value
        named: dict[str, str | AddedToken | None] = dict.fromkeys(NAMED_SPECIAL_TOKENS)
        named.update(special)
        for key, value in {**auto_model_specific, **model_specific}.items():
            if not isinstance(value, (str, AddedToken)):
                raise TypeError(f"Special token {key} has to be either str or AddedToken")
            named[key] = value
        split_special_tokens = bool(kwargs.get("split_special_tokens", False))

        # -- back in TokenizersBackend.__init__ --
        backend.encode_special_tokens = split_special_tokens
        tokens_to_add: list[Any] = [token for _, token in sorted(added_tokens_decoder.items())]
        encoder = [
            token.content for _, token in sorted(backend.get_added_tokens_decoder().items())
        ] + [str(token) for token in tokens_to_add]
        for value in named.values():
            if value is None:
                continue
            if str(value) not in encoder and value not in tokens_to_add:
                tokens_to_add.append(value)
        for token in extras:
            if str(token) not in encoder and token not in tokens_to_add:
                tokens_to_add.append(token)
        if tokens_to_add:
            all_named = [str(value) for value in named.values() if value]
            new_tokens: list[AddedToken] = []
            for token in tokens_to_add:
                if isinstance(token, str):
                    token = AddedToken(token, special=True)
                elif (
                    isinstance(token, AddedToken) and not token.special and str(token) in all_named
                ):
                    token.special = True
                new_tokens.append(token)
            backend.add_tokens(new_tokens)
        if update_post_processor:
            # update_post_processor() with add_bos_token = add_eos_token = False
            backend.post_processor = processors.TemplateProcessing(
                single="$A:0", pair="$A:0 $B:1", special_tokens=[]
            )

        chat_template = kwargs.get("chat_template")
        if isinstance(chat_template, (list, tuple)):
            chat_template = {item["name"]: item["template"] for item in chat_template}
        return cls(
            backend,
            special_tokens={key: value for key, value in named.items() if value is not None},
            extra_special_tokens=extras,
            chat_template=chat_template,
            clean_up_tokenization_spaces=bool(kwargs.get("clean_up_tokenization_spaces", False)),
            clean_up_for_bpe=bool(
                kwargs.get(
                    "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False
                )
            ),
        )

    @staticmethod
    def _read_legacy_added_tokens(
        folder: Path,
        backend: Tokenizer,
        kwargs: dict[str, Any],
        model_specific: dict[str, Any],
        added_tokens_decoder: dict[int, AddedToken],
        added_tokens_map: dict[str, AddedToken],
    ) -> None:
        """Configs without added_tokens_decoder: special_tokens_map.json, added_tokens.json and
        tokenizer.json's added tokens, as transformers reads them."""
        special_map_path = folder / SPECIAL_TOKENS_MAP_FILE
        if special_map_path.is_file():
            for key, value in _read_json(special_map_path).items():
                if isinstance(value, dict) and key != "extra_special_tokens":
                    value.pop("special", None)
                    value = AddedToken(**value, special=True)
                elif key == "extra_special_tokens" and isinstance(value, list):
                    existing = list(kwargs.get("extra_special_tokens") or [])
                    for token in value:
                        if isinstance(token, dict):
                            token = AddedToken(**token, special=True)
                        if token not in existing:
                            existing.append(token)
                    value = existing
                kwargs[key] = value
            if isinstance(kwargs.get("extra_special_tokens"), dict):
                model_specific.update(kwargs.pop("extra_special_tokens"))
        added_tokens_path = folder / ADDED_TOKENS_FILE
        if added_tokens_path.is_file():
            specials = {str(kwargs[key]) for key in NAMED_SPECIAL_TOKENS if kwargs.get(key)}
            specials.update(str(token) for token in (kwargs.get("extra_special_tokens") or []))
            for content, index in _read_json(added_tokens_path).items():
                is_special = content in specials
                added_tokens_decoder[index] = AddedToken(
                    content,
                    rstrip=False,
                    lstrip=False,
                    normalized=not is_special,
                    special=is_special,
                )
                added_tokens_map[content] = added_tokens_decoder[index]
        # tokenizer.json's "added_tokens", read from the loaded backend rather than parsed again
        for index, token in sorted(backend.get_added_tokens_decoder().items()):
            added_tokens_decoder[index] = AddedToken(
                token.content,
                single_word=token.single_word,
                lstrip=token.lstrip,
                rstrip=token.rstrip,
                normalized=token.normalized,
                special=token.special,
            )
            added_tokens_map[token.content] = added_tokens_decoder[index]

    # ---- special tokens ----

    def _token_to_id(self, token: str) -> int | None:
        index = self._tokenizer.token_to_id(token)
        if index is None:
            unk = self._special_tokens.get("unk_token")
            return None if unk is None else self._tokenizer.token_to_id(str(unk))
        return index

    def _named(self, key: str) -> str | None:
        value = self._special_tokens.get(key)
        return None if value is None else str(value)

    def _named_id(self, key: str) -> int | None:
        token = self._named(key)
        return None if token is None else self._token_to_id(token)

    @property
    def bos_token(self) -> str | None:
        return self._named("bos_token")

    @property
    def bos_token_id(self) -> int | None:
        return self._named_id("bos_token")

    @property
    def eos_token(self) -> str | None:
        return self._named("eos_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._named_id("eos_token")

    @property
    def unk_token(self) -> str | None:
        return self._named("unk_token")

    @property
    def unk_token_id(self) -> int | None:
        return self._named_id("unk_token")

    @property
    def pad_token(self) -> str | None:
        return self._named("pad_token")

    @property
    def pad_token_id(self) -> int | None:
        return self._named_id("pad_token")

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """Named special tokens (standard and model-specific) as strings, as templates see them."""
        return {key: str(value) for key, value in self._special_tokens.items()}

    @property
    def all_special_tokens(self) -> list[str]:
        tokens: list[str] = []
        for value in [*self._special_tokens.values(), *self._extra_special_tokens]:
            if str(value) not in tokens:
                tokens.append(str(value))
        return tokens

    @property
    def all_special_ids(self) -> list[int]:
        # Every special token is in the vocabulary after loading, so no id is None here.
        return [
            index for index in map(self._token_to_id, self.all_special_tokens) if index is not None
        ]

    def __len__(self) -> int:
        """The vocabulary size including added tokens."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def backend_tokenizer(self) -> Tokenizer:
        return self._tokenizer

    # ---- chat template ----

    def get_chat_template(self) -> str:
        """The template apply_chat_template uses: the single one, or the "default" of several."""
        if isinstance(self.chat_template, dict):
            if "default" in self.chat_template:
                return self.chat_template["default"]
            raise ValueError(
                "This model has multiple chat templates with no default specified! Available "
                f"template names are {sorted(self.chat_template)}."
            )
        if self.chat_template is None:
            raise ValueError(
                "Cannot use chat template functions because tokenizer.chat_template is not set!"
            )
        return self.chat_template

    def apply_chat_template(
        self,
        conversation: Sequence[Mapping[str, Any]],
        tokenize: bool = False,
        add_generation_prompt: bool = False,
    ) -> str:
        """The conversation rendered by the chat template, as text (tokenize=False only)."""
        if tokenize:
            raise ValueError(
                "ChatTokenizer.apply_chat_template supports tokenize=False only; "
                "tokenize the text with __call__(text, add_special_tokens=False)"
            )
        template = self.get_chat_template()
        if isinstance(conversation, (list, tuple)) and len(conversation) == 0:
            raise ValueError(
                "Cannot apply chat template to an empty conversation. Provide at least one message."
            )
        if isinstance(conversation, (list, tuple)) and (
            isinstance(conversation[0], (list, tuple)) or hasattr(conversation[0], "messages")
        ):
            raise ValueError("ChatTokenizer.apply_chat_template renders one conversation at a time")
        chat = _plain_template_data(_normalize_messages(conversation))
        for message in chat:
            if not isinstance(message, dict):
                raise TypeError(
                    "Chat messages should be dicts, dataclasses or pydantic models, "
                    f"but got {message!r}."
                )
        chat = _alias_reasoning_fields(chat)
        return _compile(template).render(
            messages=chat,
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **_plain_template_data(self.special_tokens_map),
        )

    # ---- encoding and decoding ----

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; with add_special_tokens, the post-processor's tokens too.

        Note the default: False here (what chatcli always wants), True in transformers.
        """
        if not isinstance(text, str):
            raise ValueError(f"text input must be of type `str`, got {type(text).__name__}")
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text, add_special_tokens=add_special_tokens)}

    def decode(
        self,
        ids: Sequence[int],
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> str:
        """Text of `ids`; clean-up defaults to the config's and, as in transformers, is ignored
        for BPE models unless the config forces it."""
        token_ids = [ids] if isinstance(ids, int) else [int(index) for index in ids]
        text: str = self._tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        if clean_up_tokenization_spaces and (
            type(self._tokenizer.model).__name__ != "BPE" or self._clean_up_for_bpe
        ):
            for old, new in _CLEAN_UP_REPLACEMENTS:
                text = text.replace(old, new)
        return text

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str | None]:
        """The token string of each id (None for an id outside the vocabulary)."""
        return [self._tokenizer.id_to_token(int(index)) for index in ids]

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int | None]:
        """The id of each token, or the unknown token's id when it is not in the vocabulary."""
        return [self._token_to_id(token) for token in tokens]
