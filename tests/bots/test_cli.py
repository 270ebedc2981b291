"""The ghostbot CLI in-process: index a folder, ask with --json, and polite usage errors."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from bots.cli import main

NOTE = """# Kerberoasting

Kerberoasting requests service tickets for accounts with a service principal name and cracks them offline.
Use long random passwords or group managed service accounts for service accounts.
"""


@pytest.fixture(autouse=True)
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(tmp_path)  # no stray .env is read
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PACKS", "none")  # an empty value would mean the default
    monkeypatch.setenv("DENSE_RETRIEVAL", "false")
    monkeypatch.setenv("GENERATOR", "extractive")
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:], root.level = handlers, level  # setup_logging replaced pytest's handlers


def test_index_then_ask_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "kerberos.md").write_text(NOTE, encoding="utf-8")
    assert main(["index", str(notes)]) == 0
    assert "1 added, 0 updated, 0 unchanged, 0 removed" in capsys.readouterr().out

    assert main(["ask", "--json", "How do attackers crack service tickets offline?"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert "Kerberoasting" in payload["answer"] and "[1]" in payload["answer"]
    assert payload["sources"][0]["source"].endswith("kerberos.md")
    assert {"ref", "source", "title", "url"} <= payload["sources"][0].keys()


def test_ask_plain_text_prints_a_sources_footer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "kerberos.md").write_text(NOTE, encoding="utf-8")
    main(["index", str(notes)])
    capsys.readouterr()
    assert main(["ask", "What should service accounts use against kerberoasting?"]) == 0
    out = capsys.readouterr().out
    assert "Sources:" in out and "[1]" in out


def test_usage_errors_are_polite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["index"]) == 2
    assert "Nothing to index" in capsys.readouterr().err
    assert main(["index", str(tmp_path / "missing")]) == 2
    assert "Not found" in capsys.readouterr().err
    assert main(["ask", "   "]) == 2
    assert "Please give a question" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2


def test_bench_generate_passes_its_flags_through(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "generate", "--preset", "ghost-tiny", "--new-tokens", "3", "--prompt-tokens", "4"]
    assert main([*argv, "--repeats", "1", "--skip-hf", "--dtypes", "float32", "--concurrency", "1,2"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["model"] == "ghost-tiny" and figures["new_tokens"] == 3
    assert figures["identical_to_alone"]["all_equal"] is True
