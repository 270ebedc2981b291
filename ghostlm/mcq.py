"""Model-level scoring helpers for evaluation (multiple choice, G-Eval style 1-5 ratings).

* :func:`option_logprob` / :func:`option_logprobs`: mean per-token log-probability of an option's tokens given
  the prompt. The mean (not the sum) avoids favouring short options.
* :func:`score_token_distribution`: next-token probabilities restricted to a few candidate ids (e.g. the
  tokens for "1".."5"), renormalised over the candidates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .model import GhostLM
from .tokenizer import Tokenizer


def _ids(tokenizer: Tokenizer, prompt: str | Sequence[int]) -> list[int]:
    return tokenizer.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]


@torch.inference_mode()
def option_logprobs(
    model: GhostLM, tokenizer: Tokenizer, prompt: str | Sequence[int], options: Sequence[str]
) -> list[float]:
    """Mean log p(option tokens | prompt) for each option, in one right-padded batch."""
    prompt_ids = _ids(tokenizer, prompt)
    if not prompt_ids:
        raise ValueError("prompt must contain at least one token")
    option_ids = [tokenizer.encode(o) for o in options]
    if any(not o for o in option_ids):
        raise ValueError("every option must encode to at least one token")
    ctx = model.config.context_length
    seqs = []
    for o in option_ids:
        if len(o) >= ctx:
            raise ValueError(f"option of {len(o)} tokens does not fit the {ctx}-token context")
        seqs.append((prompt_ids + o)[-ctx:])  # drop the oldest prompt tokens if needed
    width = max(len(s) for s in seqs)
    device = model.token_embedding.weight.device
    # Right padding is harmless: causal attention never lets real positions see later (pad) positions.
    batch = torch.zeros(len(seqs), width, dtype=torch.long, device=device)
    for i, s in enumerate(seqs):
        batch[i, : len(s)] = torch.tensor(s, device=device)
    logp = F.log_softmax(model(batch)[0].float(), dim=-1)
    scores = []
    for i, (s, o) in enumerate(zip(seqs, option_ids)):
        start = len(s) - len(o)  # position of the first option token
        targets = torch.tensor(o, device=device)
        token_lp = logp[i, start - 1 : len(s) - 1].gather(-1, targets[:, None]).squeeze(-1)
        scores.append(float(token_lp.mean()))
    return scores


def option_logprob(
    model: GhostLM, tokenizer: Tokenizer, prompt: str | Sequence[int], option_text: str
) -> float:
    return option_logprobs(model, tokenizer, prompt, [option_text])[0]


@torch.inference_mode()
def score_token_distribution(
    model: GhostLM, prompt_ids: Sequence[int], candidate_token_ids: Sequence[int]
) -> torch.Tensor:
    """Softmax over the next-token logits restricted to ``candidate_token_ids`` (same order). Sums to 1."""
    ids = [int(i) for i in prompt_ids][-model.config.context_length :]
    device = model.token_embedding.weight.device
    logits = model(torch.tensor([ids], device=device), last_only=True)[0][0, -1].float()
    return torch.softmax(logits[torch.tensor(list(candidate_token_ids), device=device)], dim=-1)


def expected_score(probs: torch.Tensor, values: Sequence[float]) -> float:
    """Probability-weighted rating (G-Eval): sum_i p_i * value_i."""
    return float((probs.float() * torch.tensor(values, dtype=torch.float32, device=probs.device)).sum())
