"""Fault-injection fixtures: the loopback fakes, and a ledger every fault test reports into.

At the end of the session the ledger's totals (faults injected, survived, lost, duplicated) are printed in the
terminal summary, logged, and written to `faults-summary.json` in pytest's base temp dir.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

# The end-to-end fixtures, re-exported: loopback only, and the Telegram fake.
from tests.e2e.conftest import _loopback_only as _loopback_only
from tests.e2e.conftest import tg_fake as tg_fake

logger = logging.getLogger("faults")


@dataclass
class Outcome:
    """One test's result: every fault that fired, and what became of every accepted question."""

    name: str
    faults: list[str] = field(default_factory=list)  # "kind where", one per injected fault
    questions: int = 0
    answered: int = 0  # a complete answer, stored as the user saw it
    noticed: int = 0  # an explicit notice instead (interrupted by a crash, …)
    lost: int = 0
    duplicated: int = 0
    history_mismatches: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "test": self.name,
            "faults_injected": len(self.faults),
            "survived": len(self.faults)
            if self.lost == self.duplicated == self.history_mismatches == 0
            else 0,
            "questions": self.questions,
            "answered": self.answered,
            "noticed": self.noticed,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "history_mismatches": self.history_mismatches,
            "by_kind": _by_kind(self.faults),
        }


def _by_kind(faults: list[str]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for fault in faults:
        kinds[fault] = kinds.get(fault, 0) + 1
    return dict(sorted(kinds.items()))


class Ledger:
    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    def report(self, outcome: Outcome) -> dict[str, Any]:
        self.outcomes.append(outcome)
        summary = outcome.summary()
        line = json.dumps(summary, sort_keys=True)
        print(line)
        logger.info("fault test summary: %s", line)
        return summary

    def totals(self) -> dict[str, Any]:
        summaries = [o.summary() for o in self.outcomes]
        keys = ("faults_injected", "survived", "questions", "answered", "noticed", "lost", "duplicated")
        total: dict[str, Any] = {key: sum(s[key] for s in summaries) for key in keys}
        total["history_mismatches"] = sum(s["history_mismatches"] for s in summaries)
        total["tests"] = [asdict(o) | {"faults": len(o.faults)} for o in self.outcomes]
        return total


_LEDGER = Ledger()


@pytest.fixture(scope="session")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Ledger:
    _LEDGER.base = tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]  # pytest's private basetemp accessor
    return _LEDGER


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _LEDGER.outcomes:
        return
    totals = _LEDGER.totals()
    line = json.dumps({k: v for k, v in totals.items() if k != "tests"}, sort_keys=True)
    terminalreporter.write_line(f"fault-injection summary: {line}")
    logger.info("fault-injection summary: %s", line)
    base: Path | None = getattr(_LEDGER, "base", None)
    if base is not None:
        (base / "faults-summary.json").write_text(
            json.dumps(totals, indent=2, sort_keys=True), encoding="utf-8"
        )
        terminalreporter.write_line(f"fault-injection summary written to {base / 'faults-summary.json'}")
