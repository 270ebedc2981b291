"""Issue 8 item 8: the OpenAI-compatible API, driven by the official `openai` client against the real app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest

from bots.compose import App
from bots.http import CompletionLimits
from tests.bots.http_support import GatedGenerator, serve
from tests.support import app_settings, indexed_app

KEY = "openai-client-test-key"
NOTE = """# Kerberoasting

Kerberoasting requests Kerberos service tickets for accounts with a service principal name and cracks them
offline. Detect it with event ID 4769 where the ticket encryption type is RC4 (0x17). Use long random
passwords for service accounts and prefer AES encryption for Kerberos tickets.
"""
QUESTION = "How do I detect Kerberoasting?"


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    settings = app_settings(tmp_path, http_api_key=KEY)
    async with indexed_app(settings, tmp_path, index={"kerberoasting.md": NOTE}) as app:
        yield app


@pytest.fixture
async def api(app: App) -> AsyncIterator[openai.AsyncOpenAI]:
    async with serve(app) as adapter:
        client = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{adapter.port}/v1", api_key=KEY, max_retries=0
        )
        try:
            yield client
        finally:
            await client.close()


def _ask(**extra: object) -> dict:
    return {"model": "extractive", "messages": [{"role": "user", "content": QUESTION}], **extra}


async def test_a_whole_answer_reports_usage(app: App, api: openai.AsyncOpenAI) -> None:
    completion = await api.chat.completions.create(**_ask())
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and "4769" in (choice.message.content or "")
    usage = completion.usage
    assert usage is not None
    assert usage.completion_tokens == app.generator.count_tokens(choice.message.content or "")
    assert usage.prompt_tokens > app.generator.count_tokens(QUESTION)  # system text and passages too
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_max_tokens_cuts_the_answer_with_finish_reason_length(
    app: App, api: openai.AsyncOpenAI
) -> None:
    completion = await api.chat.completions.create(**_ask(max_tokens=5))
    choice = completion.choices[0]
    assert choice.finish_reason == "length"
    assert completion.usage is not None and 1 <= completion.usage.completion_tokens <= 5
    assert app.generator.count_tokens(choice.message.content or "") <= 5
    streamed = await api.chat.completions.create(**_ask(max_tokens=5, stream=True))
    chunks = [chunk async for chunk in streamed]
    assert chunks[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == choice.message.content


async def test_stop_sequences_end_the_answer_before_them(api: openai.AsyncOpenAI) -> None:
    full = (await api.chat.completions.create(**_ask())).choices[0].message.content or ""
    assert "4769" in full
    stopped = (await api.chat.completions.create(**_ask(stop=["4769"]))).choices[0]
    assert stopped.finish_reason == "stop"
    assert stopped.message.content == full[: full.index("4769")]
    streamed = await api.chat.completions.create(**_ask(stop=["4769", "never-there"], stream=True))
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in streamed])
    assert text == stopped.message.content


async def test_streaming_comes_in_pieces_with_usage_last(api: openai.AsyncOpenAI) -> None:
    whole = (await api.chat.completions.create(**_ask())).choices[0].message.content
    stream = await api.chat.completions.create(**_ask(stream=True, stream_options={"include_usage": True}))
    chunks = [chunk async for chunk in stream]
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 2  # the intro and each quoted passage arrive separately
    assert "".join(pieces) == whole
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


async def test_temperature_and_max_tokens_reach_the_generator(tmp_path: Path) -> None:
    generator = GatedGenerator(["one two ", "three four ", "five"])
    generator.gate.set()
    settings = app_settings(tmp_path, http_api_key=KEY)
    async with indexed_app(settings, tmp_path, generator=generator) as app, serve(app) as adapter:
        client = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{adapter.port}/v1", api_key=KEY, max_retries=0
        )
        async with client:
            await client.chat.completions.create(**_ask(temperature=0.0, max_tokens=40))
            await client.chat.completions.create(**_ask(temperature=1.3))
    assert generator.params[0].temperature == 0.0 and generator.params[0].max_new_tokens == 40
    assert generator.params[1].temperature == 1.3
    assert generator.params[1].max_new_tokens == settings.max_new_tokens


async def test_content_parts_are_read_as_text(api: openai.AsyncOpenAI) -> None:
    parts = [{"type": "text", "text": "How do I detect"}, {"type": "text", "text": "Kerberoasting?"}]
    completion = await api.chat.completions.create(model="m", messages=[{"role": "user", "content": parts}])
    assert "4769" in (completion.choices[0].message.content or "")


async def test_bad_parameters_are_a_400(api: openai.AsyncOpenAI) -> None:
    for extra in (
        {"max_tokens": 0},
        {"temperature": 3},
        {"stop": ["a", "b", "c", "d", "e"]},
        {"max_tokens": "5"},
    ):
        with pytest.raises(openai.BadRequestError):
            await api.chat.completions.create(**_ask(**extra))


def test_completion_limits_hold_back_a_possible_stop_sequence() -> None:
    limits = CompletionLimits(lambda text: len(text.split()), None, ["STOP"])
    sent = limits.feed("abc ST")
    assert sent == "abc"  # "ST" could begin "STOP": held back
    sent += limits.feed("ART x STO")
    assert not sent.endswith(("S", "ST", "STO")) and limits.reason is None
    sent += limits.feed("P y")
    assert limits.reason == "stop" and sent == limits.text == "abc START x "
    words = CompletionLimits(lambda text: len(text.split()), 3, [])
    assert words.feed("one two ") == "one two "
    assert words.feed("three four five") == "three " and words.reason == "length"
