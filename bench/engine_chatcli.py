"""chatcli's native engine as bench/vs_llamacpp.py drives it.

Contract: `ChatcliEngine(folder, dtype, quantize)` loads a transformers folder with
`NativeCausalLM.from_folder(folder, dtype)` + `.quantize(mode)` and exposes it as the
`LanguageModel` chatcli decodes with (`.lm`, a `NativeLanguageModel`: the prefill
returns the last position's logits, then one forward per token), for the harness's
greedy loop (`feed` None: the loop's default torch input). `decode_bytes()` is what a
decode step reads: every linear as stored after quantization (the head included) and
the norms. `precision` names the class in the report ("bf16 + int8").
`compiled=True` decodes through the compiled decode step `chatcli compile` built for
that dtype and quantization (chatcli's cache; `.lm` a `CompiledLanguageModel`), and
ends the script with the command to run when it is missing or stale.

It knows nothing about llama.cpp or GGUF files; the thread count is the caller's
(`torch.set_num_threads`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class ChatcliEngine:
    label = "chatcli"
    feed = None  # the harness's default: a one-element torch tensor

    def __init__(self, folder: Path, dtype: str, quantize: str, compiled: bool = False) -> None:
        import torch

        from chatcli.lm.llama import NativeCausalLM
        from chatcli.lm.native import NativeLanguageModel

        self.model = NativeCausalLM.from_folder(folder, getattr(torch, dtype))
        self.model.quantize(quantize)
        self.lm: Any = NativeLanguageModel(self.model)
        self.precision = f"{dtype.replace('float', 'fp').replace('bfp', 'bf')}" + (
            f" + {quantize}" if quantize != "none" else "")
        if compiled:
            from chatcli.lm.compiled import CompiledLanguageModel, folder_fingerprint
            from chatcli.loader import compiled_package
            from chatcli.runtime import Runtime

            package = compiled_package(folder, Runtime("cpu", dtype, None, quantize))
            self.lm = CompiledLanguageModel.open(self.model, package, folder_fingerprint(folder))
            if not self.lm.compiled:
                raise SystemExit(f"{self.lm.reason}: run `chatcli compile --dtype {dtype} "
                                 f"--quantize {quantize}` first (minutes, once)")
            self.precision += " compiled"

    def decode_bytes(self) -> int:
        from chatcli.lm.quant import Dense, Int4Linear, Int8Linear

        def nbytes(lin: Any) -> int:
            if isinstance(lin, Dense):
                tensors = [lin.weight]
            elif isinstance(lin, Int8Linear):
                tensors = [lin.qweight, lin.scales]
            elif isinstance(lin, Int4Linear):
                tensors = [lin.packed, lin.scales_and_zeros]
            else:
                raise TypeError(type(lin))
            if lin.bias is not None:
                tensors.append(lin.bias)
            return sum(t.numel() * t.element_size() for t in tensors)

        m = self.model
        total = nbytes(m.head) + m.norm.numel() * m.norm.element_size()
        for layer in m.layers:
            attn = [layer.qkv] if layer.qkv is not None else [layer.q, layer.k, layer.v]
            mlp = [layer.gate_up] if layer.gate_up is not None else [layer.gate, layer.up]
            total += sum(nbytes(lin) for lin in [*attn, layer.o, *mlp, layer.down])
            total += sum(t.numel() * t.element_size() for t in (layer.input_norm, layer.post_norm))
        return total

    def close(self) -> None:
        pass
