"""The upstream GhostLM RAG corpus (`rag/chunks.jsonl` of ghostlm-v0.9) as a knowledge pack.

Upstream's scripts/build_rag_index.py writes one JSON object per line: ``{"chunk_id": "<record id>#<j>",
"source": "nvd" | "mitre" | …, "ref": "<record id>", "text": "<~256 words>"}``. Its ``index.npy`` holds
BGE-small vectors, which our encoder cannot use, so the text is re-embedded with ours.

Chunks are grouped by ``ref`` into one entry each (a CVE's description and its continuation are one
document), keeping the ref (`CVE-2021-44228`) as the entry's ref and each chunk's ``source`` as its section
heading, and the text always names the ref: a question naming a CVE id then finds it by exact lookup.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from core.retrieval.ids import find_ids
from core.retrieval.loaders import Section
from core.retrieval.packs import PackEntry, PackUnavailableError

logger = logging.getLogger(__name__)

PACK_NAME = "ghostlm-rag"
MODEL_NAME = "ghostlm-v0.9"  # the pull that brings the corpus
CHUNKS_FILE = "rag/chunks.jsonl"
_MAX_TEXT_CHARS = 20_000  # a record bigger than this is not a passage


def entry_url(ref: str) -> str:
    """The canonical page of an id-shaped ref (CVE, CWE, CAPEC, ATT&CK); '' for anything else."""
    ids = find_ids(ref)
    if len(ids) != 1 or ids[0].ref.upper() != ref.upper():
        return ""
    exact = ids[0]
    if exact.kind == "CVE":
        return f"https://nvd.nist.gov/vuln/detail/{exact.ref}"
    if exact.kind == "CWE":
        return f"https://cwe.mitre.org/data/definitions/{exact.ref.split('-')[1]}.html"
    if exact.kind == "CAPEC":
        return f"https://capec.mitre.org/data/definitions/{exact.ref.split('-')[1]}.html"
    return "https://attack.mitre.org/techniques/" + exact.ref.replace(".", "/") + "/"


@dataclass
class RagPack:
    """Entries from a chunks.jsonl file. Bad lines are skipped and counted, never fatal."""

    chunks_path: Path
    version: str = ""
    skipped: int = 0
    chunk_count: int = 0
    _sources: dict[str, int] = field(default_factory=dict)

    def entries(self) -> Iterator[PackEntry]:
        if not self.chunks_path.is_file():
            raise PackUnavailableError(
                f"{self.chunks_path} does not exist: run `ghostbot model pull {MODEL_NAME}` first"
            )
        grouped: dict[str, tuple[str, list[Section]]] = {}  # ref -> (canonical ref, sections)
        self.skipped = self.chunk_count = 0
        with self.chunks_path.open("r", encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    text = " ".join(str(record.get("text") or "").split())[:_MAX_TEXT_CHARS]
                    source = " ".join(str(record.get("source") or "unknown").split())[:60] or "unknown"
                    ref = " ".join(str(record.get("ref") or "").split())[:200]
                    if not ref:
                        ref = str(record.get("chunk_id") or f"line {number}").split("#")[0][:200]
                except (ValueError, AttributeError):
                    self.skipped += 1
                    continue
                if not text:
                    self.skipped += 1
                    continue
                canonical = self._canonical(ref)
                if canonical.upper() not in text.upper():
                    text = f"{canonical}: {text}"  # every passage names its entry
                key = canonical.upper()
                grouped.setdefault(key, (canonical, []))[1].append(Section(source, text))
                self._sources[source] = self._sources.get(source, 0) + 1
                self.chunk_count += 1
        if self.skipped:
            logger.warning("%s: skipped %d unusable lines", self.chunks_path, self.skipped)
        stat = self.chunks_path.stat()
        self.version = f"{self.chunk_count} chunks, {stat.st_size} bytes"
        for canonical, sections in grouped.values():
            yield PackEntry(ref=canonical, title=canonical, url=entry_url(canonical), sections=sections)

    @staticmethod
    def _canonical(ref: str) -> str:
        ids = find_ids(ref)
        if len(ids) == 1 and ids[0].ref.upper() == ref.upper().replace("_", "-").replace(" ", "-"):
            return ids[0].ref  # "cve-2021-44228" -> "CVE-2021-44228"
        return ref


def measure_rate(encode: Callable[[list[str]], object], texts: list[str]) -> float:
    """Texts per second of `encode` on `texts` (a small sample: it runs them once, after one warm-up)."""
    if not texts:
        return 0.0
    encode(texts[:1])  # first call pays for lazy loading
    started = time.perf_counter()
    encode(texts)
    elapsed = time.perf_counter() - started
    return len(texts) / elapsed if elapsed > 0 else float("inf")


def describe_duration(seconds: float) -> str:
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"about {round(seconds / 60)} min"
    return f"about {seconds / 3600:.1f} h"


def pending_chunks(entries: list[PackEntry], known_hashes: dict[str, str]) -> int:
    """How many passages indexing `entries` will (re-)embed: those of new or changed entries."""
    return sum(len(e.sections) for e in entries if known_hashes.get(e.ref) != e.content_hash())
