"""The weights bench/vs_llamacpp.py gives both engines: per model, chatcli's transformers
folder and llama.cpp's GGUF of each type.

Contract: `prepare(model, kinds, root, threads, log)` returns `ModelFiles`: the fp32
safetensors folder (with tokenizer.json) and, for each GGUF type in `kinds` (F32, BF16,
Q8_0, Q4_1), its file. Models:
- "smollm2": the registry's default alias (smollm2-135m), chatcli's converted folder and
  the source Q4_1 GGUF, through chatcli's own `sources.fetch` / `loader.ensure_converted`;
  its Q4_1 is that original GGUF.
- "qwen0.5b": random weights (seed 0, transformers' init) with Qwen2.5-0.5B's
  architecture config and SmolLM2's tokenizer files, saved once under `root`.
F32 and BF16 come from llama.cpp's converter (bench/gguf_converter.py), the quantized
types from the F32 GGUF (`llama_model_quantize`). Every file lives under `root/<model>/`
and is made once, so a rerun only measures; `need_ggufs=False` only names the files
(the memory probe, which must not convert). Why qwen0.5b's conversion is told its
pre-tokenizer is in docs/benchmarks.md ("chatcli vs llama.cpp").

It knows nothing about measuring, the engines or the report.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine_llamacpp import quantize_gguf
from gguf_converter import Converter, convert, ensure_converter

MODELS = ("smollm2", "qwen0.5b")
QWEN25_05B = {  # Qwen/Qwen2.5-0.5B config.json (architecture fields)
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_act": "silu",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "max_window_layers": 24,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "use_sliding_window": False,
    "sliding_window": 32768,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "vocab_size": 151936,
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "vocab.json", "merges.txt")
CONVERTED = {"F32": "f32", "BF16": "bf16"}  # GGUF type -> the converter's --outtype


@dataclass
class ModelFiles:
    name: str
    folder: Path  # transformers-format fp32 safetensors + tokenizer.json
    ggufs: dict[str, Path] = field(default_factory=dict)  # GGUF type -> file


def smollm2_sources() -> tuple[Path, Path]:
    """(chatcli's converted folder, the source Q4_1 GGUF) of the default alias."""
    from chatcli import sources
    from chatcli.loader import ensure_converted
    from chatcli.progress import SilentReporter
    from chatcli.registry import load_registry

    spec = load_registry().resolve("smollm2-135m")
    weights = sources.fetch(spec, SilentReporter())
    assert weights.gguf_path is not None
    return ensure_converted(spec, weights, SilentReporter()), weights.gguf_path


def make_qwen_random(target: Path, tokenizer_folder: Path, log: Callable[[str], None]) -> Path:
    if (target / ".done").is_file():
        return target
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    log("creating the random-weight model with Qwen2.5-0.5B's config")
    target.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = Qwen2Config(**{k: v for k, v in QWEN25_05B.items() if k != "architectures"},
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    config.architectures = QWEN25_05B["architectures"]
    model = Qwen2ForCausalLM(config).to(torch.float32).eval()  # std 0.02 normal init
    model.save_pretrained(target, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_folder / name).is_file():
            shutil.copy(tokenizer_folder / name, target / name)
    (target / ".done").write_text("ok\n")
    return target


def prepare(name: str, kinds: list[str], root: Path, threads: int,
            log: Callable[[str], None], need_ggufs: bool = True) -> ModelFiles:
    """The folder and the GGUF of each type in `kinds` for model `name` (see the module)."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    smol_folder, smol_q41 = smollm2_sources()
    if name == "smollm2":
        files = ModelFiles(name, smol_folder)
    else:
        files = ModelFiles(name, make_qwen_random(folder / "hf", smol_folder, log))
    original = {"Q4_1": smol_q41} if name == "smollm2" else {}
    paths = {kind: original.get(kind, folder / f"{name}-{kind}.gguf") for kind in kinds}
    if need_ggufs:
        quantized = [k for k in kinds if k not in CONVERTED and k not in original]
        converted = sorted({*(k for k in kinds if k in CONVERTED), *(["F32"] if quantized else [])})
        converter: Converter | None = ensure_converter(root, log) if converted else None
        # qwen0.5b: SmolLM2's tokenizer files under a qwen2 config fail the converter's
        # pre-tokenizer check; "smollm" is what they really use (docs/benchmarks.md).
        pre = "smollm" if name == "qwen0.5b" else None
        f32 = folder / f"{name}-F32.gguf"
        for kind in converted:
            assert converter is not None
            convert(converter, files.folder, CONVERTED[kind], paths.get(kind, f32), log, pre)
        for kind in quantized:
            quantize_gguf(f32, kind, paths[kind], threads, log)
    files.ggufs.update(paths)
    return files
