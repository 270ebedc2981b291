"""The no-model backend: answers by quoting the most relevant sentences of the retrieved passages.

Used when no model is configured. It never invents text: every sentence it prints is copied from a passage and
cited ``[n]``. Token counts are a word-piece estimate (see :mod:`core.generators.estimate`); nothing is fed to a
model, so the count only has to be consistent for the budget.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from core.generators.base import GenerationParams, PromptSpec, TextStream
from core.generators.estimate import word_piece_estimate
from core.generators.render import render_turns
from core.types import Source

NO_PASSAGES_REPLY = (
    "I don't have that in my knowledge base — it holds the MITRE CWE and ATT&CK catalogues and the "
    "documents indexed here. To answer questions beyond them, index your documents (`ghostbot index DIR`) "
    "or configure a model (`MODEL_PATH` or `OPENAI_BASE_URL`)."
)
INTRO = "Here is what the knowledge base says:"

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_TERM = re.compile(r"[\w][\w.\-]*\w|\w", re.UNICODE)
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "can",
        "do",
        "does",
        "for",
        "from",
        "how",
        "i",
        "in",
        "is",
        "it",
        "its",
        "me",
        "of",
        "on",
        "or",
        "should",
        "that",
        "the",
        "this",
        "to",
        "was",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
        "about",
        "into",
        "my",
        "we",
        "our",
        "they",
        "them",
        "there",
        "their",
        "than",
        "tell",
        "explain",
        "describe",
        "please",
    ]
)


_ID = re.compile(r"(?:cwe|capec|cve)-[\d-]+|t\d{4}(?:\.\d{3})?")


def query_terms(text: str) -> set[str]:
    terms = set()
    for raw in _TERM.findall(text.lower()):
        if _ID.fullmatch(raw):
            # An id matches only itself (and a sub-technique its parent): "CWE-79" must not match "CAPEC-79".
            terms.update({raw, raw.split(".")[0]})
            continue
        for term in {raw, *re.split(r"[.\-]", raw)}:  # "cross-site" matches "cross-site", "cross", "site"
            if term and term not in _STOPWORDS and (len(term) > 1 or term.isdigit()):
                terms.add(term)
    return terms


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


# Catalogue metadata lines: true, but not what "explain X" wants first.
_METADATA = re.compile(
    r"(?:tactics|platforms|abstraction|status|data sources|detection|mitigations?|related [\w ]+|"
    r"permissions required|defense bypassed|version)\s*:|(?:sub-technique|child|parent) of\b",
    re.IGNORECASE,
)
_MARKDOWN_HEADING = re.compile(r"(?:^|\s)#{1,6}\s+")


def _shorten(sentence: str, max_words: int) -> str:
    # Source text may carry markdown heading marks ("### Windows"): inside a quote they are noise.
    words = _MARKDOWN_HEADING.sub(" ", sentence).split()
    return " ".join(words) if len(words) <= max_words else " ".join(words[:max_words]) + " …"


class ExtractiveGenerator:
    """Quotes up to `max_passages` passages, `sentences_per_passage` best sentences each, with citations."""

    name = "extractive"

    def __init__(
        self,
        *,
        context_length: int = 4096,
        max_passages: int = 3,
        sentences_per_passage: int = 2,
        max_sentence_words: int = 60,
        lead_sentences: int = 3,
    ) -> None:
        self.context_length = context_length
        self.lead_sentences = lead_sentences
        self.max_passages = max_passages
        self.sentences_per_passage = sentences_per_passage
        self.max_sentence_words = max_sentence_words

    def load(self) -> None:
        """Nothing to load (same startup hook as the model backends)."""

    def count_tokens(self, text: str) -> int:
        return word_piece_estimate(text)

    def prompt_tokens(self, spec: PromptSpec) -> int:
        # The same rendered prompt as the model backends, so budgets trim the same way; +4 per turn for roles.
        return sum(self.count_tokens(t.content) + 4 for t in render_turns(spec)) + 2

    def _best_sentences(self, text: str, terms: set[str]) -> tuple[int, list[str]]:
        sentences = split_sentences(text)
        scored = [(len(terms & query_terms(s)), i) for i, s in enumerate(sentences)]
        best = sorted((x for x in scored if x[0] > 0), key=lambda x: (-x[0], x[1]))[
            : self.sentences_per_passage
        ]
        chosen = sorted(i for _, i in best)  # keep the passage's own order so the quote reads naturally
        return sum(score for score, _ in best), [sentences[i] for i in chosen]

    def _lead(self, text: str, terms: set[str]) -> list[str]:
        """The top passage opens with its definition: quote its title sentence and the first sentences
        that are prose rather than metadata ("Tactics: …", "Platforms: …"), plus its best-matching ones."""
        sentences = split_sentences(text)
        prose = [i for i, sentence in enumerate(sentences) if i == 0 or not _METADATA.match(sentence)]
        lead = set(prose[: self.lead_sentences])
        _, best = self._best_sentences(text, terms)
        chosen = sorted(lead | {sentences.index(s) for s in best})[: self.lead_sentences + 1]
        return [sentences[i] for i in chosen]

    def answer_blocks(self, spec: PromptSpec, max_tokens: int) -> list[str]:
        """The quote blocks (without the intro) for `spec`, within roughly `max_tokens` tokens.

        Passage 1 is retrieval's best match and is always quoted from its lead. Later passages are quoted
        only when they share an informative term with the question — one that not every passage contains
        (so "CWE" in "What is CWE-79?" does not pull in every other CWE).
        """
        if not spec.passages:
            return []
        all_terms = query_terms(spec.question)
        terms = all_terms
        if len(spec.passages) > 1:
            per_passage = [query_terms(p.text) for p in spec.passages]
            terms = {t for t in all_terms if not all(t in seen for seen in per_passage)}
        # Quote passage 1 when it matches at all, or when nothing does (e.g. a purely dense match).
        lead_first = self._best_sentences(spec.passages[0].text, all_terms)[0] > 0 or not any(
            self._best_sentences(p.text, terms)[0] for p in spec.passages[1:]
        )
        blocks: list[str] = []
        used = self.count_tokens(INTRO)
        for number, passage in enumerate(spec.passages, 1):
            if len(blocks) >= self.max_passages:
                break
            if number == 1 and lead_first:
                sentences = self._lead(passage.text, all_terms)
            else:
                score, sentences = self._best_sentences(passage.text, terms)
                if score == 0:
                    continue
            if not sentences:
                continue
            quote = " ".join(_shorten(s, self.max_sentence_words) for s in sentences)
            block = f"> {quote} [{number}]"
            cost = self.count_tokens(block)
            if blocks and used + cost > max_tokens:
                break
            blocks.append(block)
            used += cost
        return blocks

    def stream(
        self, spec: PromptSpec, params: GenerationParams, should_stop: Callable[[], bool]
    ) -> TextStream:
        """The composed answer in pieces; returns "stop", or "cancelled" when `should_stop` said so."""
        if spec.intent and spec.passages:
            for i, part in enumerate(compose(spec, params.max_new_tokens, self.count_tokens)):
                if should_stop():
                    return "cancelled"
                yield part if i == 0 else "\n" + part
            return "stop"
        blocks = self.answer_blocks(spec, params.max_new_tokens)
        if not blocks:
            yield NO_PASSAGES_REPLY
            return "stop"
        yield INTRO
        for block in blocks:
            if should_stop():
                return "cancelled"
            yield "\n\n" + block
        return "stop"

    def close(self) -> None:
        return None


# --- the composed answer (an intent is known) --------------------------------------------------------------
# Whole sentences only: a sentence ends at . ! or ? followed by a space and a capital, digit, quote or
# bracket (so "e.g. the" and "v1.2" do not end one), or at the end of a line.
_SENTENCE = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[A-Z0-9\"'(\[])")
_META_SENTENCE = re.compile(r"^(?:Phase|Strategy|Effectiveness|Scope|Impact|Abstraction|Status)\s*:", re.I)
_STRATEGY = re.compile(r"Strategy:\s*([^.]+)\.")
_ITEM = re.compile(r"(?:^|\n)-\s+")
_CUT = (" …", "…")
MAX_BULLETS = 6
MAX_ITEM_WORDS = 30
MAX_SPECIFIC_WORDS = 48
_HEADS = {
    "prevent": "How to prevent or mitigate",
    "detect": "How to detect",
    "example": "Examples of",
}
_RELATIONS = {
    "used_by": "Used by",
    "uses": "Uses",
    "mitigated_by": "Mitigations",
    "detected_by": "Detected through",
    "subtechnique_of": "Sub-technique of",
    "has_subtechnique": "Sub-techniques",
    "child_of": "Child of",
    "parent_of": "Parent of",
    "tactic": "Tactic",
    "related_attack_pattern": "Related attack pattern",
    "attributed_to": "Attributed to",
    "attributed": "Attributed",
}


def sentences_of(text: str) -> list[str]:
    """Whole sentences of `text`; a trailing piece a budget cut short ("… ") is dropped."""
    out: list[str] = []
    for line in text.splitlines():
        out.extend(s.strip() for s in _SENTENCE.split(line.strip()) if s.strip())
    if out and out[-1].endswith(_CUT):
        out.pop()
    return out


def body_of(source: Source) -> str:
    """The passage text without its "Heading:" prefix."""
    text = source.text.strip()
    for prefix in (f"{source.heading}:", f"{source.heading.capitalize()}:"):
        if source.heading and text.startswith(prefix):
            return text[len(prefix) :].strip()
    return text


def items_of(source: Source) -> list[str]:
    """The list items of a passage ("- Phase: … Use prepared statements."), or its text as one item."""
    parts = [p.strip() for p in _ITEM.split(body_of(source)) if p.strip()]
    return parts or [body_of(source)]


def short_name(title: str) -> str:
    """ "Steal or Forge Kerberos Tickets: Kerberoasting" → "Kerberoasting"; "… ('Cross-site Scripting')" →
    "Cross-site Scripting"; otherwise the title."""
    match = re.search(r"\(\s*'?([^()']+?)'?\s*\)\s*$", title)
    if match:
        return match.group(1)
    return title.rsplit(": ", 1)[-1] if ": " in title else title


def _label(ref: str, title: str) -> str:
    title = title.strip()
    if not title or title == ref:
        return f"**{ref}**"
    return f"**{ref} {title}**" if not title.startswith(ref) else f"**{title}**"


def _definition(source: Source, max_sentences: int) -> list[str]:
    """The defining sentences of a summary passage, without the "REF: Title." line and catalogue metadata."""
    sentences = [s for s in sentences_of(body_of(source)) if not _META_SENTENCE.match(s)]
    title = source.title.strip()
    kept = [
        s
        for s in sentences
        if not s.startswith(f"{source.ref}:")
        and not (title and s.rstrip(".") == title)
        and not s.startswith(("Tactics:", "Platforms:", "Also known as", "Sub-technique of", "Aliases:"))
        and len(s.split()) >= 5
        and not s.endswith(":")
    ]
    return (kept or sentences)[:max_sentences]


# CWE's boilerplate advice, the same words in hundreds of entries: it answers nothing specific.
_BOILERPLATE = re.compile(
    r"does not allow this weakness to occur|easier to avoid|^Assume all input is malicious", re.I
)


def _prose(sentence: str) -> bool:
    """A sentence worth quoting on its own: not a fragment that introduces a list, not metadata."""
    return (
        len(sentence.split()) >= 5
        and not sentence.rstrip().endswith((":", "when.", "if."))
        and not _META_SENTENCE.match(sentence)
        and not _BOILERPLATE.search(sentence)
    )


def _item_text(item: str, terms: set[str]) -> str:
    """One bullet from a list item: its strategy as a label, then its first whole sentences."""
    strategy = _STRATEGY.search(item)
    sentences = [s for s in sentences_of(item) if _prose(s)]
    if not sentences:
        return ""
    # The first sentence, then later ones while short, or (up to a longer cap) when they carry specifics:
    # numbers such as event ids, or the question's own words.
    chosen: list[str] = []
    words = 0
    for sentence in sentences:
        n = len(sentence.split())
        specific = bool(re.search(r"\d", sentence)) or bool(terms & query_terms(sentence))
        if chosen and words + n > (MAX_SPECIFIC_WORDS if specific else MAX_ITEM_WORDS):
            continue
        chosen.append(sentence)
        words += n
    text = " ".join(chosen)
    return f"**{strategy.group(1).strip()}**: {text}" if strategy else text


def _bullets(passages: Sequence[tuple[int, Source]], terms: set[str], limit: int) -> list[str]:
    """Bullets from the passages' items, each ending with its [n]; items sharing the question's words first,
    then in passage order."""
    candidates: list[tuple[int, int, int, str]] = []
    strategies: set[str] = set()
    for order, (number, source) in enumerate(passages):
        for j, item in enumerate(items_of(source)):
            text = _item_text(item, terms)
            # One bullet per mitigation strategy first: CWE repeats "Input Validation" advice many times.
            strategy = _STRATEGY.search(item)
            label = strategy.group(1).strip().lower() if strategy else ""
            repeated = int(bool(label) and label in strategies)
            strategies.add(label)
            related = source.section == "relationship" and source.heading in _RELATIONS
            if not text and not related:
                continue
            if related and not text:
                text = source.title
            if related:
                text = (
                    f"{_label(source.ref, source.title)}: {text}"
                    if text != source.title
                    else _label(source.ref, source.title)
                )
            score = len(terms & query_terms(text))
            candidates.append((repeated, -min(score, 2), order * 100 + j, f"- {text} [{number}]"))
    best = sorted(candidates)[:limit]
    return [text for _, _, _, text in sorted(best, key=lambda c: c[2])]


def compose(spec: PromptSpec, max_tokens: int, count: Callable[[str], int]) -> list[str]:
    """The answer for `spec.intent`, as lines: a direct first line naming the entry (id and name), then what
    answers the intent. Every sentence is copied whole from a passage and cited [n]."""
    numbered = list(enumerate(spec.passages, start=1))
    terms = query_terms(spec.question)
    intent = spec.intent
    first_number, first = numbered[0]
    lines: list[str] = []
    if intent in ("identify", "list"):
        lines.append("The closest matches in the knowledge base:")
        for rank, (number, source) in enumerate(numbered[:MAX_BULLETS], start=1):
            definition = _definition(source, 1)
            tail = f" — {definition[0]}" if definition else ""
            lines.append(f"{rank}. {_label(source.ref, source.title)}{tail} [{number}]")
        return _within(lines, max_tokens, count)
    if intent == "compare":
        refs = list(dict.fromkeys(s.ref for _, s in numbered))[:2]
        if len(refs) == 2:
            by_ref = {ref: [(n, s) for n, s in numbered if s.ref == ref] for ref in refs}
            heads = [by_ref[ref][0][1] for ref in refs]
            lines.append(
                f"**{heads[0].ref}** ({short_name(heads[0].title)}) compared with "
                f"**{heads[1].ref}** ({short_name(heads[1].title)}):"
            )
            for ref in refs:
                number, source = by_ref[ref][0]
                sentences = _definition(source, 1)
                lines.append("")
                lines.append(
                    f"**{source.ref} {short_name(source.title)}**: " + " ".join(sentences) + f" [{number}]"
                )
            return _within(lines, max_tokens, count)
    # The entry the question is about, named first with its definition.
    head = first
    rest = numbered[1:]
    definition = _definition(head, 1 if intent not in ("define",) else 3)
    if intent == "define":
        lines.append(f"{_label(head.ref, head.title)}: " + " ".join(definition) + f" [{first_number}]")
        described = [(n, s) for n, s in rest if s.ref == head.ref and s.section in ("description", "summary")]
        if described:
            more = [m for m in sentences_of(body_of(described[0][1])) if _prose(m)][:2]
            if more:
                lines.append("")
                lines.append(" ".join(more) + f" [{described[0][0]}]")
        elif rest and rest[0][1].ref != head.ref:
            lines.append("")
            lines.append("Related: " + ", ".join(f"{_label(s.ref, s.title)} [{n}]" for n, s in rest[:3]))
        return _within(lines, max_tokens, count)
    if intent == "relationship":
        related = [(n, s) for n, s in numbered if s.section == "relationship" and s.heading in _RELATIONS]
        heading = _RELATIONS.get(related[0][1].heading, "Related") if related else "Related"
        lines.append(
            f"{_label(head.ref, head.title)}" + (f" — {definition[0]} [{first_number}]" if definition else "")
        )
        lines.append("")
        if related:
            lines.append(f"{heading}:")
            lines.extend(_bullets(related, terms, MAX_BULLETS + 3))
        else:
            lines.extend(_bullets(rest or numbered, terms, MAX_BULLETS))
        return _within(lines, max_tokens, count)
    wanted = {"prevent": ("mitigation",), "detect": ("detection",), "example": ("example", "procedure")}.get(
        intent, ()
    )
    answering = [(n, s) for n, s in numbered if s.section in wanted and s.ref == head.ref]
    if not answering:
        answering = [(n, s) for n, s in numbered if s.section in wanted] or [
            (n, s) for n, s in rest if s.ref != head.ref or s.section != "summary"
        ]
    lead = _HEADS.get(intent, "About")
    bullets = _bullets(answering, terms, MAX_BULLETS) if head.kind not in _FILE_KINDS else []
    if bullets:
        lines.append(f"{lead} **{head.ref} {short_name(head.title)}** [{first_number}]:")
        lines.extend(bullets)
    else:
        # No typed section answers it (a user's document, an entry without one): the sentences of the
        # passages that share the question's words, each cited.
        lines.append(f"From **{head.title or head.ref}** [{first_number}]:")
        lines.extend(_relevant_sentences(numbered, terms))
    return _within(lines, max_tokens, count)


_FILE_KINDS = ("", "document")


def _relevant_sentences(passages: Sequence[tuple[int, Source]], terms: set[str]) -> list[str]:
    """Up to MAX_BULLETS whole sentences of the best passage and of others sharing the question's words,
    in passage order, as cited bullets."""
    scored: list[tuple[int, int, str]] = []
    for order, (number, source) in enumerate(passages):
        for j, sentence in enumerate(sentences_of(_MARKDOWN_HEADING.sub(" ", body_of(source)))):
            overlap = len(terms & query_terms(sentence))
            if order == 0:  # the best match: its own sentences answer, even in other words
                overlap = max(overlap, 1)
            if overlap and len(sentence.split()) >= 4:
                scored.append((-overlap, order * 1000 + j, f"- {sentence} [{number}]"))
    best = sorted(scored)[:MAX_BULLETS]
    return [text for _, _, text in sorted(best, key=lambda x: x[1])]


def _within(lines: list[str], max_tokens: int, count: Callable[[str], int]) -> list[str]:
    """Whole lines, until the token budget is spent (the first line always)."""
    out: list[str] = []
    used = 0
    for line in lines:
        cost = count(line) + 1
        if out and used + cost > max_tokens:
            break
        out.append(line)
        used += cost
    while out and not out[-1].strip():
        out.pop()
    return out
