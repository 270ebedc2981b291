"""Text generators: one protocol (base.py), four backends, one prompt layout (render.py)."""

from core.generators.base import ChatTurn, GenerationParams, Generator, PromptSpec
from core.generators.errors import GeneratorError
from core.generators.extractive import ExtractiveGenerator
from core.generators.factory import build_generator, detect_model_kind
from core.generators.ghostlm_backend import GhostLMGenerator
from core.generators.hf import HFGenerator
from core.generators.openai_compat import OpenAIGenerator
from core.generators.render import render_messages, render_turns

__all__ = [
    "ChatTurn",
    "ExtractiveGenerator",
    "GenerationParams",
    "Generator",
    "GeneratorError",
    "GhostLMGenerator",
    "HFGenerator",
    "OpenAIGenerator",
    "PromptSpec",
    "build_generator",
    "detect_model_kind",
    "render_messages",
    "render_turns",
]
