"""Retrieval latency: p50/p95 of `Retriever.search` at the pack index size and at 100k chunks,
plus the packs' build time from scratch.

    python benchmarks/retrieval_latency.py [--workdir DIR] [--chunks 100000] [--repeat 3]

The 100k index is the pack index plus synthetic documents whose text is real pack words shuffled
(so FTS posting lists look like real ones) and whose embeddings — chunk and entry-name vectors — are
random unit vectors (encoding 100k chunks would take hours on a CPU; the search cost does not depend
on the values).
Every timed search embeds its query with the real encoder. Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.retrieval_common import DEFAULT_WORKDIR, open_pack_index
from core.retrieval import DenseIndex, Embedder, Retriever, dense_directory
from core.retrieval.indexer import NAME_ORD, content_key
from storage.database import Database
from storage.knowledge import ChunkData, DocumentData, KnowledgeRepository

HERE = Path(__file__).resolve().parent


async def time_searches(
    retriever: Retriever, questions: list[str], repeat: int, mode: str
) -> dict[str, float]:
    await retriever.search(questions[0], k=5, mode=mode)  # warm: encoder load, matrix load
    samples = []
    for _ in range(repeat):
        for q in questions:
            started = time.perf_counter()
            await retriever.search(q, k=5, mode=mode)
            samples.append(1000 * (time.perf_counter() - started))
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 2),
        "p95_ms": round(samples[int(0.95 * (len(samples) - 1))], 2),
        "n": len(samples),
    }


async def time_encoder(embedder: Embedder, questions: list[str], repeat: int) -> dict[str, float]:
    """The query encoder alone, on its query thread: the floor of a dense or hybrid search, and a
    gauge of how busy the machine was during this run (compare runs by it)."""
    loop = asyncio.get_running_loop()
    samples = []
    for _ in range(repeat):
        for q in questions:
            started = time.perf_counter()
            await loop.run_in_executor(embedder.query_executor, embedder.encode, [q])
            samples.append(1000 * (time.perf_counter() - started))
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 2),
        "p95_ms": round(samples[int(0.95 * (len(samples) - 1))], 2),
        "n": len(samples),
    }


async def build_synthetic(workdir: Path, total: int) -> tuple[Database, Retriever, dict[str, object]]:
    """Copy the pack index and grow it to `total` chunks."""
    target = workdir / "synthetic"
    source_db = (workdir / "knowledge.db").resolve()
    db_path = target / "knowledge.db"
    meta = target / "meta.json"
    embedder = Embedder()
    if not (meta.exists() and json.loads(meta.read_text()).get("total") == total):
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        # A consistent copy of the pack database, WAL included.
        src = await Database.open(f"sqlite+aiosqlite:///{source_db}", migrate=False)
        async with src.engine.begin() as conn:
            await conn.exec_driver_sql(f"VACUUM INTO '{db_path.resolve()}'")
        await src.close()
        shutil.copytree(dense_directory(workdir, embedder), dense_directory(target, embedder))
    db = await Database.open(f"sqlite+aiosqlite:///{db_path.resolve()}")
    repo = KnowledgeRepository(db.sessions)
    dense = DenseIndex(dense_directory(target, embedder))
    info: dict[str, object] = {}
    have = (await repo.count())[1]
    if have < total:
        started = time.perf_counter()
        rng = random.Random(7)
        words = [w for r in await repo.get_chunks(await repo.chunk_ids()) for w in r.text.split()]
        docs, n = [], 0
        while have + n < total:
            chunks = []
            for ord_ in range(min(4, total - have - n)):
                text = " ".join(rng.choices(words, k=rng.randint(120, 256)))
                chunks.append(
                    ChunkData(ord=ord_, ref=f"SYN-{len(docs)}", title=f"synthetic {len(docs)}", text=text)
                )
            n += len(chunks)
            docs.append(
                DocumentData(
                    locator=f"SYN-{len(docs)}", title="synthetic", content_hash=f"s{len(docs)}", chunks=chunks
                )
            )
        for i in range(0, len(docs), 1000):
            await repo.save_documents("synthetic", docs[i : i + 1000])
        versions = await repo.chunk_versions()
        old = dense.entries()
        new = [(cid, content_key(h, o)) for cid, h, o in versions if cid not in old]
        ids, keys, vectors = dense.rows_for(list(old))
        rand = np.random.default_rng(7).standard_normal((len(new), vectors.shape[1]), dtype=np.float32)
        rand /= np.linalg.norm(rand, axis=1, keepdims=True)
        dense.write(
            np.concatenate([ids, np.array([c for c, _ in new], dtype=np.int64)]),
            np.concatenate([keys, np.array([k for _, k in new], dtype=np.int64)]),
            np.concatenate([vectors, rand.astype(np.float16)]),
        )
        meta.write_text(json.dumps({"total": total}))
        info["synthetic_build_s"] = round(time.perf_counter() - started, 1)
    entries = await repo.entry_names()
    if len(dense.names) != len(entries):
        # One name vector per entry, as the indexer keeps: the pack's real ones, random for the rest.
        pack_names = DenseIndex(dense_directory(workdir, embedder)).names
        ids, _, vectors = pack_names.rows_for([cid for cid, _, _, _ in entries])
        known = set(ids.tolist())
        rest = [cid for cid, _, _, _ in entries if cid not in known]
        rand = np.random.default_rng(8).standard_normal((len(rest), vectors.shape[1]), dtype=np.float32)
        rand /= np.linalg.norm(rand, axis=1, keepdims=True)
        all_ids = np.concatenate([ids, np.array(rest, dtype=np.int64)])
        key_of = {cid: content_key(digest, NAME_ORD) for cid, digest, _, _ in entries}
        dense.names.write(
            all_ids,
            np.array([key_of[int(c)] for c in all_ids], dtype=np.int64),
            np.concatenate([vectors, rand.astype(np.float16)]),
        )
    info["chunks"] = (await repo.count())[1]
    info["entry_names"] = len(dense.names)
    return db, Retriever(repo, embedder, dense), info


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    questions = [
        json.loads(line)["question"]
        for line in (HERE / "retrieval_questions.jsonl").read_text().splitlines()
        if line.strip()
    ]
    db, retriever, reports = await open_pack_index(args.workdir)
    result: dict[str, object] = {
        "build": {
            pack: {k: r[k] for k in ("seconds", "chunks", "embedded", "version")}  # type: ignore[index]  # the result dict is loosely typed
            for pack, r in reports["first_build"].items()  # type: ignore[union-attr]  # the result dict is loosely typed
        }
    }
    try:
        pack_chunks = (await KnowledgeRepository(db.sessions).count())[1]
        result["pack_index"] = {"chunks": pack_chunks}
        for mode in ("hybrid", "bm25", "dense"):
            result["pack_index"][mode] = await time_searches(retriever, questions, args.repeat, mode)  # type: ignore[index]  # the result dict is loosely typed
        result["query_encoder_only"] = await time_encoder(retriever.embedder, questions, args.repeat)  # type: ignore[arg-type]  # the encoder is set: dense is on
    finally:
        await db.close()
    big_db, big, info = await build_synthetic(args.workdir, args.chunks)
    try:
        result["synthetic_index"] = dict(info)
        for mode in ("hybrid", "bm25", "dense"):
            result["synthetic_index"][mode] = await time_searches(big, questions, args.repeat, mode)  # type: ignore[index]  # the result dict is loosely typed
    finally:
        await big_db.close()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
