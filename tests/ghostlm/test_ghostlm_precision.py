"""MODEL_DTYPE / MODEL_DEVICE: bfloat16 and int8 weights against float32 on the upstream fixtures.

Reported per fixture: greedy-token agreement (teacher-forced: argmax at every position of the fixture input)
and the largest absolute logit difference. The thresholds are what these random-init fixtures reach; trained
models have larger logit margins and agree more.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from ghostlm import load_model
from ghostlm.precision import cpu_has_native_bf16, prepare_model, resolve_device, resolve_dtype

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "ghostlm"


def compare(name: str, dtype: str, *, cached: bool = False) -> tuple[float, float]:
    """(greedy agreement, max |logit diff|) of `dtype` weights vs float32 on the fixture input.

    `cached`: the reduced-precision model decodes one position at a time through its KV cache (the
    generation path, with the cache in its own dtype) instead of one full forward."""
    import numpy as np

    fp32 = load_model(FIX / name)
    x = torch.from_numpy(np.load(FIX / f"{name.split('.')[0]}.input.npy")).long()
    other, _, _ = prepare_model(copy.deepcopy(fp32), dtype, "cpu")
    with torch.inference_mode():
        ref = fp32(x)[0].float()
        if cached:
            cache = other.new_cache(x.size(0), x.size(1))
            steps = [other(x[:, t : t + 1], past_kv=cache, use_cache=True)[0] for t in range(x.size(1))]
            got = torch.cat(steps, dim=1).float()
        else:
            got = other(x)[0].float()
    agree = (ref.argmax(-1) == got.argmax(-1)).float().mean().item()
    return agree, (ref - got).abs().max().item()


@pytest.mark.parametrize("name", ["legacy.pt", "modern.pt"])
@pytest.mark.parametrize(("dtype", "min_agree", "max_diff"), [("bfloat16", 0.95, 0.05), ("int8", 0.9, 0.1)])
def test_reduced_precision_agrees_with_float32(
    name: str, dtype: str, min_agree: float, max_diff: float
) -> None:
    agree, diff = compare(name, dtype)
    print(f"\n{name} {dtype}: greedy agreement {agree:.3f}, max |logit diff| {diff:.4f}")
    assert agree >= min_agree and diff <= max_diff


@pytest.mark.parametrize("name", ["legacy.pt", "modern.pt"])
def test_int8_generation_path_with_its_cache_agrees_with_float32(name: str) -> None:
    model = prepare_model(load_model(FIX / name), "int8", "cpu")[0]
    assert model.kv_dtype == (torch.bfloat16 if cpu_has_native_bf16() else None)
    # the table is only looked up under int8 (the head has its own int8 copy): stored narrow, widened on lookup
    assert model.token_embedding.weight.dtype == torch.bfloat16
    assert model.activation_dtype == torch.float32
    agree, diff = compare(name, "int8", cached=True)
    print(
        f"\n{name} int8 cached (kv {model.cache_dtype}): agreement {agree:.3f}, max |logit diff| {diff:.4f}"
    )
    assert agree >= 0.9 and diff <= 0.1


def test_float32_is_unchanged() -> None:
    assert compare("modern.pt", "float32") == (1.0, 0.0)


def test_auto_and_bad_values() -> None:
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", "cpu") in ("bfloat16", "int8", "float32")
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("fp8", "cpu")
    with pytest.raises(ValueError, match="CPU only"):
        resolve_dtype("int8", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")
