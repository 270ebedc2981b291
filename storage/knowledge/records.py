"""Plain values going into and coming out of `KnowledgeRepository` (no ORM objects leave storage)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class ChunkData:
    """A chunk to store. Empty `entry_ref` / `entry_kind` / `section` take the document's entry,
    "document" and "description"."""

    ord: int
    ref: str
    title: str
    text: str
    url: str | None = None
    aliases: str = ""
    entry_ref: str = ""
    entry_kind: str = ""
    section: str = ""
    heading: str = ""


@dataclass(frozen=True)
class RelationData:
    """A link from the document's entry to another entry (or to a tactic): `relation` is one of
    "uses", "mitigates", "detects", "subtechnique_of", "tactic", "attributed_to", "child_of",
    "related_attack_pattern"."""

    relation: str
    target_ref: str
    target_kind: str = ""
    target_name: str = ""
    description: str = ""


@dataclass(frozen=True)
class DocumentData:
    """A document to store with all its chunks, and (for pack entries) its names and relations."""

    locator: str
    title: str
    content_hash: str
    url: str | None = None
    chunks: Sequence[ChunkData] = field(default_factory=tuple)
    prior: float = 0.0
    entry_ref: str = ""  # default: the locator
    entry_kind: str = ""  # default: "document"
    names: Sequence[str] = field(default_factory=tuple)  # the entry's own names, primary first
    aliases: Sequence[str] = field(default_factory=tuple)
    relations: Sequence[RelationData] = field(default_factory=tuple)
    version: str = ""  # the data release it was built from


@dataclass(frozen=True)
class SaveResult:
    locator: str
    document_id: int
    status: str  # "added" | "updated" | "unchanged"


@dataclass(frozen=True)
class ChunkRecord:
    """A stored chunk with its document's source, its entry and its section."""

    id: int
    document_id: int
    source: str
    locator: str
    ord: int
    ref: str
    title: str
    url: str | None
    text: str
    prior: float = 0.0
    entry_ref: str = ""
    entry_kind: str = "document"
    section: str = "description"
    heading: str = ""
    version: str = ""

    @property
    def body(self) -> str:
        """The text without its "Heading:" prefix (pack chunks other than summaries carry one: prose
        as "Detection: text", lists as "Mitigations:\n- item\n- item")."""
        prefix = f"{self.heading}:"
        if self.heading and self.text.startswith(prefix):
            return self.text[len(prefix) :].lstrip()
        return self.text

    @property
    def items(self) -> list[str]:
        """The body's list items without their "- " marker (one mitigation, one detection, one
        example each), or its paragraphs when it is prose."""
        lines = [line.strip() for line in self.body.splitlines() if line.strip()]
        return [line[2:] if line.startswith("- ") else line for line in lines]


@dataclass(frozen=True)
class ChunkMeta:
    """What ranking needs of a chunk (no text: cheap to fetch for many candidates)."""

    id: int
    source: str
    ord: int
    ref: str
    prior: float
    section: str = "description"
    entry_kind: str = "document"


@dataclass(frozen=True)
class EntryRecord:
    """One entry of the knowledge base: `ref` "G0016", `kind` "group", `title` "APT29",
    `aliases` ("Cozy Bear", "NOBELIUM", ...), `matched` the name a lookup matched (and its role:
    "ref", "name" or "alias")."""

    ref: str
    kind: str
    title: str
    url: str | None
    source: str
    prior: float
    version: str
    aliases: tuple[str, ...] = ()
    matched: str = ""
    matched_role: str = ""


@dataclass(frozen=True)
class RelatedEntry:
    """An entry linked to the one asked about. `relation` reads from the asked entry's side:
    T1558.003 → ("mitigated_by", M1041), ("used_by", G0016), ("subtechnique_of", T1558),
    ("tactic", TA0006); G0016 → ("uses", T1558.003). `description` is the link's own text
    (the technique-specific mitigation, the procedure example), cleaned."""

    relation: str
    ref: str
    kind: str
    name: str
    description: str = ""
    prior: float = 0.0


@dataclass(frozen=True)
class OwnedDocument:
    """A private document, as its owner's /docs lists it."""

    id: int
    locator: str
    title: str
    chunks: int
    updated_at: datetime
