"""Judge clients: an OpenAI-compatible endpoint, or a local model (see local.py).

A judge answers three kinds of question: rate one answer on one criterion (``rate``, N sampled repeats),
compare two answers (``compare``), and pick a multiple-choice letter (``complete`` + strict parsing). Replies
that do not parse are retried and then recorded as unparsed — never turned into a score.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Protocol

import httpx

from core.redaction import redact_url

from .parse import JudgeParseError, PairVerdict, Rating, parse_pair, parse_rating

logger = logging.getLogger(__name__)


class JudgeUnavailableError(RuntimeError):
    """The judge cannot be reached or refuses requests. The message never contains the API key."""


@dataclass
class Sample:
    """One judged repeat: a rating, or ``rating is None`` with the error after all attempts."""

    rating: Rating | None
    attempts: int
    error: str | None = None


@dataclass
class RatingSet:
    samples: list[Sample]
    expected: float | None = None  # G-Eval probability-weighted score (local judges only)
    probabilities: list[float] | None = None  # p(1..5) behind ``expected``

    @property
    def scores(self) -> list[int]:
        return [s.rating.score for s in self.samples if s.rating is not None]

    @property
    def unparsed(self) -> int:
        return sum(1 for s in self.samples if s.rating is None)


@dataclass
class PairResult:
    verdict: PairVerdict | None
    attempts: int
    error: str | None = None


class Judge(Protocol):
    name: str
    has_expectation: bool  # True when ``rate`` also returns the G-Eval expectation

    def describe(self) -> dict: ...
    async def check(self) -> None: ...
    async def rate(self, system: str, prompt: str, *, repeats: int, seed: int) -> RatingSet: ...
    async def compare(self, system: str, prompt: str, *, seed: int) -> PairResult: ...
    async def close(self) -> None: ...


def derive_seed(*parts: object) -> int:
    """A stable 31-bit seed from the run seed and the item identity (reproducible, order independent)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class OpenAIJudge:
    """Any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp server, Ollama …).

    The key is read from the environment variable ``api_key_env`` at construction and sent only as a header.
    JSON mode (``response_format``) is asked for; an endpoint that rejects it is asked again without it, and
    replies are always parsed defensively.
    """

    has_expectation = False
    concurrent = True  # calls may overlap; ``concurrency`` bounds them

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "JUDGE_API_KEY",
        temperature: float = 0.7,
        max_attempts: int = 3,
        timeout: float = 60.0,
        max_tokens: int = 200,
        concurrency: int = 4,
        transport: httpx.AsyncBaseTransport | None = None,
        http_retries: int = 3,
        retry_backoff: float = 0.5,
    ) -> None:
        if not base_url:
            raise ValueError("the OpenAI-compatible judge needs --judge-url")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = f"openai:{model}"
        self.api_key_env = api_key_env
        self.temperature = temperature
        self.max_attempts = max(1, max_attempts)
        self.max_tokens = max_tokens
        self.http_retries = http_retries
        self.retry_backoff = retry_backoff
        self._json_mode = True
        self._sem = asyncio.Semaphore(max(1, concurrency))
        key = os.environ.get(api_key_env) or ""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.AsyncClient(headers=headers, timeout=timeout, transport=transport)

    def describe(self) -> dict:
        return {
            "kind": "openai",
            "base_url": redact_url(self.base_url),
            "model": self.model,
            "temperature": self.temperature,
            "max_attempts": self.max_attempts,
            "api_key_env": self.api_key_env,
            "api_key_set": bool(os.environ.get(self.api_key_env)),
        }

    def _unavailable(self, what: str) -> JudgeUnavailableError:
        return JudgeUnavailableError(f"judge at {redact_url(self.base_url)} {what}")

    async def check(self) -> None:
        """Fail fast, before any work: the endpoint answers and accepts our key."""
        try:
            r = await self._client.get(f"{self.base_url}/models")
        except httpx.HTTPError as e:
            raise self._unavailable(f"is unreachable ({type(e).__name__}); check --judge-url") from None
        if r.status_code in (401, 403):
            raise self._unavailable(f"refused the API key (HTTP {r.status_code}); set {self.api_key_env}")
        if r.status_code == 404:
            # Some servers have no /models; one tiny completion proves the endpoint instead.
            await self.complete("Reply with OK.", "OK?", temperature=0.0, max_tokens=2)
            return
        if r.status_code >= 400:
            raise self._unavailable(f"answered HTTP {r.status_code} to GET /models")

    async def complete(
        self,
        system: str,
        prompt: str,
        *,
        temperature: float | None = None,
        seed: int | None = None,
        max_tokens: int | None = None,
        json_mode: bool = False,
    ) -> str:
        """One chat completion; transient HTTP failures are retried, then raise JudgeUnavailableError."""
        body: dict = {
            "model": self.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": prompt}],
            "temperature": self.temperature if temperature is None else temperature,
            "max_tokens": max_tokens or self.max_tokens,
        }
        if seed is not None:
            body["seed"] = seed
        if json_mode and self._json_mode:
            body["response_format"] = {"type": "json_object"}
        async with self._sem:
            for attempt in range(self.http_retries + 1):
                try:
                    r = await self._client.post(f"{self.base_url}/chat/completions", json=body)
                except httpx.HTTPError as e:
                    if attempt == self.http_retries:
                        raise self._unavailable(f"failed: {type(e).__name__}") from None
                    await asyncio.sleep(self.retry_backoff * 2**attempt)
                    continue
                if r.status_code == 400 and "response_format" in body and "response_format" in r.text:
                    logger.info("judge rejects response_format; asking without JSON mode")
                    self._json_mode = False
                    body.pop("response_format")
                    continue
                if r.status_code == 429 or r.status_code >= 500:
                    if attempt == self.http_retries:
                        raise self._unavailable(f"answered HTTP {r.status_code}")
                    await asyncio.sleep(self.retry_backoff * 2**attempt)
                    continue
                if r.status_code >= 400:
                    raise self._unavailable(f"answered HTTP {r.status_code}: {r.text[:200]}")
                try:
                    content = r.json()["choices"][0]["message"]["content"]
                except (ValueError, KeyError, IndexError, TypeError):
                    return ""  # a malformed envelope is an unparsable reply, retried by the caller
                return content if isinstance(content, str) else ""
        raise self._unavailable("gave up")  # pragma: no cover - the loop always returns or raises

    async def _rate_once(self, system: str, prompt: str, seed: int) -> Sample:
        error = None
        for attempt in range(1, self.max_attempts + 1):
            text = await self.complete(system, prompt, seed=derive_seed(seed, attempt), json_mode=True)
            try:
                return Sample(parse_rating(text), attempt)
            except JudgeParseError as e:
                error = str(e)
                logger.debug("unparsable judge reply (attempt %d): %s", attempt, error)
        return Sample(None, self.max_attempts, error)

    async def rate(self, system: str, prompt: str, *, repeats: int, seed: int) -> RatingSet:
        samples = await asyncio.gather(
            *(self._rate_once(system, prompt, derive_seed(seed, r)) for r in range(repeats))
        )
        return RatingSet(list(samples))

    async def compare(self, system: str, prompt: str, *, seed: int) -> PairResult:
        error = None
        for attempt in range(1, self.max_attempts + 1):
            # Pairwise verdicts use temperature 0: the swap, not sampling, is what exposes inconsistency.
            text = await self.complete(
                system, prompt, temperature=0.0, seed=derive_seed(seed, attempt), json_mode=True
            )
            try:
                return PairResult(parse_pair(text), attempt)
            except JudgeParseError as e:
                error = str(e)
        return PairResult(None, self.max_attempts, error)

    async def close(self) -> None:
        await self._client.aclose()
