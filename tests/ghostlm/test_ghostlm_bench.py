"""benchmarks/generate.py (``ghostbot bench generate``) prints exactly one JSON object (tiny, quick run here)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "generate.py"


def test_generate_benchmark_prints_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("bench_generate", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--preset", "ghost-tiny", "--prompt-tokens", "8", "--new-tokens", "4", "--concurrency", "1,3"]
    assert (
        module.main([*argv, "--repeats", "1", "--dtypes", "float32", "--skip-hf", "--alone-checks", "3"]) == 0
    )
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    res = json.loads(out[0])
    assert set(res["aggregate_tokens_per_s"]) == {"1", "3"} and res["single_tokens_per_s"]["float32"] > 0
    assert {"lone_s", "p50_at_3_s", "p95_at_3_s"} <= set(res["ttft"])
    assert res["identical_to_alone"] == {"checked": 3, "of": 3, "all_equal": True, "per_request": [True] * 3}
    assert res["aggregate_at_3_by_dtype"]["float32"]["vs_single"] > 0
    assert res["prefill_floor_s"]["3x8"] > 0 and res["peak_rss_mb"] > 0 and res["worker_capacity"] == 3
