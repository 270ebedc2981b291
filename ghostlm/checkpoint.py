"""Loading and saving GhostLM weights.

Accepted inputs (``load_model``):

* an upstream trainer checkpoint ``.pt``: a dict with ``config`` (``asdict(GhostLMConfig)``) and
  ``model_state_dict`` (or ``model``); optimizer/scaler entries are ignored;
* a quantized/half ``.pt``: the same layout (or a bare state dict plus a sibling config json) with float16/bfloat16
  tensors. CPU matmuls in fp16 are slow and lossy, so these are upcast to float32 unless ``dtype`` says otherwise;
* ``.safetensors`` + ``<stem>.config.json`` or ``config.json`` beside it (upstream ``scripts/export.py`` layout).
  ``safetensors.torch.save_model`` stores the tied embedding once as ``lm_head.weight``; we re-tie it;
* a directory holding one of the above.

Memory: the model is built on the meta device and takes the loaded tensors as its parameters
(:meth:`GhostLM.from_state_dict`), so the weights exist once while loading, not twice (a random init plus the
file's). Measured on the 81M shape (process peak, torch imported): ``.pt`` ~615 MB instead of ~1 GB, then
~795 MB with int8 (quantized in place) instead of ~1.03 GB; ``.safetensors`` (copied out of the file mapping)
~850 MB with or without int8, instead of ~1.03 GB.

Security: ``.pt`` files are pickles. We only ever call ``torch.load(weights_only=True)``, which refuses arbitrary
globals. If a checkpoint needs a non-allowlisted global (e.g. a pickled custom class or numpy scalar), we raise
:class:`CheckpointError` instead of silently retrying with ``weights_only=False`` - that would execute code from
the file. Re-export such a checkpoint to safetensors from a trusted environment instead.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .config import GhostLMConfig
from .model import GhostLM

logger = logging.getLogger(__name__)

PathLike = str | Path

# Non-persistent buffers that some older upstream revisions saved; harmless to drop.
_IGNORABLE_SUFFIXES = (
    "causal_mask",
    "attn.mask",
    "attn.bias_mask",
    "inv_freq",
    "cos_cached",
    "sin_cached",
    "rope.cos",
    "rope.sin",
)


class CheckpointError(ValueError):
    """A checkpoint could not be loaded; the message says which file and why."""


def _find_in_dir(d: Path) -> Path:
    for name in ("model.safetensors", "best_model.pt", "model.pt"):
        if (d / name).is_file():
            return d / name
    for pattern in ("*.safetensors", "*.pt", "*.pth"):
        found = sorted(d.glob(pattern))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise CheckpointError(
                f"{d}: several candidate checkpoints ({', '.join(p.name for p in found)}); pass one file explicitly"
            )
    raise CheckpointError(f"{d}: no model.safetensors / *.safetensors / *.pt checkpoint in this directory")


def _sibling_config(path: Path) -> dict[str, Any] | None:
    for cand in (path.with_name(f"{path.stem}.config.json"), path.with_name("config.json")):
        if cand.is_file():
            try:
                config: dict[str, Any] = json.loads(cand.read_text(encoding="utf-8"))
                return config
            except (OSError, json.JSONDecodeError) as e:
                raise CheckpointError(f"{cand}: unreadable config json: {e}") from e
    return None


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only=True refused a global. Do NOT fall back to full unpickling: that runs code from the file.
        raise CheckpointError(
            f"{path}: refusing to load - the file needs Python objects outside torch's weights-only allowlist "
            f"({str(e).splitlines()[-1] if str(e) else e!r}). Unpickling them could execute arbitrary code, so "
            f"GhostLM only loads .pt files with torch.load(weights_only=True). Convert the checkpoint to "
            f"safetensors in a trusted environment (ghostlm.save_safetensors)."
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(e).__name__}: {e})") from e


def _load_pt(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    obj = _torch_load(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    config = obj.get("config")
    for key in ("model_state_dict", "model", "state_dict"):
        if isinstance(obj.get(key), Mapping):
            state = dict(obj[key])
            break
    else:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            state = dict(obj)  # a bare state dict (e.g. a quantize script output)
        else:
            raise CheckpointError(
                f"{path}: no model_state_dict/model entry (keys: {sorted(map(str, obj))[:10]})"
            )
    if config is not None and not isinstance(config, Mapping):
        # Some trainers pickle the dataclass itself; weights_only would already have refused that.
        raise CheckpointError(f"{path}: 'config' entry is a {type(config).__name__}, expected a dict")
    return state, (dict(config) if config is not None else None)


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        # load_file's tensors are views of a mapping of the file, and the model will take them as its parameters:
        # a file overwritten under a running bot (`cp` over it) would change its weights or kill it with SIGBUS.
        state = {k: v.clone() for k, v in load_file(str(path), device="cpu").items()}
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({e})") from e
    # save_model drops one of two shared tensors and records {"dropped_name": "kept_name"} in the metadata.
    for dropped, kept in metadata.items():
        if dropped not in state and kept in state and isinstance(kept, str):
            state[dropped] = state[kept]
    return state


def _clean_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        for prefix in ("_orig_mod.", "module."):  # torch.compile / DDP wrappers
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    if "token_embedding.weight" not in out and "lm_head.weight" in out:
        out["token_embedding.weight"] = out["lm_head.weight"]  # tied
    if "lm_head.weight" not in out and "token_embedding.weight" in out:
        out["lm_head.weight"] = out["token_embedding.weight"]
    return out


def _check_state(expected: Mapping[str, torch.Tensor], state: dict[str, torch.Tensor], path: Path) -> None:
    """``state``'s keys and shapes must match ``expected`` (the config's); a clear error names the file."""
    unexpected = [k for k in state if k not in expected]
    ignorable = [k for k in unexpected if k.endswith(_IGNORABLE_SUFFIXES)]
    if ignorable:
        logger.warning("%s: ignoring %d buffer entries: %s", path, len(ignorable), ", ".join(ignorable[:5]))
    unexpected = [k for k in unexpected if k not in ignorable]
    missing = [k for k in expected if k not in state]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: state dict does not match the config - missing keys: {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}; unexpected keys: {unexpected[:10]}"
            f"{' ...' if len(unexpected) > 10 else ''}"
        )
    for k, ref in expected.items():
        if tuple(state[k].shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{path}: shape mismatch for {k}: checkpoint has {tuple(state[k].shape)}, "
                f"the config expects {tuple(ref.shape)}"
            )


def load_model(
    path: PathLike, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> GhostLM:
    """Load a GhostLM checkpoint (.pt, .safetensors or a directory) and return the model in eval mode."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint file or directory")
    if p.is_dir():
        p = _find_in_dir(p)
    if p.suffix == ".safetensors":
        state, config = _load_safetensors(p), _sibling_config(p)
        if config is None:
            raise CheckpointError(
                f"{p}: safetensors weights need {p.stem}.config.json or config.json beside them"
            )
    else:
        state, config = _load_pt(p)
        if config is None:
            config = _sibling_config(p)
        if config is None:
            raise CheckpointError(f"{p}: checkpoint has no 'config' entry and no sibling config json")
    state = _clean_state(state)

    try:
        cfg = GhostLMConfig.from_dict(config)
        with torch.device(
            "meta"
        ):  # names and shapes only, nothing allocated; unsupported options refused here
            expected = GhostLM(cfg).state_dict()
    except (TypeError, ValueError, NotImplementedError) as e:
        raise CheckpointError(f"{p}: unusable config: {e}") from e

    src_dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    target = dtype or torch.float32  # half checkpoints are upcast by default (see module doc)
    if src_dtypes - {torch.float32}:
        logger.info("%s: casting %s weights to %s", p, sorted(map(str, src_dtypes)), target)
    state = {k: (v.to(torch.float32) if v.is_floating_point() else v) for k, v in state.items()}
    _check_state(expected, state, p)
    model = GhostLM.from_state_dict(cfg, {k: state[k] for k in expected})  # its parameters ARE these tensors
    del state
    model.to(device=device, dtype=target)
    model.eval()
    return model


def save_safetensors(model: GhostLM, out_dir: PathLike) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (upstream export layout). Returns the weights path."""
    from safetensors.torch import save_model

    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    weights = d / "model.safetensors"
    save_model(model, str(weights))
    (d / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2), encoding="utf-8")
    return weights
