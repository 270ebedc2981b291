"""The embedding matrix on disk: float16 `.npy` plus a sidecar of chunk ids, one generation at a time.

A writer builds a new generation folder and then swaps the `current` pointer atomically, so a reader
(the bot) never sees vectors and ids from different runs; it notices the swap on its next search.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class DenseIndex:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._loaded_generation: str | None = None
        self._ids = np.zeros(0, dtype=np.int64)
        self._keys = np.zeros(0, dtype=np.int64)  # content key per row: a reused id never matches
        self._matrix = np.zeros((0, 0), dtype=np.float32)  # in-memory float32: fast BLAS matvec

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
                matrix = np.asarray(vectors, dtype=np.float32)
            self._ids, self._keys, self._matrix = ids, keys, matrix
            self._loaded_generation = generation

    def __len__(self) -> int:
        self.refresh()
        return int(self._ids.shape[0])

    def entries(self) -> dict[int, int]:
        """chunk id → content key of every stored row."""
        self.refresh()
        return dict(zip(self._ids.tolist(), self._keys.tolist()))

    def search(self, query: np.ndarray, limit: int) -> list[tuple[int, float]]:
        """Cosine search (rows and query are unit vectors): [(chunk id, similarity)], best first."""
        self.refresh()
        ids, matrix = self._ids, self._matrix
        if ids.shape[0] == 0 or limit <= 0:
            return []
        scores = matrix @ query.astype(np.float32, copy=False)
        limit = min(limit, scores.shape[0])
        top = np.argpartition(-scores, limit - 1)[:limit]
        top = top[np.argsort(-scores[top])]
        return [(int(ids[i]), float(scores[i])) for i in top]

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
