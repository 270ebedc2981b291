"""Entity linking: which knowledge-base entries a question names, by id, name or alias.

The names of every entry ("Kerberoasting", "Mimikatz", "APT29", "Cozy Bear", "XSS", "SQL Injection") are
loaded once from the repository (and again after `ttl_s`) into an in-memory map of word sequences; a
question is then scanned left to right for the longest name starting at each word. A name of one common
word ("data", "system", "proxy" as a word of a longer question) links only when it is most of the question.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from core.retrieval.ids import find_ids

_WORD = re.compile(r"\w+", re.UNICODE)
MAX_NAME_WORDS = 12
ROLE_RANK = {"ref": 0, "name": 1, "alias": 2, "derived": 3, "lossy": 4}
_LOSSY = re.compile(r"[^\w\s\-'’()]")
_PARENTHETICAL = re.compile(r"^(.*?)\s*\(\s*'?([^()']+?)'?\s*\)\s*$")
# Words that name an entry but are far more often just words of a question.
_COMMON = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "of",
        "to",
        "in",
        "on",
        "for",
        "with",
        "by",
        "at",
        "is",
        "are",
        "be",
        "it",
        "as",
        "from",
        "this",
        "that",
        "what",
        "which",
        "who",
        "how",
        "why",
        "when",
        "data",
        "system",
        "systems",
        "service",
        "services",
        "user",
        "users",
        "account",
        "accounts",
        "file",
        "files",
        "network",
        "web",
        "server",
        "windows",
        "linux",
        "macos",
        "code",
        "input",
        "output",
        "access",
        "software",
        "tool",
        "tools",
        "group",
        "groups",
        "malware",
        "process",
        "processes",
        "memory",
        "password",
        "passwords",
        "email",
        "cloud",
        "application",
        "applications",
        "app",
        "apps",
        "script",
        "scripts",
        "command",
        "commands",
        "token",
        "tokens",
        "session",
        "sessions",
        "information",
        "execution",
        "persistence",
        "discovery",
        "collection",
        "impact",
        "exfiltration",
        "defense",
        "evasion",
        "reconnaissance",
        "development",
        "initial",
        "privilege",
        "escalation",
        "lateral",
        "movement",
        "credential",
        "credentials",
        "resource",
        "resources",
        "python",
        "java",
        "javascript",
        "php",
        "sql",
        "html",
        "browser",
        "browsers",
        "api",
        "apis",
        "database",
        "databases",
        "container",
        "containers",
        "registry",
        "driver",
        "drivers",
        "library",
        "libraries",
        "module",
        "modules",
        "shell",
        "hardware",
        "firmware",
        "encryption",
        "authentication",
        "authorization",
        "cookie",
        "cookies",
        "configuration",
        "content",
        "image",
        "images",
        "domain",
        "domains",
        "proxy",
        "path",
        "paths",
        "ping",
        "net",
        "at",
        "page",
        "log",
        "logs",
        "event",
        "events",
        "audit",
        "policy",
        "policies",
    ]
)


class NameIndexSource(Protocol):
    async def entry_name_index(
        self, kinds: Sequence[str] | None = None
    ) -> list[tuple[str, str, str, str]]: ...


@dataclass(frozen=True)
class Link:
    """One mention of an entry in a question: words [start, end) of the question."""

    ref: str
    kind: str
    role: str  # "ref" | "name" | "alias" | "id" (an exact id typed in the question)
    start: int
    end: int
    name: str

    @property
    def words(self) -> int:
        return self.end - self.start


def derived_names(name: str) -> list[str]:
    """Short names inside a long one: "Cross-Site Request Forgery (CSRF)" is also "CSRF" and "Cross-Site
    Request Forgery"; "Improper Neutralization … ('Cross-site Scripting')" is also "Cross-site Scripting"."""
    match = _PARENTHETICAL.match(name)
    if not match:
        return []
    outer, inner = match.group(1).strip(), match.group(2).strip()
    return [n for n in (inner, outer) if n and n != name]


def words_of(text: str) -> list[str]:
    return [w.casefold() for w in _WORD.findall(text)]


class EntityLinker:
    def __init__(
        self,
        repository: NameIndexSource,
        *,
        ttl_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._repo = repository
        self._ttl_s = ttl_s
        self._clock = clock
        self._names: dict[tuple[str, ...], list[tuple[str, str, str]]] = {}
        self._refs: set[str] = set()
        self._loaded_at: float | None = None

    async def _ensure(self) -> None:
        now = self._clock()
        if self._loaded_at is not None and now - self._loaded_at < self._ttl_s:
            return
        names: dict[tuple[str, ...], list[tuple[str, str, str]]] = {}
        refs: set[str] = set()
        for key, ref, kind, role in await self._repo.entry_name_index():
            if kind == "document":
                continue  # a user's files are found by search, not by name
            refs.add(ref.upper())
            for name, how in ((key, role), *((d, "derived") for d in derived_names(key) if role == "name")):
                words = tuple(words_of(name))
                if not words or len(words) > MAX_NAME_WORDS or (how != "ref" and len("".join(words)) < 3):
                    continue
                if how not in ("ref", "derived") and _LOSSY.search(name):
                    how = "lossy"  # "Path Traversal: '....//'" is not what "path traversal" names
                names.setdefault(words, []).append((ref, kind, how))
        for candidates in names.values():
            candidates.sort(key=lambda c: ROLE_RANK.get(c[2], 3))
        self._names, self._refs, self._loaded_at = names, refs, now

    def invalidate(self) -> None:
        self._loaded_at = None

    async def link(self, text: str) -> list[Link]:
        """The entries `text` names, in order of mention: exact ids first-class, then names and aliases
        (longest match at each word; one link per entry)."""
        await self._ensure()
        links: list[Link] = []
        seen: set[str] = set()
        for exact in find_ids(text):
            if exact.has_own_entry and exact.ref.upper() in self._refs and exact.ref not in seen:
                seen.add(exact.ref)
                links.append(Link(exact.ref, "", "id", -1, -1, exact.ref))
        words = words_of(text)
        i = 0
        while i < len(words):
            for n in range(min(MAX_NAME_WORDS, len(words) - i), 0, -1):
                candidates = self._names.get(tuple(words[i : i + n]))
                if not candidates:
                    continue
                if n == 1 and words[i] in _COMMON and len(words) > 2:
                    continue
                ref, kind, role = candidates[0]
                if ref not in seen:
                    seen.add(ref)
                    links.append(Link(ref, kind, role, i, i + n, " ".join(words[i : i + n])))
                i += n - 1
                break
            i += 1
        return links


def primary_links(links: Sequence[Link], want: int = 1) -> list[Link]:
    """The `want` links a question is most about: typed ids first, then the longest names, then the first."""
    ranked = sorted(enumerate(links), key=lambda item: (item[1].role != "id", -item[1].words, item[0]))
    chosen = sorted(ranked[:want], key=lambda item: item[0])
    return [link for _, link in chosen]
