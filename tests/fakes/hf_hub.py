"""A loopback fake of the Hugging Face Hub's download endpoints (aiohttp, in a background thread).

Point ``huggingface_hub`` at it with ``HF_ENDPOINT`` / ``endpoint=server.url``. It serves what
``hf_hub_download`` and ``model_info`` need:

- ``HEAD|GET /{owner}/{repo}/resolve/{revision}/{path}``: ``X-Repo-Commit``, ``ETag`` (sha256 for LFS files,
  git blob sha1 otherwise; LFS files also carry ``X-Linked-Etag`` / ``X-Linked-Size``), ``Content-Length``;
  ``Range: bytes=N-`` is honoured with a 206.
- ``GET /api/models/{owner}/{repo}[/revision/{rev}]`` → ``{"id", "sha", "siblings": [{"rfilename"}]}``;
  ``GET /api/models/{owner}/{repo}/tree/{rev}`` → the file list.
- Errors as the Hub sends them: ``X-Error-Code: RepoNotFound`` (401 to anonymous callers, 404 otherwise),
  ``GatedRepo`` (401 without the repo's token), ``EntryNotFound`` (404); a wrong token gets a 401.

Failure modes for tests: ``interrupt_once[path] = n`` sends the first n bytes of the next GET of that file and
then drops the connection (a resumable download); ``corrupt.add(path)`` serves bytes that do not match the
ETag. Every request is recorded in ``requests``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from aiohttp import web

from tests.fakes.loopback import LoopbackServer

LFS_SUFFIXES = (".pt", ".pth", ".safetensors", ".bin", ".npy", ".jsonl")


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    sha: str = ""
    gated_token: str | None = None  # set: only this token may download (a gated repo)

    def __post_init__(self) -> None:
        if not self.sha:
            digest = hashlib.sha1()
            for path in sorted(self.files):
                digest.update(path.encode() + b"\0" + self.files[path])
            self.sha = digest.hexdigest()


def is_lfs(path: str) -> bool:
    return path.endswith(LFS_SUFFIXES)


def etag_of(path: str, data: bytes) -> str:
    if is_lfs(path):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's blob id


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case


@dataclass
class FakeHub(LoopbackServer):
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    valid_tokens: set[str] = field(default_factory=set)
    interrupt_once: dict[str, int] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)
    requests: list[Recorded] = field(default_factory=list)

    thread_name = "fake-hf-hub"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/api/models/{owner}/{repo}/tree/{rev}", self._tree)
        app.router.add_route("*", "/api/models/{owner}/{repo}/revision/{rev}", self._info)
        app.router.add_route("*", "/api/models/{owner}/{repo}", self._info)
        app.router.add_route("*", "/{owner}/{repo}/resolve/{rev}/{path:.+}", self._resolve)
        return app

    # --- helpers -----------------------------------------------------------------------------------------
    def _record(self, request: web.Request) -> None:
        self.requests.append(
            Recorded(request.method, request.path, {k.lower(): v for k, v in request.headers.items()})
        )

    def _token(self, request: web.Request) -> str | None:
        auth = request.headers.get("Authorization", "")
        return auth[7:] if auth.startswith("Bearer ") else None

    def _refuse(self, request: web.Request, repo_id: str) -> web.Response | FakeRepo:
        """The repo, or the error response the Hub would send for it."""
        token = self._token(request)
        if token is not None and token not in self.valid_tokens:
            return web.Response(status=401, text='{"error": "Invalid credentials in Authorization header"}')
        repo = self.repos.get(repo_id)
        if repo is None:
            return web.Response(
                status=404 if token else 401,
                headers={"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"},
                text='{"error": "Repository not found"}',
            )
        if repo.gated_token is not None and token != repo.gated_token:
            return web.Response(
                status=401,
                headers={
                    "X-Error-Code": "GatedRepo",
                    "X-Error-Message": "Access to this model is restricted; you must have access to it",
                },
                text='{"error": "gated"}',
            )
        return repo

    # --- endpoints ---------------------------------------------------------------------------------------
    async def _info(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        repo_id = f"{request.match_info['owner']}/{request.match_info['repo']}"
        repo = self._refuse(request, repo_id)
        if isinstance(repo, web.Response):
            return repo
        return web.json_response(
            {
                "id": repo_id,
                "modelId": repo_id,
                "sha": repo.sha,
                "private": False,
                "gated": repo.gated_token is not None,
                "siblings": [{"rfilename": path} for path in sorted(repo.files)],
            }
        )

    async def _tree(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        repo_id = f"{request.match_info['owner']}/{request.match_info['repo']}"
        repo = self._refuse(request, repo_id)
        if isinstance(repo, web.Response):
            return repo
        entries = []
        for path, data in sorted(repo.files.items()):
            entry: dict[str, object] = {
                "type": "file",
                "path": path,
                "size": len(data),
                "oid": etag_of(path, data),
            }
            if is_lfs(path):
                entry["lfs"] = {"oid": etag_of(path, data), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        return web.json_response(entries)

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        repo_id = f"{request.match_info['owner']}/{request.match_info['repo']}"
        path = request.match_info["path"]
        repo = self._refuse(request, repo_id)
        if isinstance(repo, web.Response):
            return repo
        data = repo.files.get(path)
        if data is None:
            return web.Response(
                status=404,
                headers={"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"},
                text='{"error": "Entry not found"}',
            )
        etag = etag_of(path, data)
        if path in self.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if is_lfs(path):
            headers["X-Linked-Etag"] = f'"{etag}"'
            headers["X-Linked-Size"] = str(len(data))
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(data))
            return web.Response(status=200, headers=headers)
        start = 0
        range_header = request.headers.get("Range", "")
        if range_header.startswith("bytes=") and range_header[6:].split("-")[0].isdigit():
            start = int(range_header[6:].split("-")[0])
        body = data[start:]
        status = 206 if start else 200
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        headers["Content-Length"] = str(len(body))
        cut = self.interrupt_once.pop(path, None)
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        if cut is not None:
            await response.write(body[:cut])
            assert request.transport is not None
            request.transport.close()  # drop the connection mid-body: the client must resume with Range
            return response
        await response.write(body)
        await response.write_eof()
        return response
