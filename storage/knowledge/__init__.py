"""The knowledge base in storage: `schema` (tables and full-text index DDL), `query` (query analysis
and the one MATCH / tsquery builder), `records` (the values in and out) and `repository`
(`KnowledgeRepository`: writing, BM25 search, entries, sections and relations, private documents)."""

from storage.knowledge.query import (
    Stemmer,
    Vocabulary,
    fts_terms,
    postgres_tsquery,
    sqlite_match_expression,
    sqlite_phrase_expression,
)
from storage.knowledge.records import (
    ChunkData,
    ChunkMeta,
    ChunkRecord,
    DocumentData,
    EntryRecord,
    OwnedDocument,
    RelatedEntry,
    RelationData,
    SaveResult,
)
from storage.knowledge.repository import INVERSE_RELATIONS, KnowledgeRepository
from storage.knowledge.schema import (
    ENTRY_KINDS,
    FTS_TABLE,
    SECTIONS,
    Chunk,
    Document,
    EntryName,
    Relation,
    install_search_index,
    name_key,
    visible_to,
)

__all__ = [
    "ENTRY_KINDS",
    "FTS_TABLE",
    "INVERSE_RELATIONS",
    "SECTIONS",
    "Chunk",
    "ChunkData",
    "ChunkMeta",
    "ChunkRecord",
    "Document",
    "DocumentData",
    "EntryName",
    "EntryRecord",
    "KnowledgeRepository",
    "OwnedDocument",
    "RelatedEntry",
    "Relation",
    "RelationData",
    "SaveResult",
    "Stemmer",
    "Vocabulary",
    "fts_terms",
    "install_search_index",
    "name_key",
    "postgres_tsquery",
    "sqlite_match_expression",
    "sqlite_phrase_expression",
    "visible_to",
]
