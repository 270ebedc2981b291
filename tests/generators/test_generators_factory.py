import json
from pathlib import Path

import pytest

from core.generators import (
    ExtractiveGenerator,
    GeneratorError,
    GhostLMGenerator,
    HFGenerator,
    OpenAIGenerator,
    build_generator,
)
from core.settings import Settings


def settings(**kw) -> Settings:
    return Settings(_env_file=None, **kw)


def test_auto_without_anything_is_extractive():
    assert isinstance(build_generator(settings()), ExtractiveGenerator)


def test_auto_openai_when_base_url_set():
    g = build_generator(
        settings(openai_base_url="http://127.0.0.1:9/v1", openai_api_key="sk-x", openai_context_length=8192)
    )
    assert isinstance(g, OpenAIGenerator) and g.context_length == 8192
    g.close()


def test_auto_detects_ghostlm_dir_and_file(ghostlm_dir: Path):
    for path in (ghostlm_dir, ghostlm_dir / "model.safetensors"):
        g = build_generator(settings(model_path=path, openai_base_url="http://127.0.0.1:9/v1"))
        assert isinstance(g, GhostLMGenerator) and g._engine is None  # nothing loaded yet


def test_auto_detects_hf_dir(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 10}))
    assert isinstance(build_generator(settings(model_path=tmp_path)), HFGenerator)


def test_auto_detects_bare_pt_dir(tmp_path: Path):
    (tmp_path / "best_model.pt").write_bytes(b"")
    assert isinstance(build_generator(settings(model_path=tmp_path)), GhostLMGenerator)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"model_path": Path("/nonexistent/model.pt")}, "does not exist"),
        ({"generator": "ghostlm"}, "needs MODEL_PATH"),
        ({"generator": "hf"}, "needs MODEL_PATH"),
        ({"generator": "openai"}, "needs OPENAI_BASE_URL"),
    ],
)
def test_clear_errors(kw, match):
    with pytest.raises(GeneratorError, match=match):
        build_generator(settings(**kw))


def test_unrecognised_dir_and_file(tmp_path: Path):
    with pytest.raises(GeneratorError, match="neither a GhostLM checkpoint nor"):
        build_generator(settings(model_path=tmp_path))
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(GeneratorError, match="unsupported file type"):
        build_generator(settings(model_path=f))


def test_explicit_extractive_ignores_model_path():
    assert isinstance(
        build_generator(settings(generator="extractive", model_path=Path("/nope"))), ExtractiveGenerator
    )
