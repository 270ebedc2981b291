"""The one editable rubric file (``rubrics.toml``): criteria, their 1–5 rubrics and the judge prompts."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

DEFAULT_CRITERIA: tuple[str, ...] = (
    "accuracy",
    "relevance",
    "safety",
    "fluency",
    "hallucination",
    "alignment",
)

_SINGLE_FIELDS = dict(title="t", rubric="r", question="q", answer="a", reference="ref", passages="p")
_PAIR_FIELDS = dict(title="t", rubric="r", question="q", reference="ref", answer_a="a", answer_b="b")
_MCQ_FIELDS = dict(question="q", options="o", letters="l")


class RubricError(ValueError):
    """The rubric file is missing, unreadable or incomplete; the message names the file and the key."""


@dataclass(frozen=True)
class Criterion:
    name: str
    title: str
    rubric: str


@dataclass(frozen=True)
class Rubrics:
    criteria: dict[str, Criterion]  # in file order
    system: str
    single: str
    pairwise: str
    mcq: str
    path: str

    def select(self, names: list[str] | None) -> list[Criterion]:
        """The criteria to judge, in the order asked; unknown names raise RubricError listing the known ones."""
        if not names:
            return list(self.criteria.values())
        unknown = [n for n in names if n not in self.criteria]
        if unknown:
            raise RubricError(
                f"unknown criteria {', '.join(unknown)}; {self.path} defines {', '.join(self.criteria)}"
            )
        return [self.criteria[n] for n in dict.fromkeys(names)]


def default_rubrics_path() -> Path:
    return Path(str(resources.files("evaluation").joinpath("rubrics.toml")))


def _text(table: dict, key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value.strip():
        raise RubricError(f"{where}: '{key}' must be a non-empty string")
    return value.strip()


def _check_template(template: str, fields: dict[str, str], where: str) -> None:
    try:
        template.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise RubricError(
            f"{where}: bad template ({e!r}); allowed placeholders are "
            f"{', '.join('{' + f + '}' for f in fields)} and literal braces must be doubled"
        ) from None


def load_rubrics(path: str | Path | None = None) -> Rubrics:
    """Load and validate the rubric file (the packaged default when ``path`` is None)."""
    p = Path(path) if path is not None else default_rubrics_path()
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RubricError(f"{p}: rubric file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RubricError(f"{p}: cannot read rubric file: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise RubricError(f"{p}: not valid TOML: {e}") from None

    table = data.get("criteria")
    if not isinstance(table, dict) or not table:
        raise RubricError(f"{p}: needs at least one [criteria.NAME] table")
    criteria: dict[str, Criterion] = {}
    for name, body in table.items():
        where = f"{p} [criteria.{name}]"
        if not isinstance(body, dict):
            raise RubricError(f"{where}: must be a table with 'title' and 'rubric'")
        criteria[name] = Criterion(name, _text(body, "title", where), _text(body, "rubric", where))

    prompts = data.get("prompts")
    if not isinstance(prompts, dict):
        raise RubricError(f"{p}: needs a [prompts] table with system, single, pairwise and mcq")
    where = f"{p} [prompts]"
    single, pairwise, mcq = (_text(prompts, k, where) for k in ("single", "pairwise", "mcq"))
    _check_template(single, _SINGLE_FIELDS, f"{where} single")
    _check_template(pairwise, _PAIR_FIELDS, f"{where} pairwise")
    _check_template(mcq, _MCQ_FIELDS, f"{where} mcq")
    return Rubrics(criteria, _text(prompts, "system", where), single, pairwise, mcq, str(p))
