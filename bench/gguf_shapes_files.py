"""The GGUF files bench/gguf_shapes.py measures: random-weight models of real models'
shapes, converted and quantized by llama.cpp's own tools.

Contract: `SHAPES` names each shape and its architecture config (the fields of the real
model's config.json that decide its shape and forward pass; Qwen2.5-0.5B's is
bench/vs_llamacpp_files.py's `QWEN25_05B`). `prepare(shape, types, root, threads, log)`
returns `ShapeFiles` for `root/<shape>/`, making what is missing once:
- `hf/`: a transformers checkpoint of random weights (seed 0, transformers' own init,
  std 0.02 normal; built in bfloat16, so the 1.7B shape needs 3.4 GB, not 7, in memory
  and on disk) with SmolLM2's tokenizer files (from chatcli's cache of the default
  alias, as vs_llamacpp_files does; a larger `vocab_size` than the tokenizer's 49152
  is kept and llama.cpp's converter pads the vocabulary, as for its qwen0.5b);
- `<shape>-F16.gguf`: llama.cpp's converter (bench/gguf_converter.py), `--outtype f16`,
  told the pre-tokenizer is "smollm" (SmolLM2's tokenizer under another architecture
  fails its check, see docs/benchmarks.md "chatcli vs llama.cpp"). Once it exists the
  checkpoint's safetensors are removed (config.json and the tokenizer stay: the GGUF is
  what every other file is made from and what both engines read);
- `<shape>-<TYPE>.gguf` for each type (Q4_K_M, Q4_0, Q8_0, ...: any
  `LLAMA_FTYPE_MOSTLY_<TYPE>`): llama.cpp's quantizer from the F16 file (`quantize_gguf`).
How long each step took is kept in `build.json` beside them (`ShapeFiles.build_s`;
`ShapeFiles.record` adds a step, e.g. a compiled step's build), so a later run that only
measures can still report it. `disk_bytes(folder)` sums the sizes of a folder's files.

It knows nothing about the engines, measuring or the report.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine_llamacpp import quantize_gguf
from gguf_converter import convert, ensure_converter
from vs_llamacpp_files import QWEN25_05B, TOKENIZER_FILES, smollm2_sources

SMOLLM2_360M = {  # HuggingFaceTB/SmolLM2-360M config.json (architecture fields)
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_act": "silu",
    "hidden_size": 960,
    "intermediate_size": 2560,
    "num_hidden_layers": 32,
    "num_attention_heads": 15,
    "num_key_value_heads": 5,
    "max_position_embeddings": 8192,
    "rope_theta": 100000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "mlp_bias": False,
    "initializer_range": 0.02,
    "vocab_size": 49152,
}
SMOLLM2_17B = {  # HuggingFaceTB/SmolLM2-1.7B config.json (architecture fields)
    **SMOLLM2_360M,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 24,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "rope_theta": 130000.0,
}
QWEN3_06B = {  # Qwen/Qwen3-0.6B config.json (architecture fields)
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_act": "silu",
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "max_window_layers": 28,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "use_sliding_window": False,
    "sliding_window": None,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "vocab_size": 151936,
}
SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-360m": SMOLLM2_360M,
    "smollm2-1.7b": SMOLLM2_17B,
    "qwen2.5-0.5b": QWEN25_05B,
    "qwen3-0.6b": QWEN3_06B,
}
PRE_TOKENIZER = "smollm"  # what SmolLM2's tokenizer files are, whatever the architecture


@dataclass
class ShapeFiles:
    shape: str
    folder: Path  # config.json + SmolLM2's tokenizer files (the weights only until F16)
    ggufs: dict[str, Path] = field(default_factory=dict)  # type -> file
    build_s: dict[str, float] = field(default_factory=dict)  # step -> seconds (build.json)

    @property
    def config(self) -> dict[str, Any]:
        return json.loads((self.folder / "config.json").read_text())

    def record(self, step: str, seconds: float) -> None:
        """Keep how long `step` took in build.json (the compiled steps' builds too)."""
        self.build_s[step] = round(seconds, 1)
        record = self.folder.parent / "build.json"
        record.write_text(json.dumps(self.build_s, indent=1) + "\n")


def make_random(shape: str, target: Path, tokenizer_folder: Path,
                log: Callable[[str], None]) -> None:
    """`target`: a bf16 checkpoint of random weights with `shape`'s config, once."""
    if (target / ".done").is_file() and any(target.glob("*.safetensors")):
        return
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    log(f"creating the random-weight model with {shape}'s config (bf16)")
    fields = {k: v for k, v in SHAPES[shape].items() if k not in ("architectures", "model_type")}
    config = AutoConfig.for_model(SHAPES[shape]["model_type"], **fields, bos_token_id=1,
                                  eos_token_id=2, pad_token_id=2)
    config.architectures = SHAPES[shape]["architectures"]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    shutil.rmtree(target, ignore_errors=True)
    model.save_pretrained(target, safe_serialization=True)
    del model
    for name in TOKENIZER_FILES:
        if (tokenizer_folder / name).is_file():
            shutil.copy(tokenizer_folder / name, target / name)
    (target / ".done").write_text("ok\n")


def prepare(shape: str, types: list[str], root: Path, threads: int,
            log: Callable[[str], None], need_ggufs: bool = True) -> ShapeFiles:
    """`shape`'s folder and its GGUF of each type in `types` (see the module);
    `need_ggufs=False` only names them (a probe process, which must build nothing)."""
    base = root / shape
    files = ShapeFiles(shape, base / "hf")
    f16 = base / f"{shape}-F16.gguf"
    files.ggufs = {"F16": f16, **{t: base / f"{shape}-{t}.gguf" for t in types}}
    record = base / "build.json"
    files.build_s = json.loads(record.read_text()) if record.is_file() else {}
    if not need_ggufs:
        return files
    base.mkdir(parents=True, exist_ok=True)

    def step(name: str, make: Callable[[], None]) -> None:
        start = time.perf_counter()
        make()
        files.record(name, time.perf_counter() - start)

    if not f16.is_file():
        if not any(files.folder.glob("*.safetensors")):
            tokenizer_folder, _ = smollm2_sources()
            step("random model", lambda: make_random(shape, files.folder, tokenizer_folder, log))
        converter = ensure_converter(root, log)
        step("F16 conversion", lambda: convert(converter, files.folder, "f16", f16, log,
                                               PRE_TOKENIZER))
    for weights in files.folder.glob("model*.safetensors*"):
        weights.unlink()  # the F16 GGUF holds the weights from now on
    for t in types:
        if not files.ggufs[t].is_file():
            step(f"quantize {t}", lambda t=t: quantize_gguf(f16, t, files.ggufs[t], threads,
                                                            log))
    return files


def disk_bytes(folder: Path) -> int:
    """Bytes the files under `folder` take (their sizes)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
