"""Local-model judging (G-Eval expectation) and MCQ permutation scoring with tiny models whose maths we check."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
import torch

from evaluation.local import (
    GhostLMLocal,
    LocalJudge,
    TorchLM,
    fit_prompt,
    load_local_lm,
    score_candidates,
)
from evaluation.mcq import McqItem, option_orders, report, score_local

VOCAB = [chr(c) for c in range(32, 127)] + ["\n", "…"]
PROBS = [0.1, 0.2, 0.3, 0.25, 0.15]  # p(score = 1..5) of the hand-built judge


def char_lm(last_logits: Callable, ctx: int = 4096) -> TorchLM:
    """A character-level 'model' whose next-token logits we set by hand."""
    index = {ch: i for i, ch in enumerate(VOCAB)}

    def encode(text: str) -> list[int]:
        return [index.get(ch, index["…"]) for ch in text]

    def decode(ids) -> str:
        return "".join(VOCAB[i] for i in ids)

    def logits_fn(batch: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(batch.shape[0], batch.shape[1], len(VOCAB))
        out[:, :, index["z"]] = 50.0  # a very likely non-score token: must be excluded by the restriction
        out[:, :, index['"']] = 10.0  # greedy reasons end at once
        for b in range(batch.shape[0]):
            last_logits(decode(batch[b].tolist()), out[b, -1], index)
        return out

    return TorchLM("char", logits_fn, encode, decode, lambda s, u: encode(f"{s}\n{u}\n"), ctx)


def judge_logits(text: str, row: torch.Tensor, index: dict) -> None:
    for d, p in zip("12345", PROBS):
        row[index[d]] = math.log(p) + 3.0
    if text.endswith("A first"):  # pairwise: always prefers whatever is shown first
        row[index["A"]], row[index["B"]], row[index["t"]] = 5.0, 1.0, 0.0


async def test_probability_weighted_score_is_exact_and_samples_follow_it():
    lm = char_lm(judge_logits)
    prefix, cands = score_candidates(lm)
    assert prefix == '{"score": ' and cands == [lm.encode(d)[0] for d in "12345"]
    judge = LocalJudge(lm, temperature=1.0, reason_tokens=4)
    rs = await judge.rate("sys", "rate this", repeats=4000, seed=7)
    assert rs.expected == pytest.approx(
        sum(p * s for p, s in zip(PROBS, range(1, 6))), abs=1e-6
    )  # 3.15 (float32 logits)
    assert rs.probabilities == pytest.approx(PROBS, abs=1e-6)
    freq = [rs.scores.count(s) / 4000 for s in range(1, 6)]
    assert freq == pytest.approx(PROBS, abs=0.03)
    again = await judge.rate("sys", "rate this", repeats=50, seed=7)
    assert again.scores == rs.scores[:50]  # seeded: reproducible
    cold = await LocalJudge(lm, temperature=0.0, reason_tokens=0).rate("sys", "x", repeats=5, seed=1)
    assert cold.scores == [3] * 5 and cold.expected == pytest.approx(3.15)


async def test_local_pairwise_verdict_from_logits():
    lm = char_lm(judge_logits)
    judge = LocalJudge(lm)
    res = await judge.compare("sys", "A first", seed=0)
    assert res.verdict.winner == "A"


def test_fit_prompt_shortens_the_middle():
    lm = char_lm(judge_logits, ctx=120)
    user = "HEAD" + "x" * 500 + "TAIL"
    ids = fit_prompt(lm, "sys", user, lm.encode('{"score": '), reserve=10)
    text = lm.decode(ids)
    assert len(ids) <= 110 and text.startswith("sys\nHEAD") and "TAIL" in text and "[…]" in text


async def test_ghostlm_geval_equals_independent_sum(tiny_ghostlm):
    model, tok, _ = tiny_ghostlm
    lm = GhostLMLocal(model, tok)
    prefix, cands = score_candidates(lm)
    rs = await LocalJudge(lm, reason_tokens=3).rate("You judge.", "QUESTION: q\nANSWER: a", repeats=5, seed=3)
    # independently: full-vocabulary softmax of the model's own forward pass, then restrict and renormalise
    ids = tok.format_chat_prompt([{"role": "user", "content": "You judge.\n\nQUESTION: q\nANSWER: a"}])
    ids += tok.encode(prefix)
    with torch.no_grad():
        full = torch.softmax(model(torch.tensor([ids]))[0][0, -1].double(), dim=-1)
    p = full[cands] / full[cands].sum()
    expected = float(sum(p[i] * (i + 1) for i in range(5)))
    assert rs.expected == pytest.approx(expected, abs=1e-5)
    assert abs(expected - 3.0) > 0.05
    assert len(rs.scores) == 5 and set(rs.scores) <= {1, 2, 3, 4, 5}


def test_generic_logprob_maths_matches_ghostlm_helpers(tiny_ghostlm):
    model, tok, _ = tiny_ghostlm
    ghost = GhostLMLocal(model, tok)
    generic = TorchLM("generic", lambda b: model(b)[0], tok.encode, tok.decode, ghost.chat_ids, 256)
    prompt, options = "Question: Which port does HTTPS use?\nAnswer:", [" 443", " 80", " 22 and 25"]
    assert generic.option_logprobs(prompt, options) == pytest.approx(
        ghost.option_logprobs(prompt, options), abs=1e-4
    )
    ids = tok.encode(prompt)
    cands = [tok.encode(x)[0] for x in (" 443", " 80")]
    assert generic.next_token_probs(ids, cands) == pytest.approx(ghost.next_token_probs(ids, cands), abs=1e-5)


def test_load_local_lm_detects_a_ghostlm_directory(tiny_ghostlm):
    _, _, d = tiny_ghostlm
    lm = load_local_lm(d)
    assert isinstance(lm, GhostLMLocal) and lm.context_length == 256


class PositionBiasedScorer:
    """Prefers whichever option is listed first (+1.0) over a weaker true preference for the right one."""

    def __init__(self, quality: dict[str, float]) -> None:
        self.quality = quality
        self.prompts: list[str] = []

    def option_logprobs(self, prompt: str, options):
        self.prompts.append(prompt)
        first = re.search(r"\nA\. (.*)\n", prompt).group(1)
        return [self.quality.get(o.strip(), 0.0) + (1.0 if o.strip() == first else 0.0) for o in options]


def test_option_orders_cancel_position_bias():
    items = [
        McqItem("Which port does HTTPS use by default?", ("80", "8080", "443", "22"), 2, 2),
        McqItem("Which CWE is SQL injection?", ("CWE-89", "CWE-79", "CWE-22", "CWE-352"), 0, 3),
    ]
    scorer = PositionBiasedScorer({"443": 0.6, "CWE-89": 0.6})
    results = score_local(items, scorer, orders=2)
    # order 0 (as listed) always picks the first-listed option; order 1 (reversed) the last-listed one
    assert [r.per_order_predicted for r in results] == [[0, 3], [0, 3]]
    assert [r.predicted for r in results] == [2, 0]  # averaged over orders, the true preference wins
    assert results[0].scores == pytest.approx([0.5, 0.0, 0.6, 0.5])
    rep = report(results, orders=2, backend={"kind": "local"})
    assert rep["accuracy"] == 1.0 and rep["per_order_accuracy"] == [0.5, 0.0] and rep["chance"] == 0.25
    # the option text is scored, never the letter, and the listing order really changes
    assert scorer.prompts[0].endswith("A. 80\nB. 8080\nC. 443\nD. 22\nAnswer:")
    assert scorer.prompts[1].endswith("A. 22\nB. 443\nC. 8080\nD. 80\nAnswer:")


def test_option_orders():
    assert option_orders(4, 2) == [(0, 1, 2, 3), (3, 2, 1, 0)]
    assert option_orders(4, 4) == [(0, 1, 2, 3), (3, 2, 1, 0), (1, 2, 3, 0), (2, 3, 0, 1)]
    with pytest.raises(ValueError):
        option_orders(4, 1)


def test_mcq_with_tiny_ghostlm_is_mean_over_orders_of_ghostlm_scores(tiny_ghostlm):
    from ghostlm.mcq import option_logprobs

    model, tok, _ = tiny_ghostlm
    item = McqItem("Which port does HTTPS use?", ("443", "80", "22", "25"), 0, 2)
    (res,) = score_local([item], GhostLMLocal(model, tok), orders=2)
    a = option_logprobs(
        model,
        tok,
        "Question: Which port does HTTPS use?\nA. 443\nB. 80\nC. 22\nD. 25\nAnswer:",
        [" 443", " 80", " 22", " 25"],
    )
    b = option_logprobs(
        model,
        tok,
        "Question: Which port does HTTPS use?\nA. 25\nB. 22\nC. 80\nD. 443\nAnswer:",
        [" 443", " 80", " 22", " 25"],
    )
    assert res.scores == pytest.approx([(x + y) / 2 for x, y in zip(a, b)], abs=1e-6)


@pytest.mark.slow  # importing transformers takes several seconds
async def test_hf_directory_judge_and_option_scores_match_its_logits(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        ['{"score": 1} {"score": 2} {"score": 3} {"score": 4} {"score": 5} port 443'] * 20,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<|endoftext|>"],
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    fast.save_pretrained(tmp_path)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=fast.vocab_size, n_positions=128, n_embd=16, n_layer=1, n_head=2)
    )
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    model.save_pretrained(tmp_path)
    model.eval()

    lm = load_local_lm(tmp_path)
    assert not isinstance(lm, GhostLMLocal) and lm.context_length == 128
    prefix, cands = score_candidates(lm)
    rs = await LocalJudge(lm, reason_tokens=2).rate("sys", "judge this", repeats=3, seed=0)
    ids = fast.encode("sys\n\njudge this\n\n", add_special_tokens=False) + fast.encode(
        prefix, add_special_tokens=False
    )
    with torch.no_grad():
        full = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].double(), dim=-1)
    p = full[cands] / full[cands].sum()
    assert rs.expected == pytest.approx(float(sum(p[i] * (i + 1) for i in range(5))), abs=1e-5)
    prompt_ids = fast.encode("port", add_special_tokens=False)
    opt = fast.encode(" 443", add_special_tokens=False)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([prompt_ids + opt])).logits[0].double(), dim=-1)
    manual = sum(float(logp[len(prompt_ids) - 1 + k, t]) for k, t in enumerate(opt)) / len(opt)
    assert lm.option_logprobs("port", [" 443"])[0] == pytest.approx(manual, abs=1e-5)


@pytest.mark.slow
def test_hf_chat_template_is_used_when_present(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        ["system user assistant hello"] * 10,
        trainers.BpeTrainer(
            vocab_size=280,
            special_tokens=["<|endoftext|>"],
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    fast.chat_template = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    fast.save_pretrained(tmp_path)
    GPT2LMHeadModel(
        GPT2Config(vocab_size=fast.vocab_size, n_positions=64, n_embd=8, n_layer=1, n_head=1)
    ).save_pretrained(tmp_path)
    lm = load_local_lm(tmp_path)
    ids = lm.chat_ids("sys", "hello")
    assert all(isinstance(i, int) for i in ids)
    assert lm.decode(ids) == "<system>sys\n<user>hello\n<assistant>"
