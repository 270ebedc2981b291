import re

from core.generators.base import GenerationParams, PromptSpec, finish_of
from core.generators.extractive import INTRO, NO_PASSAGES_REPLY, ExtractiveGenerator, query_terms
from core.types import Source

XSS = Source(
    index=1,
    ref="CWE-79",
    source="cwe",
    title="Cross-site Scripting",
    text="The product does not neutralize user input. It is then placed in a web page. "
    "Cross-site scripting lets attackers run script in the victim's browser. Output encoding helps.",
)
SQLI = Source(
    index=2,
    ref="CWE-89",
    source="cwe",
    title="SQL Injection",
    text="SQL injection modifies a database query. Use parameterized queries.",
)
PS = Source(
    index=3,
    ref="T1059.001",
    source="attack",
    title="PowerShell",
    text="Adversaries may abuse PowerShell commands and scripts for execution.",
)


def answer(question: str, passages, **kw) -> str:
    gen = ExtractiveGenerator(**kw)
    spec = PromptSpec(system="sys", passages=tuple(passages), history=(), question=question)
    return "".join(gen.stream(spec, GenerationParams(), lambda: False))


def test_quotes_most_relevant_sentences_with_citations():
    text = answer("How does cross-site scripting work in a browser?", [XSS, SQLI, PS])
    assert text.startswith(INTRO + "\n\n> ")
    first = text.split("\n\n")[1]
    assert "Cross-site scripting lets attackers run script in the victim's browser." in first
    assert first.endswith("[1]")
    assert "[2]" not in text  # no overlap with the SQL passage → not quoted
    assert "Use parameterized" not in text


def test_several_passages_keep_their_numbers():
    text = answer("SQL injection and PowerShell scripts", [XSS, SQLI, PS])
    blocks = text.split("\n\n")[1:]
    assert [re.search(r"\[(\d)\]$", b).group(1) for b in blocks] == ["2", "3"]
    assert blocks[0] == "> SQL injection modifies a database query. [2]"  # the 2nd sentence has no query term
    assert all(b.startswith("> ") for b in blocks)


def test_top_passage_is_quoted_even_without_word_overlap():
    text = answer("zzz qqq", [PS, SQLI])
    assert text == INTRO + "\n\n> Adversaries may abuse PowerShell commands and scripts for execution. [1]"


def test_no_passages_reply():
    assert answer("What is XSS?", []) == NO_PASSAGES_REPLY
    assert "ghostbot index" in NO_PASSAGES_REPLY


def test_should_stop_and_counts():
    gen = ExtractiveGenerator()
    spec = PromptSpec(system="", passages=(SQLI, PS), history=(), question="SQL PowerShell")
    assert finish_of(gen.stream(spec, GenerationParams(), lambda: True)) == ([INTRO], "cancelled")
    assert gen.count_tokens("parameterized queries.") == 4 + 2 + 1  # ceil(13/4) + ceil(7/4) + "."
    assert gen.prompt_tokens(spec) > gen.count_tokens("SQL PowerShell")
    assert gen.context_length == 4096


def test_identifier_terms_match():
    assert {"cwe-79"} == query_terms("Tell me about CWE-79")


def test_id_question_quotes_the_definition_and_not_unrelated_entries():
    cwe79 = Source(
        1,
        "CWE-79",
        "cwe",
        "Cross-site Scripting",
        None,
        "CWE-79: Improper Neutralization of Input During Web Page Generation. The product does not "
        "neutralize user-controllable input before it is placed in output served to other users. "
        "Abstraction: Base.",
    )
    cwe185 = Source(
        2,
        "CWE-185",
        "cwe",
        "Incorrect Regular Expression",
        None,
        "CWE-185: Incorrect Regular Expression. The product specifies a regular expression badly.",
    )
    text = answer("What is CWE-79?", [cwe79, cwe185])
    assert "does not neutralize user-controllable input" in text  # the definition, not just the title
    assert "[1]" in text and "[2]" not in text


def test_ids_match_whole_ids_only_and_heading_marks_are_dropped():
    assert "79" not in query_terms("What is CWE-79?") and "cwe-79" in query_terms("What is CWE-79?")
    assert {"t1059.001", "t1059"} <= query_terms("explain T1059.001")
    cwe79 = Source(
        1, "CWE-79", "cwe", "XSS", None, "CWE-79: Cross-site scripting. ### Details Output is not encoded."
    )
    capec = Source(
        2, "CWE-73", "cwe", "Path", None, "CWE-73: Path control. Related attack patterns: CAPEC-79."
    )
    text = answer("What is CWE-79?", [cwe79, capec])
    assert "[2]" not in text and "###" not in text


def test_lead_skips_catalogue_metadata_for_the_definition():
    t1059 = Source(
        1,
        "T1059",
        "attack",
        "Command and Scripting Interpreter",
        None,
        "T1059: Command and Scripting Interpreter. Tactics: Execution. Platforms: Linux, Windows. "
        "Adversaries may abuse command and script interpreters to execute commands. "
        "These interfaces are common across platforms.",
    )
    text = answer("Explain MITRE ATT&CK technique T1059", [t1059])
    assert "Adversaries may abuse command and script interpreters" in text
    assert "Tactics:" not in text and "Platforms:" not in text
