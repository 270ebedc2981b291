"""Models from the Hugging Face Hub: pull (resumable, verified), list what is cached, resolve `hf:` paths.

Files live in huggingface_hub's own cache layout under ``DATA_DIR/models`` (``models--owner--repo/blobs``,
``snapshots/<commit>/…``), so an interrupted download resumes from its ``.incomplete`` blob. Next to it,
``manifest.json`` records every pulled model: its files with size, ETag and sha256, and a description
(architecture, parameters, context length). A model is only recorded once every file matched the Hub's
ETag (sha256 for LFS files, the git blob id otherwise) and the checkpoint loaded, so ``resolve`` can start
from the cache with no network at all, and refuses a file that changed on disk since.

Names: ``ghostlm-v0.9`` (the upstream GhostLM release and its RAG corpus), ``owner/repo`` (a whole repository:
a GhostLM checkpoint repo or a transformers causal LM), ``owner/repo/path/to/file`` (one checkpoint file).
``MODEL_PATH=hf:NAME`` resolves any of these.

All calls block (network, hashing, loading a checkpoint): run them in a thread from async code. Error
messages never contain the token (they are built from the secrets the caller passes).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.settings import Settings

logger = logging.getLogger(__name__)

HF_PREFIX = "hf:"
DEFAULT_MODEL = "ghostlm-v0.9"
MANIFEST = "manifest.json"
PULL_COMMAND = "ghostbot model pull"

# (file name, bytes done, bytes total or None)
ProgressCallback = Callable[[str, int, int | None], None]


@dataclass(frozen=True)
class ModelSpec:
    name: str  # how the user names it (the manifest key)
    repo_id: str
    files: tuple[str, ...] = ()  # empty: every useful file of the repository
    main: str | None = None  # the file MODEL_PATH points at; None: the snapshot folder
    revision: str = "main"


KNOWN_MODELS: dict[str, ModelSpec] = {
    "ghostlm-v0.9": ModelSpec(
        name="ghostlm-v0.9",
        repo_id="Ghostgim/GhostLM-v0.9-experimental",
        files=("best_model.pt", "rag/chunks.jsonl", "rag/index.npy"),
        main="best_model.pt",
    ),
}

# Files of a whole-repository pull that no backend here reads (other frameworks' weights, docs, images).
_SKIP_SUFFIXES = (".msgpack", ".h5", ".onnx", ".tflite", ".gguf", ".ot", ".png", ".jpg", ".gif", ".mlmodel")
_SKIP_PREFIXES = ("flax_model", "tf_model", "rust_model", "onnx/", "coreml/", "openvino/")
_NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")


class ModelHubError(RuntimeError):
    """A pull or a resolve failed; the message is one line, written for the user, and never has a secret."""


def parse_model_name(name: str) -> ModelSpec:
    """`ghostlm-v0.9`, `owner/repo` or `owner/repo/path/file` (an `hf:` prefix is allowed)."""
    raw = name.strip()
    if raw.startswith(HF_PREFIX):
        raw = raw[len(HF_PREFIX) :]
    raw = raw.strip("/")
    if raw in KNOWN_MODELS:
        return KNOWN_MODELS[raw]
    parts = raw.split("/")
    if len(parts) < 2 or not all(_NAME_PART.match(p) and p not in (".", "..") for p in parts):
        known = ", ".join(KNOWN_MODELS)
        raise ModelHubError(
            f"{name!r} is not a model name: use {known}, owner/repo or owner/repo/file (a file of that repository)"
        )
    repo_id = "/".join(parts[:2])
    if len(parts) == 2:
        return ModelSpec(name=repo_id, repo_id=repo_id)
    file = "/".join(parts[2:])
    return ModelSpec(name=raw, repo_id=repo_id, files=(file,), main=file)


@dataclass
class CachedFile:
    path: str  # inside the repository
    size: int
    etag: str  # the Hub's ETag: sha256 for LFS files, git blob sha1 otherwise
    sha256: str
    mtime_ns: int  # of the cached blob when it was last verified


@dataclass
class CachedModel:
    name: str
    repo_id: str
    commit: str
    path: str  # what MODEL_PATH resolves to (a file or the snapshot folder)
    kind: str  # "ghostlm" | "hf"
    architecture: str
    parameters: int
    context_length: int
    size: int  # bytes, every file
    sha256: str  # of the main weights file
    files: list[CachedFile] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CachedModel:
        files = [CachedFile(**f) for f in data.get("files", [])]
        return cls(**{**data, "files": files})


def git_blob_sha1(path: Path) -> str:
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    _feed(digest, path)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    _feed(digest, path)
    return digest.hexdigest()


def _feed(digest: Any, path: Path) -> None:
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)


def check_etag(path: Path, etag: str) -> str:
    """The file's sha256 if it matches the Hub's ETag; ModelHubError otherwise."""
    sha256 = file_sha256(path)
    if _HEX64.match(etag):
        ok = sha256 == etag
    elif _HEX40.match(etag):
        ok = git_blob_sha1(path) == etag
    else:
        ok = True  # an ETag that is no content hash (not the Hub's): the size check has to do
    if not ok:
        raise ModelHubError(
            f"{path.name} is corrupted: its content does not match the Hub's checksum "
            f"(ETag {etag[:12]}…, sha256 of the file {sha256[:12]}…)"
        )
    return sha256


class ModelHub:
    """Pull models into ``cache_dir`` and find them there again."""

    def __init__(
        self,
        cache_dir: Path,
        *,
        endpoint: str | None = None,
        token: str | None = None,
        secrets: Sequence[str] = (),
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.endpoint = (endpoint or "https://huggingface.co").rstrip("/")
        self._token = token or None
        self._secrets = [s for s in (*secrets, token or "") if s]

    # --- public API --------------------------------------------------------------------------------------
    def cached(self) -> list[CachedModel]:
        """Every model pulled so far, as recorded (no hashing, no network)."""
        return [CachedModel.from_dict(m) for m in self._read_manifest().values()]

    def resolve(self, name: str, *, download: bool = True, progress: ProgressCallback | None = None) -> Path:
        """The local path of `name`: from the cache when it was pulled (no network), else pulled now.

        A cached file that changed on disk is refused; with `download=False` a missing model is an error."""
        spec = parse_model_name(name)
        entry = self._read_manifest().get(spec.name)
        if entry is not None:
            model = CachedModel.from_dict(entry)
            self._verify_cached(spec, model)
            return Path(model.path)
        if not download:
            raise ModelHubError(f"{spec.name} is not downloaded: run `{PULL_COMMAND} {spec.name}`")
        if not self.reachable():  # offline: say so now, not after huggingface_hub's ~25 s of retries
            raise ModelHubError(
                f"{spec.name} is not in the model cache ({self.cache_dir}) and the Hub at {self.endpoint} "
                f"cannot be reached: run `{PULL_COMMAND} {spec.name}` when online"
            )
        logger.info(
            "%s is not in the model cache %s: pulling it from %s", spec.name, self.cache_dir, self.endpoint
        )
        return Path(self.pull(name, progress=progress).path)

    def reachable(self, timeout: float = 5.0) -> bool:
        """Whether the endpoint answers HTTP at all (any status), with one quick try."""
        from huggingface_hub.utils import get_session

        try:
            get_session().head(self.endpoint, timeout=timeout)
        except Exception as exc:
            logger.info("the Hub at %s cannot be reached: %s", self.endpoint, self.redact(str(exc)))
            return False
        return True

    def data_file(self, name: str, file: str) -> Path:
        """A file pulled with model `name` (e.g. ghostlm-v0.9's rag/chunks.jsonl), verified."""
        spec = parse_model_name(name)
        entry = self._read_manifest().get(spec.name)
        if entry is None:
            raise ModelHubError(f"{spec.name} is not downloaded: run `{PULL_COMMAND} {spec.name}`")
        model = CachedModel.from_dict(entry)
        for cached in model.files:
            if cached.path == file:
                self._verify_cached(spec, model)
                return self._snapshot_dir(spec, model.commit) / file
        raise ModelHubError(f"{spec.name} has no file {file}")

    def pull(self, name: str, *, progress: ProgressCallback | None = None) -> CachedModel:
        """Download (or complete, or re-verify) `name`, check every file against the Hub's ETag and that
        the checkpoint loads, and record it in the manifest."""
        spec = parse_model_name(name)
        try:
            files = list(spec.files) or self._list_repo_files(spec)
            cached_files: list[CachedFile] = []
            local: dict[str, Path] = {}
            for file in files:
                path = self._download(spec, file, progress)
                local[file] = path
                cached_files.append(self._verify_download(spec, file, path))
        except ModelHubError:
            raise
        except Exception as exc:
            raise ModelHubError(self._explain(spec, exc)) from None
        snapshot = self._snapshot_of(local[files[0]], files[0])
        model = self._describe(spec, snapshot, cached_files)
        manifest = self._read_manifest()
        manifest[spec.name] = asdict(model)
        self._write_manifest(manifest)
        return model

    # --- downloading -------------------------------------------------------------------------------------
    def _list_repo_files(self, spec: ModelSpec) -> list[str]:
        from huggingface_hub import HfApi

        info = HfApi(endpoint=self.endpoint, token=self._token).model_info(
            spec.repo_id, revision=spec.revision
        )
        names = [s.rfilename for s in (info.siblings or [])]
        wanted = [n for n in names if not n.endswith(_SKIP_SUFFIXES) and not n.startswith(_SKIP_PREFIXES)]
        wanted = [n for n in wanted if not Path(n).name.startswith(".")]
        if any(n.endswith(".safetensors") for n in wanted):  # the same weights twice: keep the safe format
            wanted = [n for n in wanted if not (n.endswith(".bin") and "pytorch_model" in n)]
        if not wanted:
            raise ModelHubError(f"{spec.repo_id} on {self.endpoint} has no model files")
        return wanted

    def _download(self, spec: ModelSpec, file: str, progress: ProgressCallback | None) -> Path:
        from huggingface_hub import hf_hub_download

        kwargs: dict[str, Any] = {}
        if progress is not None:
            kwargs["tqdm_class"] = _callback_bar(file, progress)
        return Path(
            hf_hub_download(
                spec.repo_id,
                file,
                revision=spec.revision,
                cache_dir=self.cache_dir,
                endpoint=self.endpoint,
                token=self._token,
                **kwargs,
            )
        )

    def _verify_download(self, spec: ModelSpec, file: str, path: Path) -> CachedFile:
        blob = path.resolve()
        etag = blob.name if path.is_symlink() else ""
        try:
            sha256 = check_etag(blob, etag)
        except ModelHubError as exc:
            # Remove the bad blob and its link, so the next pull downloads it again instead of reusing it.
            for bad in (path, blob):
                with contextlib.suppress(OSError):
                    bad.unlink()
            raise ModelHubError(
                f"{spec.repo_id}: {exc}; the file was deleted: run `{PULL_COMMAND} {spec.name}` again"
            ) from None
        stat = blob.stat()
        return CachedFile(path=file, size=stat.st_size, etag=etag, sha256=sha256, mtime_ns=stat.st_mtime_ns)

    @staticmethod
    def _snapshot_of(path: Path, file: str) -> Path:
        snapshot = path
        for _ in Path(file).parts:
            snapshot = snapshot.parent
        return snapshot

    def _snapshot_dir(self, spec: ModelSpec, commit: str) -> Path:
        folder = "models--" + spec.repo_id.replace("/", "--")
        return self.cache_dir / folder / "snapshots" / commit

    # --- verifying and describing ------------------------------------------------------------------------
    def _verify_cached(self, spec: ModelSpec, model: CachedModel) -> None:
        snapshot = self._snapshot_dir(spec, model.commit)
        changed = False
        for cached in model.files:
            path = snapshot / cached.path
            try:
                stat = path.stat()
            except OSError:
                raise ModelHubError(
                    f"{spec.name}: {cached.path} is missing from the model cache {self.cache_dir}: "
                    f"run `{PULL_COMMAND} {spec.name}`"
                ) from None
            if stat.st_size == cached.size and stat.st_mtime_ns == cached.mtime_ns:
                continue  # unchanged since it was verified
            if stat.st_size != cached.size or file_sha256(path) != cached.sha256:
                raise ModelHubError(
                    f"{spec.name}: {cached.path} in the model cache is corrupted (it changed since it was "
                    f"verified): run `{PULL_COMMAND} {spec.name}` to download it again"
                )
            cached.mtime_ns = stat.st_mtime_ns  # touched but identical
            changed = True
        if changed:
            manifest = self._read_manifest()
            manifest[spec.name] = asdict(model)
            self._write_manifest(manifest)

    def _describe(self, spec: ModelSpec, snapshot: Path, files: list[CachedFile]) -> CachedModel:
        from core.generators.errors import GeneratorError
        from core.generators.factory import detect_model_kind

        target = snapshot / spec.main if spec.main else snapshot
        try:
            kind = detect_model_kind(target)
        except GeneratorError as exc:
            raise ModelHubError(f"{spec.name} was downloaded but is not a usable model: {exc}") from None
        if kind == "ghostlm":
            architecture, parameters, context, weights = self._describe_ghostlm(spec, target)
        else:
            architecture, parameters, context, weights = self._describe_hf(target)
        by_path = {f.path: f for f in files}
        weights_rel = weights.relative_to(snapshot).as_posix() if weights is not None else ""
        return CachedModel(
            name=spec.name,
            repo_id=spec.repo_id,
            commit=snapshot.name,
            path=str(target),
            kind=kind,
            architecture=architecture,
            parameters=parameters,
            context_length=context,
            size=sum(f.size for f in files),
            sha256=by_path[weights_rel].sha256 if weights_rel in by_path else "",
            files=files,
        )

    def _describe_ghostlm(self, spec: ModelSpec, target: Path) -> tuple[str, int, int, Path | None]:
        from ghostlm import CheckpointError, load_model

        try:
            model = load_model(target)
        except CheckpointError as exc:
            raise ModelHubError(f"{spec.name} was downloaded but does not load: {exc}") from None
        except Exception as exc:  # garbage can fail anywhere inside torch's unpickler
            raise ModelHubError(
                f"{spec.name} was downloaded but does not load: not a checkpoint ({type(exc).__name__})"
            ) from None
        cfg = model.config
        parts = [f"{cfg.n_layers} layers", f"d_model {cfg.d_model}", f"{cfg.n_heads} heads"]
        if getattr(cfg, "use_rope", False):
            parts.append("RoPE")
        if getattr(cfg, "use_swiglu", False):
            parts.append("SwiGLU")
        parameters = sum(p.numel() for p in model.parameters())  # tied weights are counted once
        weights = target if target.is_file() else _ghostlm_weights(target)
        return f"GhostLM ({', '.join(parts)})", parameters, int(cfg.context_length), weights

    @staticmethod
    def _describe_hf(target: Path) -> tuple[str, int, int, Path | None]:
        config = json.loads((target / "config.json").read_text(encoding="utf-8"))
        architectures = config.get("architectures") or [config.get("model_type", "?")]
        context = next(
            (
                int(config[key])
                for key in ("max_position_embeddings", "n_positions", "seq_length", "n_ctx")
                if isinstance(config.get(key), int)
            ),
            0,
        )
        weights = sorted(target.glob("*.safetensors")) or sorted(target.glob("*.bin"))
        parameters = sum(_safetensors_params(w) for w in weights if w.suffix == ".safetensors")
        return str(architectures[0]), parameters, context, (weights[0] if weights else None)

    # --- errors ------------------------------------------------------------------------------------------
    def _explain(self, spec: ModelSpec, exc: BaseException) -> str:
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        where = f"{self.endpoint}/{spec.repo_id}"
        token_hint = "set HF_TOKEN to a token that has access" if self._token is None else "check HF_TOKEN"
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if isinstance(exc, GatedRepoError):
            message = (
                f"{spec.repo_id} is a gated model: accept its conditions at {where} while logged in, then "
                f"{token_hint}"
            )
        elif isinstance(exc, RepositoryNotFoundError):
            message = (
                f"no model repository {spec.repo_id} on {self.endpoint} (if it is private, {token_hint})"
            )
        elif isinstance(exc, RevisionNotFoundError):
            message = f"{spec.repo_id} has no revision {spec.revision!r}"
        elif isinstance(exc, (LocalEntryNotFoundError, OfflineModeIsEnabled)) or _is_network_error(exc):
            message = (
                f"{spec.name} is not in the model cache ({self.cache_dir}) and the Hub at {self.endpoint} "
                f"cannot be reached: run `{PULL_COMMAND} {spec.name}` when online"
            )
        elif isinstance(exc, EntryNotFoundError):
            message = f"{spec.repo_id} has no file {', '.join(spec.files) or '(listed file)'} ({where})"
        elif isinstance(exc, HfHubHTTPError) and status == 401:
            message = f"the Hub refused the request for {spec.repo_id} (401 Unauthorized): {token_hint}"
        elif isinstance(exc, HfHubHTTPError) and status == 403:
            message = f"the Hub refused access to {spec.repo_id} (403 Forbidden): {token_hint}"
        elif isinstance(exc, OSError) and "Consistency check failed" in str(exc):
            message = (
                f"the download of {spec.name} was cut short: run `{PULL_COMMAND} {spec.name}` again to resume"
            )
        else:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            message = f"could not pull {spec.name} from {self.endpoint}: {type(exc).__name__}: {first}"
        return self.redact(message)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    # --- manifest ----------------------------------------------------------------------------------------
    def _read_manifest(self) -> dict[str, dict[str, Any]]:
        path = self.cache_dir / MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable model manifest %s (%s)", path, exc)
            return {}
        models = data.get("models") if isinstance(data, dict) else None
        return models if isinstance(models, dict) else {}

    def _write_manifest(self, models: dict[str, dict[str, Any]]) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        path = self.cache_dir / MANIFEST
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"models": models}, indent=2), encoding="utf-8")
        os.replace(tmp, path)


def _is_network_error(exc: BaseException) -> bool:
    import httpx2  # huggingface_hub 2.x's HTTP client

    return isinstance(exc, (ConnectionError, TimeoutError, httpx2.TransportError))


def _ghostlm_weights(folder: Path) -> Path | None:
    for pattern in ("*.safetensors", "*.pt", "*.pth"):
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
    return None


def _safetensors_params(path: Path) -> int:
    """Parameter count from a safetensors header, without loading the tensors."""
    try:
        with path.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
    except (OSError, ValueError):
        return 0
    total = 0
    for name, meta in header.items():
        if name != "__metadata__" and isinstance(meta, dict):
            count = 1
            for dim in meta.get("shape", []):
                count *= int(dim)
            total += count
    return total


def _callback_bar(file: str, progress: ProgressCallback) -> type:
    """A tqdm-shaped class for huggingface_hub that reports to `progress` instead of drawing."""

    class _Bar:
        def __init__(self, *args: Any, total: int | None = None, initial: int = 0, **kwargs: Any) -> None:
            self.total = total
            self.n = initial
            progress(file, self.n, self.total)

        def __enter__(self) -> _Bar:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def update(self, n: int | float | None = 1) -> None:
            self.n += int(n or 0)
            progress(file, self.n, self.total)

        def close(self) -> None:
            return None

    return _Bar


def hub_from_settings(settings: Settings) -> ModelHub:
    """The hub as configured: cache under DATA_DIR/models, HF_ENDPOINT, HF_TOKEN (redacted everywhere)."""
    token = settings.hf_token.get_secret_value() if settings.hf_token is not None else None
    return ModelHub(
        Path(settings.data_dir) / "models",
        endpoint=settings.hf_endpoint,
        token=token,
        secrets=settings.secret_values(),
    )
