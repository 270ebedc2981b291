from __future__ import annotations

from pathlib import Path

import pytest

from core.retrieval.chunking import chunk_sections
from core.retrieval.ids import find_ids
from core.retrieval.loaders import Section, UnsupportedFileError, load_file
from tests.retrieval.conftest import minimal_pdf


@pytest.mark.parametrize(
    ("text", "refs"),
    [
        ("what is cwe 79?", ["CWE-79"]),
        ("CWE-079 vs cwe_89", ["CWE-79", "CWE-89"]),
        ("explain t1059.001 and T1003", ["T1059.001", "T1003"]),
        ("is cve-2021-44228 related to CAPEC 66?", ["CVE-2021-44228", "CAPEC-66"]),
        ("T1059/001", ["T1059.001"]),
        ("nothing here: CWE, T10, ACWE-79, cwe-79x", []),
    ],
)
def test_find_ids_canonicalises(text: str, refs: list[str]) -> None:
    assert [i.ref for i in find_ids(text)] == refs


def test_markdown_sections_keep_headings_and_ignore_fenced_hashes(tmp_path: Path) -> None:
    path = tmp_path / "notes.md"
    path.write_text("# XSS notes\nintro text\n## Reflected\nreflected body\n```\n# not a heading\n```\n")
    doc = load_file(path)
    assert doc.title == "XSS notes"
    assert [s.heading for s in doc.sections] == ["XSS notes", "Reflected"]
    assert "# not a heading" in doc.sections[1].text


def test_html_drops_scripts_and_styles(tmp_path: Path) -> None:
    path = tmp_path / "page.html"
    path.write_text(
        "<html><head><title>Hardening guide</title><style>p{color:red}</style></head><body>"
        "<script>alert('x')</script><h2>SSH</h2><p>Disable password login &amp; root.</p></body></html>"
    )
    doc = load_file(path)
    assert doc.title == "Hardening guide"
    assert doc.sections == [Section("SSH", "Disable password login & root.")]


def test_txt_and_pdf(tmp_path: Path) -> None:
    (tmp_path / "plain.txt").write_bytes(b"rotate keys yearly \xff\n")
    txt = load_file(tmp_path / "plain.txt")
    assert txt.title == "plain" and "rotate keys yearly" in txt.sections[0].text
    (tmp_path / "memo.pdf").write_bytes(minimal_pdf(["Incident memo", "Rotate the VPN (ipsec) keys."]))
    pdf = load_file(tmp_path / "memo.pdf")
    assert pdf.title == "memo"
    assert "Rotate the VPN (ipsec) keys." in pdf.sections[0].text


def test_unsupported_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.exe").write_bytes(b"MZ")
    with pytest.raises(UnsupportedFileError):
        load_file(tmp_path / "x.exe")


def test_chunking_windows_overlap_and_cover_everything() -> None:
    words = [f"w{i}" for i in range(600)]
    chunks = chunk_sections([Section("H", " ".join(words))], size=256, overlap=32)
    assert all(c.heading == "H" for c in chunks)
    spans = [c.text.split() for c in chunks]
    assert spans[0][:2] == ["w0", "w1"] and spans[-1][-1] == "w599"
    assert spans[1][:32] == spans[0][-32:]  # the overlap
    assert all(len(s) <= 256 + 32 for s in spans)
    covered = {w for s in spans for w in s}
    assert covered == set(words)


def test_short_sections_are_one_chunk_each() -> None:
    chunks = chunk_sections([Section("A", "one two"), Section("B", ""), Section("C", "three")])
    assert [(c.heading, c.text) for c in chunks] == [("A", "one two"), ("C", "three")]
