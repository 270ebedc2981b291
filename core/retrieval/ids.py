"""Exact identifiers in free text: CVE, CWE, CAPEC and ATT&CK technique ids."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Separators users type between prefix and number: "CWE-79", "cwe 79", "CWE_79", "cwe79".
# The boundaries are ASCII on purpose: an id stays an id when a letter of another script is glued to it,
# as Korean and Japanese write particles ("CWE-79가", "T1059は"), while "cwe-79x" or "xt1059" are not ids.
_B = r"(?<![A-Za-z0-9_-])"
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("CVE", re.compile(_B + r"cve[-_ ]?(\d{4})[-_ ](\d{4,7})(?![A-Za-z0-9_])", re.IGNORECASE)),
    ("CWE", re.compile(_B + r"cwe[-_ ]?(\d{1,5})(?![A-Za-z0-9_-])", re.IGNORECASE)),
    ("CAPEC", re.compile(_B + r"capec[-_ ]?(\d{1,5})(?![A-Za-z0-9_-])", re.IGNORECASE)),
    ("T", re.compile(_B + r"t(\d{4})(?:[./](\d{3}))?(?![A-Za-z0-9_])", re.IGNORECASE)),
    # ATT&CK groups, software, campaigns, mitigations and data sources: upper case only ("g0016" is rare,
    # "s1234" in prose is more likely something else).
    ("ATTACK", re.compile(_B + r"((?:G|S|C|M|DS)\d{4})(?![A-Za-z0-9_])")),
)


@dataclass(frozen=True)
class ExactId:
    kind: str  # "CVE" | "CWE" | "CAPEC" | "T" | "ATTACK" (G/S/C/M/DS ids)
    ref: str  # canonical form: CVE-2021-44228, CWE-79, CAPEC-66, T1059.001

    @property
    def has_own_entry(self) -> bool:
        """CWE and ATT&CK ids are documents of their own; CVE and CAPEC ids are only mentioned in them."""
        return self.kind in ("CWE", "T", "ATTACK")


def find_ids(text: str) -> list[ExactId]:
    """Every id in `text`, canonicalised, in order of appearance, without duplicates."""
    hits: list[tuple[int, ExactId]] = []
    for kind, pattern in _PATTERNS:
        for match in pattern.finditer(text):
            if kind == "CVE":
                ref = f"CVE-{match.group(1)}-{match.group(2)}"
            elif kind == "ATTACK":
                ref = match.group(1)
            elif kind == "T":
                ref = f"T{match.group(1)}" + (f".{match.group(2)}" if match.group(2) else "")
            else:
                ref = f"{kind}-{int(match.group(1))}"
            hits.append((match.start(), ExactId(kind, ref)))
    seen: set[str] = set()
    result: list[ExactId] = []
    for _, exact in sorted(hits, key=lambda item: item[0]):
        if exact.ref not in seen:
            seen.add(exact.ref)
            result.append(exact)
    return result
