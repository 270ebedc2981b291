"""The embedding matrix on disk: float16 `.npy` plus a sidecar of chunk ids, one generation at a time.

A writer builds a new generation folder and then swaps the `current` pointer atomically, so a reader
(the bot) never sees vectors and ids from different runs; it notices the swap on its next search.

Large matrices are searched in two stages: Hamming distance on one sign bit per dimension (48 bytes
a row, a few ms for 100k rows) picks a shortlist, exact cosine ranks it. Small ones are scanned exactly.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# From this many rows on, a float32 scan (bandwidth-bound: ~15 ms per 100k rows on the dev box)
# costs more than the sign-bit prefilter plus an exact rescoring of the shortlist (~1 ms per 25k
# rows). On real MiniLM vectors a 4 % shortlist kept the exact top hit for all 70 eval questions and
# 98 % of the top 20 (measured on the pack matrix).
PREFILTER_MIN_ROWS = 20_000
SHORTLIST_FACTOR = 20  # shortlist = this × the hits asked for (at least SHORTLIST_MIN)
SHORTLIST_MIN = 2_000


def sign_bits(vectors: np.ndarray) -> np.ndarray:
    """One bit per dimension (positive or not), packed into uint64 words per row."""
    packed = np.packbits(np.asarray(vectors) > 0, axis=-1)
    pad = (-packed.shape[-1]) % 8
    if pad:
        packed = np.pad(packed, [(0, 0)] * (packed.ndim - 1) + [(0, pad)])
    return np.ascontiguousarray(packed).view(np.uint64)


class DenseIndex:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._loaded_generation: str | None = None
        self._ids = np.zeros(0, dtype=np.int64)
        self._keys = np.zeros(0, dtype=np.int64)  # content key per row: a reused id never matches
        self._matrix = np.zeros((0, 0), dtype=np.float32)  # in-memory float32: fast BLAS matvec
        self._bits: np.ndarray | None = None  # sign bits of the rows, for large matrices only
        self._names: DenseIndex | None = None

    @property
    def names(self) -> DenseIndex:
        """The companion index of entry NAME vectors (title + aliases, keyed by the entry's summary
        chunk id), kept beside the chunk matrix so both follow the same encoder."""
        if self._names is None:
            self._names = DenseIndex(self.directory / "names")
        return self._names

    # --- reading ---------------------------------------------------------------------------

    def _current_generation(self) -> str | None:
        try:
            return (self.directory / "current").read_text().strip() or None
        except FileNotFoundError:
            return None

    def refresh(self) -> None:
        """Load the newest generation if the writer published one since the last call."""
        generation = self._current_generation()
        if generation == self._loaded_generation:
            return
        with self._lock:
            if generation == self._loaded_generation:
                return
            if generation is None:
                ids = keys = np.zeros(0, dtype=np.int64)
                matrix = np.zeros((0, 0), dtype=np.float32)
            else:
                folder = self.directory / generation
                ids = np.load(folder / "ids.npy")
                keys = np.load(folder / "keys.npy")
                vectors = np.load(folder / "vectors.npy", mmap_mode="r")
                if not vectors.shape[0] == ids.shape[0] == keys.shape[0]:
                    raise RuntimeError(f"corrupt embedding generation {folder}: ids and rows differ")
                matrix = np.ascontiguousarray(vectors, dtype=np.float32)
            bits = sign_bits(matrix) if matrix.shape[0] >= PREFILTER_MIN_ROWS else None
            self._ids, self._keys, self._matrix, self._bits = ids, keys, matrix, bits
            self._loaded_generation = generation

    def __len__(self) -> int:
        self.refresh()
        return int(self._ids.shape[0])

    def entries(self) -> dict[int, int]:
        """chunk id → content key of every stored row."""
        self.refresh()
        return dict(zip(self._ids.tolist(), self._keys.tolist()))

    def search(
        self, query: np.ndarray, limit: int, *, exclude: Sequence[int] = ()
    ) -> list[tuple[int, float]]:
        """Cosine search (rows and query are unit vectors): [(chunk id, similarity)], best first.
        Rows whose id is in `exclude` (others' private chunks) are never returned."""
        self.refresh()
        ids, matrix, bits = self._ids, self._matrix, self._bits
        if ids.shape[0] == 0 or limit <= 0:
            return []
        query = query.astype(np.float32, copy=False)
        shortlist = max(SHORTLIST_FACTOR * (limit + len(exclude)), SHORTLIST_MIN)
        if bits is not None and shortlist < ids.shape[0]:
            rows = self._prefilter(bits, query, shortlist)
            scores = matrix[rows] @ query
        else:
            rows = None
            scores = matrix @ query
        if len(exclude):
            masked = np.isin(ids if rows is None else ids[rows], np.asarray(exclude, dtype=np.int64))
            scores[masked] = -np.inf
            limit = min(limit, int(scores.shape[0] - masked.sum()))
            if limit <= 0:
                return []
        limit = min(limit, scores.shape[0])
        top = np.argpartition(-scores, limit - 1)[:limit]
        top = top[np.argsort(-scores[top])]
        picked = top if rows is None else rows[top]
        return [(int(ids[i]), float(scores[j])) for i, j in zip(picked, top)]

    @staticmethod
    def _prefilter(bits: np.ndarray, query: np.ndarray, shortlist: int) -> np.ndarray:
        """Row numbers of the `shortlist` rows whose sign bits differ least from the query's, sorted
        (sorted rows make the rescoring gather sequential in memory)."""
        differ = np.bitwise_count(bits ^ sign_bits(query[None, :]))
        distance = differ[:, 0].astype(np.int16)
        for word in range(1, differ.shape[1]):
            distance += differ[:, word]
        return np.sort(np.argpartition(distance, shortlist - 1)[:shortlist])

    # --- writing ---------------------------------------------------------------------------

    def rows_for(self, keep: Iterable[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, keys, float16 rows) of the stored vectors whose id is in `keep`."""
        self.refresh()
        mask = np.isin(self._ids, np.fromiter(keep, dtype=np.int64))
        return self._ids[mask], self._keys[mask], self._matrix[mask].astype(np.float16)

    def write(self, ids: np.ndarray, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Publish a new generation holding exactly these rows; older generations are removed."""
        if not vectors.shape[0] == ids.shape[0] == keys.shape[0]:
            raise ValueError("ids, keys and vectors differ in length")
        self.directory.mkdir(parents=True, exist_ok=True)
        previous = self._current_generation()
        number = int(previous.split("-")[1]) + 1 if previous else 1
        generation = f"gen-{number}"
        folder = self.directory / generation
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        np.save(folder / "ids.npy", ids.astype(np.int64))
        np.save(folder / "keys.npy", keys.astype(np.int64))
        np.save(folder / "vectors.npy", vectors.astype(np.float16))
        pointer = self.directory / "current.tmp"
        pointer.write_text(generation)
        os.replace(pointer, self.directory / "current")
        for old in self.directory.glob("gen-*"):
            if old.name != generation:
                # Readers that mapped old files keep them alive (POSIX unlink semantics).
                shutil.rmtree(old, ignore_errors=True)
        log.info("published %d embeddings as %s", ids.shape[0], folder)
