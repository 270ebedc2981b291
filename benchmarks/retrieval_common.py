"""Shared set-up for the retrieval benchmarks: a pack index in a work folder, built once.

The first build's report (with its wall time) is kept in WORKDIR/build.json, so later runs
(incremental, nothing to do) can still report how long a build from scratch took.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.retrieval import DenseIndex, Embedder, Indexer, Retriever, dense_directory
from storage.database import Database
from storage.knowledge import KnowledgeRepository

DEFAULT_WORKDIR = Path("data/bench-retrieval")


async def open_pack_index(workdir: Path) -> tuple[Database, Retriever, dict[str, object]]:
    """Open (building or refreshing) the cwe + attack index in `workdir`; returns the build reports."""
    workdir.mkdir(parents=True, exist_ok=True)
    db = await Database.open(f"sqlite+aiosqlite:///{(workdir / 'knowledge.db').resolve()}")
    repo = KnowledgeRepository(db.sessions)
    embedder = Embedder()
    dense = DenseIndex(dense_directory(workdir, embedder))
    indexer = Indexer(repo, embedder, dense)
    build_file = workdir / "build.json"
    builds = json.loads(build_file.read_text()) if build_file.exists() else {}
    runs = {}
    for pack in ("cwe", "attack"):
        report = (await indexer.index_pack(pack)).as_dict()
        runs[pack] = report
        if pack not in builds and report["added"]:
            builds[pack] = report  # a build from scratch
    build_file.write_text(json.dumps(builds, indent=2))
    return db, Retriever(repo, embedder, dense), {"first_build": builds, "this_run": runs}
