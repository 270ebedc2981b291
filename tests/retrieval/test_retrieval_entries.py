"""Knowledge as entries with typed sections: whole-sentence chunks, the new ATT&CK entry kinds, names,
aliases and relations, section-filtered reads."""

from __future__ import annotations

import re

import pytest

from core.retrieval.chunking import TAIL_WORDS, chunk_sections, split_sentences
from core.retrieval.indexer import Indexer
from core.retrieval.loaders import Section
from core.retrieval.packs import PACK_NAMES, PackEntry, PackUnavailableError, open_pack, source_label
from storage.knowledge import ENTRY_KINDS, SECTIONS, KnowledgeRepository

ENTRY_SLICE = {
    "attack": (
        "T1558",
        "T1558.003",
        "T1003.001",
        "G0016",
        "G0102",
        "S0002",
        "C0024",
        "M1041",
        "M1027",
        "DS0026:Active Directory Credential Request",
    ),
    "cwe": ("CWE-89", "CWE-352", "CWE-943", "CWE-79"),
}
SENTENCE_END = re.compile(r"[.!?][\"'”’)\]`]*$")


@pytest.fixture(scope="module")
def entry_slice(pack_entries: dict[str, list[PackEntry]]) -> dict[str, list[PackEntry]]:
    return {
        name: [e for e in entries if e.ref in ENTRY_SLICE[name]] for name, entries in pack_entries.items()
    }


@pytest.fixture
async def sliced(repo: KnowledgeRepository, entry_slice: dict[str, list[PackEntry]]) -> KnowledgeRepository:
    indexer = Indexer(repo)  # no encoder: the rows are what is tested here
    for name, entries in entry_slice.items():
        version = "v15" if name == "attack" else "4.14"
        await indexer.index_entries(name, entries, version=version)
    return repo


def test_sentences_and_chunks_end_where_sentences_end() -> None:
    text = "Use e.g. prepared statements. T1558.003 is Kerberoasting. See U.S. law! Then stop."
    assert split_sentences(text) == [
        "Use e.g. prepared statements.",
        "T1558.003 is Kerberoasting.",
        "See U.S. law!",
        "Then stop.",
    ]
    long = " ".join(f"Sentence {i} has exactly seven words here." for i in range(100))
    chunks = chunk_sections([Section("H", long, "mitigation")], size=64, overlap=0)
    assert len(chunks) > 5 and all(c.kind == "mitigation" for c in chunks)
    sentences = set(split_sentences(long))
    for chunk in chunks:
        assert all(s in sentences for s in split_sentences(chunk.text))  # whole sentences only
        assert len(chunk.text.split()) <= 64 + TAIL_WORDS  # a short last chunk is folded in
    listed = chunk_sections([Section("L", "Intro:\n- one\n- two", "detection")])
    assert [c.text for c in listed] == ["Intro:\n- one\n- two"]


def test_no_pack_chunk_ends_mid_sentence(pack_entries: dict[str, list[PackEntry]]) -> None:
    """Every chunk of both packs ends at a sentence end, and a section split over several chunks
    restarts at a sentence or list item: the CSRF mitigations no longer begin "exclusively on …"."""
    checked = 0
    for entries in pack_entries.values():
        for entry in entries:
            document = Indexer._pack_document(entry)
            for chunk in document.chunks:
                checked += 1
                assert SENTENCE_END.search(chunk.text.strip()), (chunk.ref, chunk.text[-80:])
                assert chunk.section in SECTIONS and chunk.entry_kind in ENTRY_KINDS
                assert "(Citation:" not in chunk.text and "](http" not in chunk.text
                if chunk.heading:
                    body = chunk.text[len(chunk.heading) + 1 :].lstrip()
                    if body.split()[0] in (entry.title, *entry.aliases):
                        continue  # a name spelled in lower case ("menuPass")
                    assert (
                        body[:1].isupper()
                        or body[:1].isdigit()
                        or body[:2] == "- "
                        or body[:1] in "\"'(`$<[_."
                    ), (
                        chunk.ref,
                        body[:60],
                    )
    assert checked > 10_000
    csrf = next(e for e in pack_entries["cwe"] if e.ref == "CWE-352")
    mitigations = [c for c in Indexer._pack_document(csrf).chunks if c.section == "mitigation"]
    assert mitigations and all(not c.text.split(":", 1)[1].strip()[0].islower() for c in mitigations)


async def test_new_attack_entry_kinds_and_typed_sections(sliced: KnowledgeRepository) -> None:
    counts = await sliced.count_by_kind("attack")
    kinds = {kind for kind, _ in counts}
    assert kinds == {"technique", "group", "software", "campaign", "mitigation", "data_component"}
    assert {section for _, section in counts} >= {"summary", "detection", "mitigation", "procedure"}
    assert {section for _, section in await sliced.count_by_kind("cwe")} >= {
        "summary",
        "description",
        "mitigation",
        "detection",
        "consequence",
        "example",
        "relationship",
    }

    detection = await sliced.entry_chunks(["t1558.003"], ["detection"])
    assert detection and all(c.entry_ref == "T1558.003" and c.section == "detection" for c in detection)
    assert any("4769" in c.text for c in detection)
    assert any("Active Directory Credential Request" in c.text for c in detection)  # `detects` text
    mitigation = await sliced.entry_chunks(["T1558.003"], ["mitigation"])
    items = [item for c in mitigation for item in c.items]
    assert any(item.startswith("M1041 Encrypt Sensitive Information: Enable AES") for item in items)
    procedures = await sliced.entry_chunks(["T1558.003"], ["procedure"])
    assert 0 < sum(len(c.items) for c in procedures) <= 10

    cwe89 = await sliced.entry_chunks(["CWE-89"], ["mitigation"])
    text = " ".join(c.text.lower() for c in cwe89)
    assert "parameterization" in text and "prepared statements" in text
    assert all(c.heading == "Potential mitigations" and c.body for c in cwe89)
    examples = await sliced.entry_chunks(["CWE-89"], ["example"])
    assert any(re.search(r"CVE-\d{4}-\d+", c.text) for c in examples)
    ordered = await sliced.entry_chunks(["CWE-89", "T1558.003"], ["summary", "detection"])
    assert ordered[0].entry_ref == "CWE-89" and ordered[-1].entry_ref == "T1558.003"
    assert [c.ord for c in ordered if c.entry_ref == "CWE-89"] == sorted(
        c.ord for c in ordered if c.entry_ref == "CWE-89"
    )
    assert await sliced.entry_chunks(["T1558.003"], []) == []


@pytest.mark.parametrize(
    ("name", "ref"),
    [
        ("Mimikatz", "S0002"),
        ("APT29", "G0016"),
        ("cozy bear", "G0016"),
        ("Kerberoasting", "T1558.003"),
        ("SQL injection", "CWE-89"),
        ("CSRF", "CWE-352"),
        ("cross-site request forgery", "CWE-352"),
        ("xss", "CWE-79"),
        ("  CWE-89 ", "CWE-89"),
        ("SolarWinds Compromise", "C0024"),
        ("encrypt sensitive information", "M1041"),
        ("Active Directory Credential Request", "DS0026:Active Directory Credential Request"),
    ],
)
async def test_entries_by_ref_name_and_alias(sliced: KnowledgeRepository, name: str, ref: str) -> None:
    found = await sliced.find_entries(name)
    assert found and found[0].ref == ref


async def test_entry_records_and_lists(sliced: KnowledgeRepository) -> None:
    apt29 = await sliced.get_entry("g0016")
    assert apt29 is not None and apt29.kind == "group" and apt29.title == "APT29"
    assert "Cozy Bear" in apt29.aliases and apt29.version == "v15" and apt29.source == "attack"
    assert apt29.url == "https://attack.mitre.org/groups/G0016/"
    alias_hit = (await sliced.find_entries("COZY BEAR"))[0]
    assert alias_hit.matched == "Cozy Bear" and alias_hit.matched_role == "alias"
    assert await sliced.find_entries("Mimikatz", kinds=["group"]) == []
    assert await sliced.find_entries("   ") == [] and await sliced.get_entry("X9999") is None
    assert {e.ref for e in await sliced.list_entries("group")} == {"G0016", "G0102"}
    assert [e.ref for e in await sliced.list_entries("software", source="attack")] == ["S0002"]
    names = await sliced.entry_name_index(kinds=["software"])
    assert ("mimikatz", "S0002", "software", "name") in names


async def test_related_entries(sliced: KnowledgeRepository) -> None:
    mitigated = await sliced.related("T1558.003", ["mitigated_by"])
    assert {r.ref for r in mitigated} == {"M1041", "M1027"}  # the ones in the slice
    m1041 = next(r for r in mitigated if r.ref == "M1041")
    assert m1041.kind == "mitigation" and "rather than RC4" in m1041.description
    used_by = await sliced.related("T1558.003", ["used_by"])
    assert {"G0102", "C0024"} <= {r.ref for r in used_by} and all(r.description for r in used_by)
    assert [r.ref for r in await sliced.related("T1558.003", ["subtechnique_of"])] == ["T1558"]
    assert "T1558.003" in {r.ref for r in await sliced.related("T1558", ["has_subtechnique"])}
    tactics = await sliced.related("T1558.003", ["tactic"])
    assert [(r.ref, r.name) for r in tactics] == [("TA0006", "Credential Access")]
    detected = await sliced.related("T1558.003", ["detected_by"])
    assert [r.kind for r in detected] == ["data_component"] and "4769" in detected[0].description
    uses = await sliced.related("G0016", ["uses"])
    assert len(uses) > 50 and any(r.ref == "S0002" and r.kind == "software" for r in uses)
    assert [r.ref for r in await sliced.related("C0024", ["attributed_to"])] == ["G0016"]
    persistence = await sliced.related("G0016", ["uses"], tactic="persistence")
    assert persistence == []  # no persistence technique of APT29 is in the slice
    credential = await sliced.related("C0024", ["uses"], tactic="credential-access")
    assert [r.ref for r in credential] == ["T1558.003"]  # the only one in the slice
    assert await sliced.related("C0024", ["uses"], tactic="TA0006") == credential
    assert {r.relation for r in await sliced.related("T1558.003")} >= {"mitigated_by", "used_by", "tactic"}
    assert [r.ref for r in await sliced.related("CWE-89", ["child_of"])] == ["CWE-943"]


async def test_bm25_can_be_limited_to_sections(sliced: KnowledgeRepository) -> None:
    everything = await sliced.fts_search_meta("kerberos service ticket")
    assert len({m.section for m in everything}) > 1
    only = await sliced.fts_search_meta("kerberos service ticket", sections=["detection"])
    assert only and all(m.section == "detection" for m in only)
    assert [cid for cid, _ in await sliced.fts_search("kerberos", sections=["detection"])] == [
        m.id for m in await sliced.fts_search_meta("kerberos", sections=["detection"])
    ]


def test_pack_registry_and_attribution() -> None:
    assert PACK_NAMES == ("cwe", "attack")
    with pytest.raises(PackUnavailableError):
        open_pack("nope")
    assert source_label("attack", "v15") == "MITRE ATT&CK v15"
    assert source_label("cwe", "4.14") == "MITRE CWE v4.14"
