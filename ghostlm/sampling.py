"""Next-token selection: greedy, temperature, top-k, top-p (nucleus), CTRL-style repetition penalty.

Order per step (same as upstream generate): repetition penalty -> temperature -> top-k -> top-p -> sample.
``temperature == 0`` means greedy (argmax after the repetition penalty). A seeded ``torch.Generator`` makes a
request reproducible; it is created per request so concurrent requests never share random state.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7
    top_k: int | None = 50  # None or 0 disables
    top_p: float = 0.9  # 1.0 disables
    repetition_penalty: float = 1.0  # 1.0 disables; >1 discourages tokens already in the context
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


GREEDY = SamplingParams(temperature=0.0)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL penalty on ``seen`` (bool mask over the vocab): positive logits / penalty, negative * penalty.

    Dividing a negative logit would make it *more* likely, hence the sign split.
    """
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def top_k_filter(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep the k largest logits (ties at the threshold are kept), set the rest to -inf."""
    if not k or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus: keep the smallest top set whose probability sums to >= p (always at least the best token)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # probability of strictly better tokens
    remove_sorted = mass_before >= p  # the set was already complete before this token
    remove_sorted[..., 0] = False
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed if seed is not None else random.SystemRandom().randrange(2**63))
    return g


class Sampler:
    """Per-request sampling state: the generator and the set of ids seen (for the repetition penalty)."""

    def __init__(
        self,
        params: SamplingParams,
        vocab_size: int,
        context_ids: Iterable[int] = (),
        device: torch.device | str = "cpu",
    ) -> None:
        self.params = params
        self.generator = None if params.greedy else make_generator(params.seed, device)
        self.seen: torch.Tensor | None = None
        if params.repetition_penalty != 1.0:
            self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            ids = [i for i in context_ids if 0 <= i < vocab_size]
            if ids:
                self.seen[torch.tensor(ids, device=device)] = True

    def __call__(self, logits: torch.Tensor) -> int:
        """Pick the next id from a 1-D logits vector."""
        p = self.params
        logits = logits.float()
        if self.seen is not None:
            logits = apply_repetition_penalty(logits, self.seen, p.repetition_penalty)
        if p.greedy:
            token = int(torch.argmax(logits))
        else:
            logits = top_p_filter(top_k_filter(logits / p.temperature, p.top_k), p.top_p)
            probs = torch.softmax(logits, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=self.generator))
        if self.seen is not None:
            self.seen[token] = True
        return token
