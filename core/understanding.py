"""Question understanding: what the user asks for (the intent) and which entries they name (exact ids).

Rules, in priority order, over the lower-cased question; measured on a labelled set of practitioner questions
(tests/core/test_understanding.py, benchmarks/answer_questions.jsonl). Names and aliases ("Kerberoasting",
"Mimikatz", "APT29") are linked against the knowledge base by the retriever, which holds the names.

Intents:
- ``define``: what is X / explain X (the default)
- ``prevent``: how to prevent, mitigate, fix, harden, store safely
- ``detect``: how to detect, monitor, hunt, which logs or events
- ``example``: real-world examples, CVEs, procedure examples
- ``compare``: the difference between X and Y
- ``identify``: which technique / weakness is this behaviour ("what is it called when …")
- ``relationship``: which groups or software use X, the parent of X, the tactic of X, what X does for a tactic
- ``list``: list / enumerate the kinds of something
- ``smalltalk``: greetings, thanks, questions about the bot itself, "help" — answered by a built-in reply
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from core.retrieval.ids import ExactId, find_ids

Intent = Literal[
    "define", "prevent", "detect", "example", "compare", "identify", "relationship", "list", "smalltalk"
]
INTENTS: tuple[Intent, ...] = (
    "define",
    "prevent",
    "detect",
    "example",
    "compare",
    "identify",
    "relationship",
    "list",
    "smalltalk",
)

# What the user asked for, in words a model prompt can use ("list the detections").
TASKS: dict[str, str] = {
    "define": "explain what it is",
    "prevent": "list the mitigations (how to prevent it)",
    "detect": "list the detections (how to detect it)",
    "example": "give real-world examples",
    "compare": "compare the entries and state how they differ",
    "identify": "name the matching entries, best first, with their ids",
    "relationship": "name the related entries",
    "list": "list the matching entries with their ids",
}

# Which typed sections answer an intent, best first (section names of the knowledge packs).
SECTIONS: dict[str, tuple[str, ...]] = {
    "define": ("summary", "description"),
    "prevent": ("mitigation",),
    "detect": ("detection",),
    "example": ("example", "procedure"),
    "compare": ("summary",),
    "identify": ("summary",),
    "relationship": ("relationship", "procedure", "summary"),
    "list": ("summary",),
}


def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


_SMALLTALK = _rx(
    r"^\W*(?:hi+|hello+|hey+|yo|hiya|howdy|greetings|good (?:morning|afternoon|evening|night)|"
    r"thanks?|thank you(?: so much| very much)?|thx|ty|cheers|ok(?:ay)?|cool|great|nice|bye|goodbye|"
    r"see you|help|start|menu|who are you|what are you|what(?:'s| is) your name|"
    r"what can you do|what do you do|how do you work|are you (?:a bot|human|an ai|real)|"
    r"how are you(?: doing)?|what can i ask(?: you)?|how can you help(?: me)?|"
    r"what (?:are|is) you(?:r)? (?:for|purpose))"
    r"(?:\s+(?:there|bot|ghostbot|friend|again|a lot|so much|very much|man|mate|buddy|today))*\W*$"
)
_ABOUT_BOT = _rx(
    r"\b(?:who (?:made|built|created) you|are you (?:a bot|an ai|human)|what can you (?:do|help)|"
    r"what do you know|what kind of questions|how do i use you|what is this bot)\b"
)
_COMPARE = _rx(
    r"\b(?:differences?|differ|different from|vs\.?|versus|compare|compared? (?:to|with)|comparison|"
    r"distinguish|same as)\b"
)
_RELATION = _rx(
    r"\b(?:which|what) (?:apt |threat )?(?:groups?|actors?|threat actors?|adversar(?:y|ies)|apts?|malware|"
    r"software|tools?|campaigns?|ransomware)\b.*\b(?:use|uses|used|employ|employs|leverage|leverages|"
    r"known|associated|abuse|abuses|perform)\b"
    r"|\bwho uses\b|\bused by\b|\b(?:parent|child|children)\b|\bsub-?techniques? of\b"
    r"|\b(?:which|what) tactics?\b|\btactics? (?:does|is)\b|\bunder which\b|\bbelongs? to\b"
    r"|\bwhat (?:does|do|did) .{2,40}? (?:do|use)\b(?: for| to|\?|$)|\btechniques? (?:does|do|did) .{2,40}? use\b"
    r"|\b(?:related|associated) (?:weakness|weaknesses|techniques?|cwes?)\b|\bwhat software\b"
)
_IDENTIFY = _rx(
    r"\b(?:what is it called|what(?:'s| is) (?:this|that) called|what do (?:you|we|they) call|"
    r"what(?:'s| is) the (?:name|term|cwe|technique|att&ck id|id) for|"
    r"(?:which|what) (?:att&ck |mitre )?(?:technique|sub-?technique|weakness|cwe|vulnerability|"
    r"weakness class|attack) (?:is|covers|describes|matches|fits|corresponds|would|should|applies|best)|"
    r"which (?:cwe|technique|weakness|sub-?technique)\b|how would you classify|"
    r"what (?:cwe|technique|weakness|sub-?technique) (?:id )?(?:is|covers|describes|matches|fits)|"
    r"map (?:this|it) to|classify)\b"
)
_EXAMPLE = _rx(
    r"\b(?:examples?|instances?|real[- ]world|in the wild|cves?|observed|case studies|"
    r"show me (?:a|some) (?:real|known)|known (?:vulnerabilities|exploits|incidents|cases)|"
    r"has .{1,30} been exploited|procedure examples?)\b"
)
_DETECT = _rx(
    r"\b(?:detect\w*|monitor\w*|hunt\w*|spot|notice|alert\w*|event ids?|telemetry|siem|"
    r"log (?:source|sources|entries|events)|logs? should i|what logs|signs? of|indicators?|iocs?|"
    r"data sources?|find out if|tell if|know if|catch|recogni[sz]e)\b"
)
_PREVENT = _rx(
    r"\b(?:prevent\w*|mitigat\w*|protect\w*|defend\w*|defen[cs]es?|avoid\w*|stop|fix\w*|remediat\w*|"
    r"harden\w*|secure\w*|safely|safe|block\w*|reduce the risk|countermeasures?|best practices?|"
    r"guard against|should i store|how (?:do|should) i store|patch\w*|sanitiz\w*|"
    r"counter|controls?)\b"
)
_LIST = _rx(
    r"^(?:list|enumerate|name (?:some|all|the)|give me (?:a list|all|some)|show me (?:all|the list))\b"
    r"|\b(?:what are (?:the|some) (?:types|kinds|categories|sub-?techniques))\b|\btypes of\b|\bkinds of\b"
)


# Words that put a question in the security domain whatever else it says ("which technique is it when …").
_SECURITY = _rx(
    r"\b(?:techniques?|sub-?techniques?|weakness(?:es)?|cwes?|att&ck|attacks?|attackers?|adversar(?:y|ies)|"
    r"malware|ransomware|vulnerabilit(?:y|ies)|vulnerable|exploits?|exploited|security|secure|hackers?|"
    r"threats?|injections?|credentials?|passwords?|encrypt\w*|crypto\w*|phishing|backdoors?|payloads?|"
    r"overflows?|privileges?|authenticat\w*|authoriz\w*|xss|csrf|ssrf|sqli|cves?|apts?|mitre|kerber\w*|"
    r"tactics?|persistence|exfiltrat\w*|lateral|trojans?|botnets?|c2|beacons?|forensics?|incidents?)\b"
)


def mentions_security(text: str) -> bool:
    """Whether the question uses a word of the security domain (a hint that it is in scope)."""
    return bool(_SECURITY.search(text))


_OPENS_EXAMPLE = _rx(
    r"^(?:(?:give me |show me |show |what are )?(?:some |the )?(?:real[- ]world |real )?examples?)\b"
)
_OPENS_LIST = _rx(r"^(?:list|enumerate|what are the (?:sub-?techniques|types|kinds))\b")


@dataclass(frozen=True)
class Understood:
    """A question, understood: its text, intent and the exact ids it names."""

    text: str
    intent: Intent
    ids: tuple[ExactId, ...] = field(default_factory=tuple)

    @property
    def sections(self) -> tuple[str, ...]:
        return SECTIONS.get(self.intent, ("summary",))

    @property
    def task(self) -> str:
        return TASKS.get(self.intent, "")


def classify(text: str) -> Intent:
    """The intent of `text` (see the module docstring), by rules in priority order."""
    q = " ".join(text.split())
    if not q:
        return "smalltalk"
    if _SMALLTALK.match(q) or (_ABOUT_BOT.search(q) and not find_ids(q)):
        return "smalltalk"
    if _COMPARE.search(q) and (len(find_ids(q)) >= 2 or re.search(r"\b(?:and|vs\.?|versus|or)\b", q, re.I)):
        return "compare"
    # A question that opens by asking for examples or a list is that, whatever relation it mentions.
    if _OPENS_EXAMPLE.match(q):
        return "example"
    if _OPENS_LIST.match(q):
        return "list"
    if _RELATION.search(q):
        return "relationship"
    if _IDENTIFY.search(q):
        return "identify"
    if _EXAMPLE.search(q):
        return "example"
    if _DETECT.search(q):
        return "detect"
    if _PREVENT.search(q):
        return "prevent"
    if _LIST.search(q):
        return "list"
    return "define"


def understand(text: str) -> Understood:
    return Understood(text=text, intent=classify(text), ids=tuple(find_ids(text)))
