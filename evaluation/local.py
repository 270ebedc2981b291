"""Local-model judging and scoring: GhostLM checkpoints and Hugging Face causal-LM directories.

Because we hold the logits, a local judge reports the exact probability-weighted score (G-Eval): the judge
prompt is followed by the start of the JSON reply, ``{"score":``, and the next-token distribution restricted
to the five score tokens gives ``E[score] = Σ p(s)·s``. The "sampled repeats" are draws from that same
distribution (temperature-scaled), so their mean/std are comparable with a remote judge's repeats.

Multiple-choice scoring uses the mean per-token log-probability of an option's text given the prompt
(never of its letter). GhostLM goes through :mod:`ghostlm.mcq`; other models through the same maths here.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .judges import PairResult, RatingSet, Sample
from .parse import PairVerdict, Rating

logger = logging.getLogger(__name__)

SCORE_PREFIX = '{"score":'
PAIR_PREFIX = '{"winner": "'


class TorchLM:
    """A causal LM seen as ``logits_fn(LongTensor[B, T]) -> Tensor[B, T, V]`` plus its tokenizer functions."""

    def __init__(
        self,
        name: str,
        logits_fn: Callable[[torch.Tensor], torch.Tensor],
        encode: Callable[[str], list[int]],
        decode: Callable[[Sequence[int]], str],
        chat_ids: Callable[[str, str], list[int]],
        context_length: int,
    ) -> None:
        self.name = name
        self._logits = logits_fn
        self.encode = encode
        self.decode = decode
        self.chat_ids = chat_ids  # (system, user) -> prompt ids ending where the assistant reply starts
        self.context_length = context_length

    def describe(self) -> dict:
        return {"kind": "local", "model": self.name, "context_length": self.context_length}

    @torch.inference_mode()
    def next_token_probs(self, ids: Sequence[int], candidates: Sequence[int]) -> list[float]:
        """Next-token softmax restricted to ``candidates`` and renormalised over them."""
        ids = list(ids)[-self.context_length :]
        logits = self._logits(torch.tensor([ids]))[0, -1].double()
        return torch.softmax(logits[list(candidates)], dim=-1).tolist()

    @torch.inference_mode()
    def option_logprobs(self, prompt: str, options: Sequence[str]) -> list[float]:
        """Mean per-token log p(option tokens | prompt) for each option."""
        prompt_ids = self.encode(prompt)
        scores = []
        for option in options:
            opt = self.encode(option)
            if not opt:
                raise ValueError("every option must encode to at least one token")
            seq = (prompt_ids + opt)[-self.context_length :]
            logp = F.log_softmax(self._logits(torch.tensor([seq]))[0].double(), dim=-1)
            start = len(seq) - len(opt)
            targets = torch.tensor(opt)
            scores.append(float(logp[start - 1 : len(seq) - 1].gather(-1, targets[:, None]).mean()))
        return scores

    @torch.inference_mode()
    def greedy(self, ids: Sequence[int], max_new_tokens: int, stop: str) -> str:
        """Greedy continuation, stopped at ``stop`` (plain recompute: only used for short judge reasons)."""
        seq = list(ids)
        out: list[int] = []
        for _ in range(max_new_tokens):
            window = seq[-self.context_length :]
            nxt = int(self._logits(torch.tensor([window]))[0, -1].argmax())
            seq.append(nxt)
            out.append(nxt)
            text = self.decode(out)
            if stop in text:
                return text.split(stop, 1)[0]
        return self.decode(out)


class GhostLMLocal(TorchLM):
    """GhostLM through ghostlm's own scoring helpers (:mod:`ghostlm.mcq`)."""

    def __init__(self, model: Any, tokenizer: Any, name: str = "ghostlm") -> None:
        def logits(batch: torch.Tensor) -> torch.Tensor:
            return model(batch)[0]

        def chat_ids(system: str, user: str) -> list[int]:
            return tokenizer.format_chat_prompt([{"role": "user", "content": f"{system}\n\n{user}"}])

        super().__init__(
            name,
            logits,
            tokenizer.encode,
            lambda ids: tokenizer.decode(ids, skip_special=True),
            chat_ids,
            model.config.context_length,
        )
        self.model = model
        self.tokenizer = tokenizer

    def next_token_probs(self, ids: Sequence[int], candidates: Sequence[int]) -> list[float]:
        from ghostlm.mcq import score_token_distribution

        return [float(p) for p in score_token_distribution(self.model, list(ids), list(candidates))]

    def option_logprobs(self, prompt: str, options: Sequence[str]) -> list[float]:
        from ghostlm.mcq import option_logprobs

        return option_logprobs(self.model, self.tokenizer, prompt, list(options))


def hf_local(path: str | Path) -> TorchLM:
    """A local Hugging Face causal-LM directory (never downloads)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    model.eval()

    def logits(batch: torch.Tensor) -> torch.Tensor:
        return model(input_ids=batch).logits

    def encode(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False)

    def chat_ids(system: str, user: str) -> list[int]:
        if getattr(tok, "chat_template", None):
            msgs = [{"role": "system", "content": system}, {"role": "user", "content": user}]
            ids: Any = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
            return [int(i) for i in (ids["input_ids"] if hasattr(ids, "keys") else ids)]
        return encode(f"{system}\n\n{user}\n\n")

    ctx = int(
        getattr(model.config, "max_position_embeddings", 0) or getattr(model.config, "n_positions", 0) or 2048
    )
    return TorchLM(
        Path(path).name,
        logits,
        encode,
        lambda ids: str(tok.decode(list(ids), skip_special_tokens=True)),
        chat_ids,
        ctx,
    )


def load_local_lm(path: str | Path) -> TorchLM:
    """A GhostLM checkpoint (file or directory) or a Hugging Face model directory, detected by its config."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such model file or directory")
    cfg = p / "config.json"
    if p.is_dir() and cfg.is_file():
        try:
            data = json.loads(cfg.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        if "model_type" in data or "architectures" in data:
            return hf_local(p)
    from ghostlm import load_model, load_tokenizer

    return GhostLMLocal(load_model(p), load_tokenizer(p), name=p.name)


def score_candidates(lm: TorchLM) -> tuple[str, list[int]]:
    """(reply prefix, token ids of the scores 1..5): each score must be one token of its own."""
    for form, prefix in ((" {d}", SCORE_PREFIX), ("{d}", SCORE_PREFIX + " ")):
        ids = [lm.encode(form.format(d=d)) for d in range(1, 6)]
        if all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == 5:
            return prefix, [i[0] for i in ids]
    raise ValueError(
        f"{lm.name}: the tokenizer has no single tokens for the scores 1-5; "
        "it cannot be used as a probability-weighted judge"
    )


def fit_prompt(lm: TorchLM, system: str, user: str, suffix: list[int], reserve: int) -> list[int]:
    """Prompt ids + ``suffix`` within the context, shortening the MIDDLE of the user text if needed
    (the rubric is at the start and the answer/instruction at the end; both matter more than the middle)."""
    budget = lm.context_length - reserve
    ids = lm.chat_ids(system, user) + suffix
    if len(ids) <= budget:
        return ids
    user_ids = lm.encode(user)
    keep = max(16, len(user_ids) - (len(ids) - budget) - 16)
    while keep >= 16:
        head, tail = user_ids[: keep * 2 // 5], user_ids[len(user_ids) - (keep - keep * 2 // 5) :]
        ids = lm.chat_ids(system, lm.decode(head) + "\n[…]\n" + lm.decode(tail)) + suffix
        if len(ids) <= budget:
            logger.info("judge prompt shortened to fit the %d-token context", lm.context_length)
            return ids
        keep -= max(8, len(ids) - budget)
    return ids[-budget:]


class LocalJudge:
    """A judge backed by a local model: exact G-Eval expectation plus sampled repeats from the same logits."""

    has_expectation = True

    def __init__(self, lm: TorchLM, *, temperature: float = 1.0, reason_tokens: int = 32) -> None:
        self.lm = lm
        self.name = f"local:{lm.name}"
        self.temperature = temperature
        self.reason_tokens = reason_tokens

    def describe(self) -> dict:
        return {
            **self.lm.describe(),
            "temperature": self.temperature,
            "reason_tokens": self.reason_tokens,
            "scoring": "G-Eval expectation over tokens 1-5; repeats sampled from the same distribution",
        }

    async def check(self) -> None:
        score_candidates(self.lm)

    def _rate_sync(self, system: str, prompt: str, repeats: int, seed: int) -> RatingSet:
        prefix, cands = score_candidates(self.lm)
        ids = fit_prompt(self.lm, system, prompt, self.lm.encode(prefix), reserve=self.reason_tokens + 16)
        probs = self.lm.next_token_probs(ids, cands)
        expected = sum(p * s for p, s in zip(probs, range(1, 6)))
        p = torch.tensor(probs, dtype=torch.float64)
        if self.temperature > 0:
            p = p.pow(1.0 / self.temperature)
        else:  # temperature 0: every repeat is the most likely score
            p = torch.nn.functional.one_hot(p.argmax(), 5).double()
        gen = torch.Generator().manual_seed(seed)
        draws = torch.multinomial(p / p.sum(), repeats, replacement=True, generator=gen).tolist()
        best = int(torch.tensor(probs).argmax())
        reason = ""
        if self.reason_tokens > 0:
            cont = self.lm.encode(f'{prefix}{" " if not prefix.endswith(" ") else ""}{best + 1}, "reason": "')
            reason = " ".join(
                self.lm.greedy(
                    fit_prompt(self.lm, system, prompt, cont, self.reason_tokens + 1), self.reason_tokens, '"'
                ).split()
            )
        samples = [Sample(Rating(d + 1, reason), 1) for d in draws]
        return RatingSet(samples, expected=expected, probabilities=probs)

    async def rate(self, system: str, prompt: str, *, repeats: int, seed: int) -> RatingSet:
        return await asyncio.to_thread(self._rate_sync, system, prompt, repeats, seed)

    def _compare_sync(self, system: str, prompt: str) -> PairResult:
        labels = ("A", "B", "tie")
        firsts = [self.lm.encode(x)[:1] for x in labels]
        if any(not f for f in firsts) or len({f[0] for f in firsts}) != 3:
            return PairResult(None, 1, "tokenizer cannot tell A, B and tie apart by their first token")
        ids = fit_prompt(self.lm, system, prompt, self.lm.encode(PAIR_PREFIX), reserve=1)
        probs = self.lm.next_token_probs(ids, [f[0] for f in firsts])
        best = max(range(3), key=lambda i: probs[i])
        reason = f"p(A)={probs[0]:.2f} p(B)={probs[1]:.2f} p(tie)={probs[2]:.2f}"
        return PairResult(PairVerdict(labels[best], reason), 1)

    async def compare(self, system: str, prompt: str, *, seed: int) -> PairResult:
        return await asyncio.to_thread(self._compare_sync, system, prompt)

    async def close(self) -> None:
        return None
