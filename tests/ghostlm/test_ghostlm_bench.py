"""The benchmark CLI prints exactly one JSON object (tiny preset here; the real run is manual)."""

from __future__ import annotations

import json

from ghostlm.bench import main


def test_bench_main_prints_one_json_object(capsys):
    assert (
        main(
            [
                "--preset",
                "ghost-tiny",
                "--new-tokens",
                "4",
                "--prompt-tokens",
                "8",
                "--repeats",
                "1",
                "--skip-hf",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    res = json.loads(out[0])
    for key in (
        "full_recompute_tok_s",
        "kv_cache_tok_s",
        "kv_cache_vs_full_recompute",
        "peak_rss_mb",
        "torch_threads",
        "torch_version",
    ):
        assert key in res
    assert res["tokens_match_full_recompute"] is True and "hf_llama_tok_s" not in res
