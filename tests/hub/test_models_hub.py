"""`ghostbot model pull/list`, `MODEL_PATH=hf:…` and the ghostlm-rag pack, against a loopback fake of the Hub."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from core.generators.factory import resolve_model_path
from core.models_hub import ModelHub, ModelHubError, parse_model_name
from core.retrieval.rag_pack import PACK_NAME, RagPack, entry_url, pending_chunks
from tests.fakes.hf_hub import FakeHub, FakeRepo
from tests.support import app_settings, indexed_app

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "ghostlm"
V09 = "Ghostgim/GhostLM-v0.9-experimental"
TOKEN = "hf_TESTSECRETtokenVALUE1234567890"

CHUNKS = [
    {
        "chunk_id": "CVE-2021-44228#0",
        "source": "nvd",
        "ref": "CVE-2021-44228",
        "text": "Apache Log4j2 2.0-beta9 through 2.15.0 JNDI features used in configuration, log messages, and "
        "parameters do not protect against attacker controlled LDAP and other JNDI related endpoints.",
    },
    {
        "chunk_id": "CVE-2021-44228#1",
        "source": "nvd",
        "ref": "CVE-2021-44228",
        "text": "An attacker who can control log messages can execute arbitrary code loaded from LDAP servers.",
    },
    {
        "chunk_id": "CVE-2021-45046#0",
        "source": "nvd",
        "ref": "CVE-2021-45046",
        "text": "The fix to address CVE-2021-44228 in Apache Log4j 2.15.0 was incomplete in certain "
        "non-default configurations.",
    },
    {"chunk_id": "T1059#0", "source": "mitre", "ref": "T1059", "text": "Command and Scripting Interpreter."},
    {"chunk_id": "x#0", "source": "arxiv", "ref": "", "text": "A paper about fuzzing network protocols."},
]


def gpt2_vocab_checkpoint() -> bytes:
    """A tiny random GhostLM with the GPT-2 vocabulary (50264 ids), in the upstream trainer's .pt layout."""
    from ghostlm import GhostLM, GhostLMConfig

    torch.manual_seed(0)
    config = GhostLMConfig(
        vocab_size=50264, context_length=256, n_layers=1, d_model=16, n_heads=2, d_ff=32, dropout=0.0
    )
    model = GhostLM(config)
    buffer = io.BytesIO()
    torch.save({"step": 1, "model_state_dict": model.state_dict(), "config": config.to_dict()}, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def v09_files() -> dict[str, bytes]:
    chunks = "".join(json.dumps(c) + "\n" for c in CHUNKS) + "not json\n"
    return {
        "best_model.pt": gpt2_vocab_checkpoint(),
        "rag/chunks.jsonl": chunks.encode(),
        "rag/index.npy": b"\x93NUMPY not used by us",
        "README.md": b"# GhostLM v0.9\n",
    }


@pytest.fixture
def hub(v09_files: dict[str, bytes]) -> Iterator[FakeHub]:
    fake = FakeHub(
        repos={
            V09: FakeRepo(dict(v09_files)),
            "acme/modern": FakeRepo({"modern.pt": (FIXTURES / "modern.pt").read_bytes()}),
            "acme/gated": FakeRepo({"model.pt": b"x"}, gated_token="hf_theRightOne"),
            "acme/broken": FakeRepo({"model.pt": b"this is not a checkpoint"}),
        },
        valid_tokens={TOKEN, "hf_theRightOne"},
    )
    with fake:
        yield fake


def cli_env(tmp_path: Path, endpoint: str, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and not k.startswith("HF_") and k != "TRANSFORMERS_OFFLINE"
    }
    env.update(
        PYTHONPATH=str(ROOT),
        NO_PROXY="127.0.0.1,localhost",
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'ghostbot.db'}",
        DATA_DIR=str(tmp_path / "data"),
        HF_ENDPOINT=endpoint,
        HF_HOME=str(tmp_path / "hf-home"),  # no developer token or cache leaks in
        PACKS="",
        DENSE_RETRIEVAL="false",
        LOG_LEVEL="DEBUG",
    )
    env.update(extra)
    return env


def ghostbot(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bots.cli", *args],
        cwd=tmp_path,  # no developer .env is read
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def closed_port_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more: every request is refused


# --- names ---------------------------------------------------------------------------------------------------
def test_model_names() -> None:
    v09 = parse_model_name("ghostlm-v0.9")
    assert (v09.repo_id, v09.main) == (V09, "best_model.pt")
    assert "rag/chunks.jsonl" in v09.files
    assert parse_model_name("hf:ghostlm-v0.9") == v09
    repo = parse_model_name("hf:acme/tiny")
    assert (repo.repo_id, repo.files, repo.main) == ("acme/tiny", (), None)
    file = parse_model_name("acme/tiny/sub/model.pt")
    assert (file.repo_id, file.files, file.main) == ("acme/tiny", ("sub/model.pt",), "sub/model.pt")
    for bad in ("", "justone", "acme/../etc", "a b/c", "acme//x"):
        with pytest.raises(ModelHubError, match="not a model name"):
            parse_model_name(bad)


# --- pull, cache, resume, corruption ------------------------------------------------------------------------
def test_pull_verifies_records_and_resolves_offline(hub: FakeHub, tmp_path: Path, v09_files) -> None:
    models = tmp_path / "models"
    seen: list[tuple[str, int, int | None]] = []
    model = ModelHub(models, endpoint=hub.url).pull(
        "ghostlm-v0.9", progress=lambda f, d, t: seen.append((f, d, t))
    )
    assert model.kind == "ghostlm" and model.architecture.startswith("GhostLM")
    assert model.context_length == 256 and model.parameters > 50264 * 16
    assert model.sha256 == hashlib.sha256(v09_files["best_model.pt"]).hexdigest()
    assert {f.path for f in model.files} == {"best_model.pt", "rag/chunks.jsonl", "rag/index.npy"}
    total = len(v09_files["best_model.pt"])
    assert ("best_model.pt", total, total) in seen  # progress reached the end
    path = Path(model.path)
    assert path.read_bytes() == v09_files["best_model.pt"] and models in path.parents

    hub.stop()  # no Hub any more: the cache alone must do
    offline = ModelHub(models, endpoint=closed_port_url())
    assert offline.resolve("hf:ghostlm-v0.9") == path
    assert offline.data_file("ghostlm-v0.9", "rag/chunks.jsonl").read_bytes() == v09_files["rag/chunks.jsonl"]
    listed = offline.cached()
    assert [m.name for m in listed] == ["ghostlm-v0.9"]


def test_interrupted_download_resumes_with_range(tmp_path: Path) -> None:
    """The connection drops mid-file: the download continues from the bytes it has (a Range request),
    it does not start over. (huggingface_hub keeps what it received in whole chunks of
    DOWNLOAD_CHUNK_SIZE, so the file is a little over one chunk.)"""
    from huggingface_hub import constants

    chunk = constants.DOWNLOAD_CHUNK_SIZE
    big = os.urandom(chunk + (1 << 20))
    files = {"modern.pt": (FIXTURES / "modern.pt").read_bytes(), "rag/index.npy": big}
    with FakeHub(repos={"acme/big": FakeRepo(files)}) as fake:
        fake.interrupt_once["rag/index.npy"] = chunk + (1 << 19)
        model = ModelHub(tmp_path / "models", endpoint=fake.url).pull("acme/big")
        gets = [r for r in fake.requests if r.method == "GET" and r.path.endswith("/rag/index.npy")]
    assert len(gets) == 2
    assert "range" not in gets[0].headers
    assert gets[1].headers["range"] == f"bytes={chunk}-"
    assert (Path(model.path) / "rag" / "index.npy").read_bytes() == big


def test_corrupted_download_is_refused_and_fetched_again(hub: FakeHub, tmp_path: Path, v09_files) -> None:
    hub.corrupt.add("best_model.pt")
    models = tmp_path / "models"
    with pytest.raises(ModelHubError, match="corrupted") as info:
        ModelHub(models, endpoint=hub.url).pull("ghostlm-v0.9")
    assert "ghostbot model pull ghostlm-v0.9" in str(info.value)
    assert ModelHub(models).cached() == []  # nothing recorded
    hub.corrupt.clear()
    model = ModelHub(models, endpoint=hub.url).pull(
        "ghostlm-v0.9"
    )  # the bad blob was deleted: downloaded anew
    assert Path(model.path).read_bytes() == v09_files["best_model.pt"]


def test_file_corrupted_in_the_cache_is_refused(hub: FakeHub, tmp_path: Path) -> None:
    models = tmp_path / "models"
    path = Path(ModelHub(models, endpoint=hub.url).pull("ghostlm-v0.9").path)
    blob = path.resolve()
    data = bytearray(blob.read_bytes())
    data[-10] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(ModelHubError, match=r"corrupted.*ghostbot model pull ghostlm-v0\.9"):
        ModelHub(models, endpoint=hub.url).resolve("ghostlm-v0.9")


def test_checkpoint_that_does_not_load_is_refused(hub: FakeHub, tmp_path: Path) -> None:
    models = tmp_path / "models"
    with pytest.raises(ModelHubError, match="does not load"):
        ModelHub(models, endpoint=hub.url).pull("acme/broken/model.pt")
    assert ModelHub(models).cached() == []


def test_whole_repository_pull_of_a_ghostlm_checkpoint(hub: FakeHub, tmp_path: Path) -> None:
    model = ModelHub(tmp_path / "models", endpoint=hub.url).pull("acme/modern")
    assert model.kind == "ghostlm" and Path(model.path).is_dir()
    assert model.parameters == 171328 and model.context_length == 128  # the fixture's README figures
    assert any(
        r.path == "/api/models/acme/modern/revision/main" or r.path == "/api/models/acme/modern"
        for r in hub.requests
    )


def test_transformers_repository_pull(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "tiny-gpt2"
    GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=128, n_positions=64)
    ).save_pretrained(folder)
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    with FakeHub(repos={"acme/tiny-gpt2": FakeRepo(files)}) as fake:
        model = ModelHub(tmp_path / "models", endpoint=fake.url).pull("acme/tiny-gpt2")
    assert model.kind == "hf" and model.architecture == "GPT2LMHeadModel"
    assert model.context_length == 64 and model.parameters > 0 and len(model.sha256) == 64


# --- errors -------------------------------------------------------------------------------------------------
def test_missing_repo_and_file_messages(hub: FakeHub, tmp_path: Path) -> None:
    h = ModelHub(tmp_path / "models", endpoint=hub.url)
    with pytest.raises(ModelHubError, match="no model repository nobody/nothing"):
        h.pull("nobody/nothing")
    with pytest.raises(ModelHubError, match=r"has no file missing\.pt"):
        h.pull(f"{V09}/missing.pt")


def test_gated_and_bad_token_messages_never_show_the_token(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(ModelHubError, match="gated model") as gated:
        ModelHub(tmp_path / "models", endpoint=hub.url, token=TOKEN).pull("acme/gated")
    with pytest.raises(ModelHubError, match="401") as refused:
        ModelHub(tmp_path / "models", endpoint=hub.url, token="hf_wrongWRONGwrong").pull("acme/gated")
    assert TOKEN not in str(gated.value) and "hf_wrongWRONGwrong" not in str(refused.value)
    model = ModelHub(tmp_path / "models", endpoint=hub.url, token=TOKEN).pull(f"{V09}/best_model.pt")
    assert any(
        r.headers.get("authorization") == f"Bearer {TOKEN}" for r in hub.requests
    )  # the token was sent
    assert model.kind == "ghostlm"


def test_cli_errors_are_one_line_and_hf_token_stays_out_of_logs(hub: FakeHub, tmp_path: Path) -> None:
    env = cli_env(tmp_path, hub.url, HF_TOKEN=TOKEN)
    for name, expected in (("acme/gated", "gated model"), ("nobody/nothing", "no model repository")):
        result = ghostbot(tmp_path, env, "model", "pull", name)
        assert result.returncode == 1
        assert expected in result.stderr and "Traceback" not in result.stderr
        assert TOKEN not in result.stderr + result.stdout
    assert any(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in hub.requests)


def test_offline_with_nothing_cached_is_one_clear_line(tmp_path: Path) -> None:
    env = cli_env(tmp_path, closed_port_url(), MODEL_PATH="hf:acme/tiny/model.pt", HF_TOKEN=TOKEN)
    result = ghostbot(tmp_path, env, "ask", "What is CWE-79?")
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("ghostbot:")]
    assert len(lines) == 1 and "ghostbot model pull acme/tiny/model.pt" in lines[0]
    assert "Traceback" not in result.stderr and TOKEN not in result.stderr


# --- MODEL_PATH=hf: ---------------------------------------------------------------------------------------
def test_model_path_hf_pulls_on_first_start_then_uses_the_cache(hub: FakeHub, tmp_path: Path) -> None:
    settings = app_settings(tmp_path, model_path=Path(f"hf:{V09}/best_model.pt"), hf_endpoint=hub.url)
    first = resolve_model_path(settings)
    assert first is not None and first.name == "best_model.pt" and first.is_file()
    heads = len(hub.requests)
    assert resolve_model_path(settings) == first
    assert len(hub.requests) == heads  # the second start did not touch the network


@pytest.mark.slow
def test_pulled_gpt2_vocabulary_model_answers_with_no_network(hub: FakeHub, tmp_path: Path) -> None:
    pulled = ghostbot(tmp_path, cli_env(tmp_path, hub.url), "model", "pull")
    assert pulled.returncode == 0, pulled.stderr
    assert "MODEL_PATH=hf:ghostlm-v0.9" in pulled.stdout
    listing = ghostbot(tmp_path, cli_env(tmp_path, hub.url), "model", "list")
    assert listing.returncode == 0
    row = listing.stdout.splitlines()[1]
    assert row.startswith("ghostlm-v0.9") and "GhostLM" in row and " 256 " in row
    hub.stop()
    env = cli_env(
        tmp_path, closed_port_url(), MODEL_PATH="hf:ghostlm-v0.9", MAX_NEW_TOKENS="4", TEMPERATURE="0"
    )
    result = ghostbot(tmp_path, env, "ask", "--json", "What is CWE-79?")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["generator"].lower().startswith("ghostlm")
    assert isinstance(payload["answer"], str)


# --- the ghostlm-rag pack ------------------------------------------------------------------------------------
def test_rag_pack_entries(tmp_path: Path) -> None:
    path = tmp_path / "chunks.jsonl"
    lines = [json.dumps(c) for c in CHUNKS] + [
        "{broken",
        json.dumps({"ref": "cve-2020-1234", "text": "lower"}),
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
    pack = RagPack(path)
    entries = {e.ref: e for e in pack.entries()}
    assert pack.skipped == 1 and pack.chunk_count == 6
    log4j = entries["CVE-2021-44228"]
    assert [s.heading for s in log4j.sections] == ["nvd", "nvd"]  # upstream source kept per passage
    assert all("CVE-2021-44228" in s.text for s in log4j.sections)  # every passage names its ref
    assert log4j.url == "https://nvd.nist.gov/vuln/detail/CVE-2021-44228"
    assert "CVE-2020-1234" in entries  # canonical case
    assert entry_url("T1059") == "https://attack.mitre.org/techniques/T1059/" and entry_url("x") == ""
    assert pending_chunks(list(entries.values()), {}) == 6
    assert pending_chunks(list(entries.values()), {e.ref: e.content_hash() for e in entries.values()}) == 0


async def test_imported_pack_answers_an_exact_cve_id(hub: FakeHub, tmp_path: Path) -> None:
    import asyncio

    from bots.cli import index_rag_pack

    settings = app_settings(tmp_path, hf_endpoint=hub.url)
    await asyncio.to_thread(
        ModelHub(Path(settings.data_dir) / "models", endpoint=hub.url).pull, "ghostlm-v0.9"
    )
    async with indexed_app(settings, tmp_path) as app:
        report = await index_rag_pack(settings, app)
        assert report.added == 4 and report.chunks == 5 and not report.failed
        again = await index_rag_pack(settings, app)
        assert again.added == 0 and again.unchanged == 4  # incremental
        sources = await app.retriever.search("what is CVE-2021-45046?", k=2)
        assert sources[0].ref == "CVE-2021-45046"
        assert sources[0].url == "https://nvd.nist.gov/vuln/detail/CVE-2021-45046"
        sources = await app.retriever.search("Tell me about cve-2021-44228", k=1)
        assert sources[0].ref == "CVE-2021-44228" and sources[0].text.startswith("nvd: CVE-2021-44228")


def test_cli_index_pack_without_a_pull_says_what_to_run(tmp_path: Path) -> None:
    result = ghostbot(tmp_path, cli_env(tmp_path, closed_port_url()), "index", "--pack", PACK_NAME)
    assert result.returncode == 1
    assert "ghostbot model pull ghostlm-v0.9" in result.stderr and "Traceback" not in result.stderr


def test_embedding_time_estimate() -> None:
    from core.retrieval.rag_pack import describe_duration, measure_rate

    calls: list[int] = []

    def encode(texts: list[str]) -> None:
        calls.append(len(texts))

    assert measure_rate(encode, ["a", "b", "c"]) > 0
    assert calls == [1, 3]  # one warm-up text, then the timed sample
    assert measure_rate(encode, []) == 0.0
    assert describe_duration(20) == "about 20 s"
    assert describe_duration(600) == "about 10 min"
    assert describe_duration(83_000 / 20) == "about 69 min"
    assert describe_duration(3 * 3600) == "about 3.0 h"


def test_cli_pack_choices_are_the_registered_packs() -> None:
    from bots.cli import build_parser
    from core.retrieval.packs import OPTIONAL_PACKS, PACK_NAMES

    index = build_parser()._subparsers._group_actions[0].choices["index"]  # type: ignore[union-attr,index]
    pack = next(a for a in index._actions if a.dest == "pack")
    assert list(pack.choices) == [*PACK_NAMES, *OPTIONAL_PACKS]
