"""load_model / save_safetensors: formats, error cases, config handling."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ghostlm import PRESETS, CheckpointError, GhostLM, GhostLMConfig, load_model, save_safetensors

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "ghostlm"


def _logits(model: GhostLM, name: str = "modern") -> np.ndarray:
    x = torch.from_numpy(np.load(FIX / f"{name}.input.npy"))
    with torch.inference_mode():
        return model(x)[0].numpy()


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such"):
        load_model(tmp_path / "nope.pt")


def test_truncated_pt(tmp_path):
    data = (FIX / "legacy.pt").read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(bad)


def test_truncated_safetensors(tmp_path):
    data = (FIX / "modern.safetensors").read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    shutil.copy(FIX / "modern.config.json", tmp_path / "bad.config.json")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(bad)


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    ckpt = torch.load(FIX / "modern.pt", weights_only=True)
    ckpt["model_state_dict"]["blocks.1.ffn.fc3.weight"] = torch.zeros(64, 100)
    torch.save(ckpt, tmp_path / "m.pt")
    with pytest.raises(CheckpointError) as ei:
        load_model(tmp_path / "m.pt")
    msg = str(ei.value)
    assert "blocks.1.ffn.fc3.weight" in msg and "(64, 100)" in msg and "(64, 192)" in msg


def test_missing_keys(tmp_path):
    ckpt = torch.load(FIX / "legacy.pt", weights_only=True)
    del ckpt["model_state_dict"]["ln_f.bias"]
    torch.save(ckpt, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=r"ln_f.bias"):
        load_model(tmp_path / "m.pt")


def test_config_mismatch_is_reported(tmp_path):
    ckpt = torch.load(FIX / "legacy.pt", weights_only=True)
    ckpt["config"]["use_rope"] = True  # legacy weights, modern config: pos_embedding unexpected
    torch.save(ckpt, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="pos_embedding"):
        load_model(tmp_path / "m.pt")


def test_fp16_checkpoint_is_upcast(tmp_path):
    ckpt = torch.load(FIX / "modern.pt", weights_only=True)
    half = {k: v.half() for k, v in ckpt["model_state_dict"].items()}
    torch.save({"config": ckpt["config"], "model_state_dict": half}, tmp_path / "q.pt")
    model = load_model(tmp_path / "q.pt")
    assert model.token_embedding.weight.dtype == torch.float32
    assert model.lm_head.weight is model.token_embedding.weight
    assert np.abs(_logits(model) - np.load(FIX / "modern.logits.npy")).max() < 5e-2
    kept = load_model(tmp_path / "q.pt", dtype=torch.bfloat16)
    assert kept.token_embedding.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("name", ["legacy.pt", "modern.pt", "modern.safetensors"])
def test_loaded_weights_are_the_files_once_with_real_buffers_and_the_tie(name):
    """Built on the meta device and given the file's tensors: nothing may stay on meta (the RoPE tables are
    derived, not stored), the head and the embedding must be one Parameter again, and the logits upstream's."""
    model = load_model(FIX / name)
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    assert all(t.device.type == "cpu" for t in tensors.values()), [k for k, t in tensors.items() if t.is_meta]
    assert model.lm_head.weight is model.token_embedding.weight
    assert model.num_params() == GhostLM(model.config).num_params()
    stem = name.split(".")[0]
    assert np.abs(_logits(model, stem) - np.load(FIX / f"{stem}.logits.npy")).max() <= 1e-4


def test_a_safetensors_file_overwritten_in_place_leaves_a_loaded_model_alone(tmp_path):
    """safetensors maps the file; a model still reading that mapping would change (or die of SIGBUS) when an
    operator copies a new checkpoint over the old one while the bot runs."""
    path = tmp_path / "model.safetensors"
    shutil.copy(FIX / "modern.safetensors", path)
    shutil.copy(FIX / "modern.config.json", tmp_path / "config.json")
    model = load_model(path)
    before = _logits(model)
    with path.open("r+b") as f:  # in place, same inode: what `cp new old` does
        f.seek(path.stat().st_size - 4096)
        f.write(b"\x7f" * 4096)
    assert np.array_equal(_logits(model), before)


def test_bare_state_dict_with_sibling_config(tmp_path):
    ckpt = torch.load(FIX / "modern.pt", weights_only=True)
    torch.save(ckpt["model_state_dict"], tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="config"):
        load_model(tmp_path / "w.pt")
    (tmp_path / "config.json").write_text(json.dumps(ckpt["config"]))
    assert np.abs(_logits(load_model(tmp_path / "w.pt")) - np.load(FIX / "modern.logits.npy")).max() <= 1e-4


def test_directory_input_and_save_roundtrip(tmp_path):
    model = load_model(FIX / "modern.pt")
    weights = save_safetensors(model, tmp_path / "export")
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        stored = set(f.keys())  # safe_open is not a mapping: `in f` raises
        assert "token_embedding.weight" not in stored and "lm_head.weight" in stored  # tied: stored once
    again = load_model(tmp_path / "export")
    assert again.lm_head.weight is again.token_embedding.weight
    assert np.array_equal(_logits(again), _logits(model))
    # a directory with a single .pt works too
    (tmp_path / "ptdir").mkdir()
    shutil.copy(FIX / "legacy.pt", tmp_path / "ptdir" / "ckpt_1000.pt")
    assert (
        np.abs(_logits(load_model(tmp_path / "ptdir"), "legacy") - np.load(FIX / "legacy.logits.npy")).max()
        <= 1e-4
    )


def test_empty_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no model"):
        load_model(tmp_path)


def test_refuses_non_allowlisted_pickle(tmp_path):
    ckpt = torch.load(FIX / "legacy.pt", weights_only=True)
    ckpt["extra"] = argparse.Namespace(a=1)  # an arbitrary Python object
    torch.save(ckpt, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_model(tmp_path / "evil.pt")


def test_unknown_config_field_warns(caplog):
    d = json.loads((FIX / "modern.config.json").read_text())
    d["shiny_new_option"] = 3
    with caplog.at_level(logging.WARNING, logger="ghostlm.config"):
        cfg = GhostLMConfig.from_dict(d)
    assert "shiny_new_option" in caplog.text
    assert cfg.use_rope and cfg.d_ff == 256


def test_upstream_config_roundtrip():
    d = json.loads((FIX / "legacy.config.json").read_text())
    assert GhostLMConfig.from_dict(d).to_dict() == d


def test_presets():
    wide = GhostLMConfig.from_preset("ghost-wide-v0.9")
    assert (wide.n_layers, wide.d_model, wide.n_heads, wide.d_ff, wide.vocab_size, wide.context_length) == (
        6,
        768,
        12,
        3072,
        50264,
        512,
    )
    assert wide.use_rope and wide.use_swiglu and wide.use_rmsnorm and wide.bias
    assert 80e6 < wide.num_params_estimate() < 82e6
    v05 = PRESETS["ghost-small-v0.5"]
    assert {k for k in v05 if k.startswith("use_")} == {"use_rope", "use_swiglu", "use_rmsnorm"}
    base = GhostLMConfig.from_preset("ghost-base")
    assert base.kv_heads == 4 and base.use_qk_norm
    tiny = GhostLM(GhostLMConfig.from_preset("ghost-tiny", vocab_size=512))
    assert tiny.num_params() == tiny.config.num_params_estimate()
    with pytest.raises(ValueError):
        GhostLMConfig.from_preset("ghost-huge")
