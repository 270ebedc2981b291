"""Pick and construct the generator backend from settings (nothing is loaded here: backends load lazily)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

from core.generators.base import Generator
from core.generators.errors import GeneratorError
from core.generators.extractive import ExtractiveGenerator
from core.generators.ghostlm_backend import GhostLMGenerator
from core.generators.hf import HFGenerator
from core.generators.openai_compat import OpenAIGenerator
from core.settings import Settings

logger = logging.getLogger(__name__)

_GHOSTLM_SUFFIXES = (".pt", ".pth", ".safetensors")
_GHOSTLM_FIELDS = ("d_model", "n_layers", "n_heads")


def _read_config(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GeneratorError(f"{path}: unreadable config.json ({e})") from e
    return data if isinstance(data, dict) else {}


def detect_model_kind(path: Path) -> Literal["ghostlm", "hf"]:
    """'ghostlm' for a GhostLM checkpoint file or directory, 'hf' for a transformers model directory."""
    if not path.exists():
        raise GeneratorError(
            f"MODEL_PATH {path} does not exist; set it to a GhostLM checkpoint (.pt / "
            f".safetensors / directory) or a Hugging Face model directory, or unset it"
        )
    if path.is_file():
        if path.suffix in _GHOSTLM_SUFFIXES:
            return "ghostlm"
        raise GeneratorError(
            f"MODEL_PATH {path}: unsupported file type {path.suffix!r} "
            f"(expected .pt, .pth or .safetensors, or a model directory)"
        )
    config = path / "config.json"
    if config.is_file():
        data = _read_config(config)
        if "model_type" in data:
            return "hf"
        if all(k in data for k in _GHOSTLM_FIELDS):
            return "ghostlm"
    if any(any(path.glob(f"*{suffix}")) for suffix in _GHOSTLM_SUFFIXES):
        return "ghostlm"  # e.g. an upstream trainer .pt, whose config is inside the checkpoint
    raise GeneratorError(
        f"MODEL_PATH {path}: neither a GhostLM checkpoint nor a Hugging Face model directory "
        f"(no config.json with model_type, no .pt/.safetensors)"
    )


def resolve_model_path(settings: Settings) -> Path | None:
    """MODEL_PATH as a local path; `hf:NAME` comes from the model cache, or is pulled on first start."""
    path = settings.model_path
    if path is None or not str(path).startswith("hf:"):
        return path
    from core.models_hub import ModelHubError, hub_from_settings

    try:
        return hub_from_settings(settings).resolve(str(path))
    except ModelHubError as e:
        raise GeneratorError(f"MODEL_PATH={path}: {e}") from None


def build_generator(settings: Settings) -> Generator:
    """settings.generator: 'auto' → model_path (GhostLM or HF) → openai_base_url → extractive."""
    kind = settings.generator
    path = resolve_model_path(settings)
    if kind == "auto":
        if path is not None:
            kind = detect_model_kind(path)
        elif settings.openai_base_url:
            kind = "openai"
        else:
            kind = "extractive"
    if kind in ("ghostlm", "hf"):
        if path is None:
            raise GeneratorError(f"GENERATOR={kind} needs MODEL_PATH (a checkpoint file or model directory)")
        if not path.exists():
            raise GeneratorError(f"MODEL_PATH {path} does not exist")
    logger.info("generator backend: %s", kind)
    if kind == "ghostlm":
        return GhostLMGenerator(path, settings)
    if kind == "hf":
        if not path.is_dir():
            raise GeneratorError(
                f"GENERATOR=hf needs MODEL_PATH to be a model directory, got the file {path}"
            )
        return HFGenerator(path, torch_threads=settings.torch_threads)
    if kind == "openai":
        if not settings.openai_base_url:
            raise GeneratorError("GENERATOR=openai needs OPENAI_BASE_URL (e.g. http://127.0.0.1:11434/v1)")
        return OpenAIGenerator(
            settings.openai_base_url,
            settings.openai_api_key,
            settings.openai_model,
            settings.openai_context_length,
            timeout=settings.request_timeout_seconds,
            concurrency=settings.openai_concurrency,
        )
    return ExtractiveGenerator()
