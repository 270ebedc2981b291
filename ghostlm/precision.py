"""Weight precision and device: ``float32``, ``bfloat16`` (where the CPU/GPU has native support) and ``int8``
(weight-only dynamic quantization of every ``nn.Linear`` with torch's own ``torch.ao.quantization``).

``auto`` picks, on CUDA, bfloat16 when the GPU supports it; on CPU, int8 when torch has a quantized engine, else
bfloat16 when the CPU has native bf16 matrix instructions (AVX512-BF16 / AMX), else float32. Measured with
``ghostbot bench generate`` on the 81M shape (2-core AMX box): int8 decoded a single stream ~3x faster than
float32 while bfloat16 was no faster (decode is bound by reading weights, and bf16 matmuls with one row do not
use AMX well); on the fixtures int8 keeps 96-100% greedy agreement with float32 (max logit diff ~0.035).
int8 is CPU-only (torch's dynamic quantized kernels run on CPU).
"""

from __future__ import annotations

import logging
import warnings
from typing import Literal, TypeVar, cast

import torch
import torch.nn as nn

from .model import GhostLM

logger = logging.getLogger(__name__)

DType = Literal["auto", "float32", "bfloat16", "int8"]
Device = Literal["auto", "cpu", "cuda"]
M = TypeVar("M", bound=nn.Module)
DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "int8")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")


def resolve_device(device: str = "auto") -> str:
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("MODEL_DEVICE=cuda but torch sees no CUDA GPU (use auto or cpu)")
    return device


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16 (what oneDNN uses for fast bf16 matmuls); Linux /proc/cpuinfo, else False."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def int8_supported() -> bool:
    return bool(torch.backends.quantized.supported_engines) and any(
        e in ("fbgemm", "x86", "qnnpack", "onednn") for e in torch.backends.quantized.supported_engines
    )


def resolve_dtype(dtype: str = "auto", device: str = "cpu") -> str:
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if dtype == "int8" and device != "cpu":
        raise ValueError(
            "int8 weights run on the CPU only (torch dynamic quantization); use bfloat16 on cuda"
        )
    if dtype != "auto":
        return dtype
    if device == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if int8_supported():
        return "int8"
    return "bfloat16" if cpu_has_native_bf16() else "float32"


def prepare_model(model: M, dtype: str = "auto", device: str = "auto") -> tuple[M, str, str]:
    """Move ``model`` (eval mode) to the device and precision asked for. Returns (model, dtype, device) resolved.
    ``model`` is changed in place (pass a copy to keep the original).

    Norms are computed in float32 whatever the weights (RMSNorm upcasts). The KV cache follows the weights
    (bfloat16 for bfloat16); under int8 (float32 activations) it is bfloat16 where the CPU has native bf16, and
    the embedding table (looked up only: the head has its own int8 copy) is stored in bfloat16.
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    model = model.eval().to(dev)
    if dt == "bfloat16":
        model = model.to(torch.bfloat16)
    elif dt == "int8":
        from torch.ao.quantization import quantize_dynamic

        with (
            warnings.catch_warnings()
        ):  # torch.ao's deprecation notices (torchao migration) are not for users
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            # in place: a copy would hold the float32 weights twice at the loading peak (+324 MB on 81M)
            model = cast(M, quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True))
        if isinstance(model, GhostLM):
            # The head now has its own int8 copy of the tied table, so the float32 table is only looked up
            # (one row per token). Stored in bfloat16 it costs half (77 MB less on the 81M model); each row is
            # widened back to float32 on lookup, a relative rounding of 2^-9, far below int8's own error.
            model.token_embedding.to(torch.bfloat16)
            if cpu_has_native_bf16():
                # int8 keeps float32 activations, but a float32 KV cache is what bounds batched decoding: at 16
                # rows x 300 positions it is ~180 MB read per step against 81 MB of int8 weights. bfloat16
                # halves it; single and batched paths use the same cache dtype, so a row still equals alone.
                model.kv_dtype = torch.bfloat16
    logger.info("model weights: %s on %s", dt, dev)
    return model, dt, dev
