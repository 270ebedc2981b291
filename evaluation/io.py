"""Reading evaluation inputs (CSV, TSV, JSONL) and writing results row by row, resumably.

Every input error names the file, the row and the column, so a user can fix a 5 000-line file without guessing.
Rows are numbered as a spreadsheet would show them: the header is row 1, the first data row is row 2 (CSV/TSV);
JSONL rows are line numbers.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

# Answers can be long; the csv module's default field limit (128 KiB) is not a limit we want to impose.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


class EvalInputError(ValueError):
    """A malformed input or results file. The message names the file, row and column."""


@dataclass(frozen=True)
class Table:
    path: str
    columns: list[str]
    rows: list[dict[str, str]]
    row_numbers: list[int]  # the file row each entry came from, for error messages

    def where(self, i: int, column: str | None = None) -> str:
        col = f", column '{column}'" if column else ""
        return f"{self.path}: row {self.row_numbers[i]}{col}"


def _decode(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise EvalInputError(f"{path}: file not found") from None
    except OSError as e:
        raise EvalInputError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise EvalInputError(
            f"{path}: row {line}: not valid UTF-8 (byte {e.start}); save the file as UTF-8"
        ) from None


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _read_delimited(path: Path, text: str, delimiter: str) -> Table:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
        if header is None or not any(h.strip() for h in header):
            raise EvalInputError(f"{path}: row 1: empty file or empty header")
        columns = [h.strip() for h in header]
        for j, name in enumerate(columns):
            if not name:
                raise EvalInputError(f"{path}: row 1, column {j + 1}: empty column name")
        dupes = sorted({c for c in columns if columns.count(c) > 1})
        if dupes:
            raise EvalInputError(f"{path}: row 1: duplicate column(s) {', '.join(dupes)}")
        rows: list[dict[str, str]] = []
        numbers: list[int] = []
        line_no = 1
        for record in reader:
            line_no += 1
            if not record or all(not c.strip() for c in record):
                continue  # blank line
            if len(record) > len(columns):
                raise EvalInputError(
                    f"{path}: row {line_no}: {len(record)} fields but the header has {len(columns)} "
                    f"(an unquoted '{delimiter}' or quote inside a value?)"
                )
            if len(record) < len(columns):
                missing = columns[len(record)]
                raise EvalInputError(
                    f"{path}: row {line_no}, column '{missing}': missing value "
                    f"({len(record)} fields, header has {len(columns)})"
                )
            rows.append(dict(zip(columns, record)))
            numbers.append(line_no)
    except csv.Error as e:
        raise EvalInputError(
            f"{path}: row {reader.line_num}: malformed {('CSV', 'TSV')[delimiter == chr(9)]}: {e}"
        ) from None
    return Table(str(path), columns, rows, numbers)


def _read_jsonl(path: Path, text: str) -> Table:
    rows: list[dict[str, str]] = []
    numbers: list[int] = []
    columns: dict[str, None] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalInputError(
                f"{path}: row {n}: not valid JSON ({e.msg} at character {e.colno})"
            ) from None
        if not isinstance(obj, dict):
            raise EvalInputError(f"{path}: row {n}: expected a JSON object, got {type(obj).__name__}")
        for key in obj:
            columns.setdefault(str(key), None)
        rows.append({str(k): _cell(v) for k, v in obj.items()})
        numbers.append(n)
    cols = list(columns)
    for row in rows:
        for c in cols:
            row.setdefault(c, "")
    return Table(str(path), cols, rows, numbers)


def read_table(path: str | Path, *, required: Sequence[str] = (), non_empty: Sequence[str] = ()) -> Table:
    """Read a CSV (``.csv``), TSV (``.tsv``/``.tab``) or JSON-lines (``.jsonl``/``.ndjson``) file.

    ``required`` columns must exist; ``non_empty`` columns must have a non-blank value in every row.
    """
    p = Path(path)
    text = _decode(p)
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        table = _read_jsonl(p, text)
    elif suffix in (".tsv", ".tab"):
        table = _read_delimited(p, text, "\t")
    else:
        table = _read_delimited(p, text, ",")
    missing = [c for c in required if c not in table.columns]
    if missing:
        have = ", ".join(table.columns) or "none"
        raise EvalInputError(
            f"{p}: row 1: missing required column(s) {', '.join(repr(c) for c in missing)} "
            f"(columns found: {have})"
        )
    for i, row in enumerate(table.rows):
        for c in non_empty:
            if not row.get(c, "").strip():
                raise EvalInputError(f"{table.where(i, c)}: empty value")
        for c, v in row.items():
            if "\x00" in v:
                raise EvalInputError(f"{table.where(i, c)}: contains a NUL character")
    if not table.rows:
        raise EvalInputError(f"{p}: no data rows")
    return table


def row_keys(items: Iterable[Sequence[str]]) -> list[str]:
    """Identity of each input row: a hash of what is judged plus its occurrence number among equal rows.

    Content-based, not position-based, so inserting or reordering rows in the input never makes a finished
    row look unfinished (or a new row look finished); an edited row is a new row and is judged again."""
    seen: dict[str, int] = {}
    keys = []
    for fields in items:
        h = hashlib.sha256("\x1f".join(fields).encode("utf-8")).hexdigest()[:20]
        n = seen.get(h, 0)
        seen[h] = n + 1
        keys.append(f"{h}#{n}")
    return keys


class ResultsWriter:
    """Append result rows to a CSV as they finish (flushed and fsynced), resuming an interrupted file.

    On open, an existing file is checked against the expected columns; complete rows are kept and their keys
    reported as done; a half-written last row (the process died mid-write) is dropped by rewriting the file.
    """

    KEY_COLUMN = "row_key"

    def __init__(self, path: str | Path, columns: Sequence[str], *, resume: bool = True) -> None:
        self.path = Path(path)
        self.columns = list(columns)
        if self.KEY_COLUMN not in self.columns:
            raise ValueError(f"results columns must include {self.KEY_COLUMN!r}")
        self.done: dict[str, dict[str, str]] = {}
        if resume and self.path.exists() and self.path.stat().st_size > 0:
            self._load_existing()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._rewrite([])
        # Held open for the writer's lifetime (rows are appended and fsynced as they finish).
        self._fh = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115
        self._writer = csv.DictWriter(self._fh, fieldnames=self.columns, extrasaction="raise")

    def _load_existing(self) -> None:
        text = _decode(self.path)
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None) or []
        if header != self.columns:
            raise EvalInputError(
                f"{self.path}: row 1: existing results file has different columns than this run "
                f"(other input or --criteria?); choose a new --out or pass --no-resume to overwrite it"
            )
        complete: list[dict[str, str]] = []
        records: list[list[str]] = []
        try:
            for record in reader:
                records.append(record)
        except csv.Error:
            pass  # an unterminated quote at the very end: the torn row is dropped below
        ends_clean = text.endswith("\n")
        for k, record in enumerate(records):
            last = k == len(records) - 1
            if len(record) != len(self.columns) or (last and not ends_clean):
                continue  # torn row from an interrupted write: it will be redone
            complete.append(dict(zip(self.columns, record)))
        for row in complete:
            self.done[row[self.KEY_COLUMN]] = row
        self._rewrite(complete)

    def _rewrite(self, rows: Iterable[dict[str, str]]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=self.columns)
            w.writeheader()
            w.writerows(rows)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def write(self, row: dict[str, str]) -> None:
        self._writer.writerow({c: row.get(c, "") for c in self.columns})
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.done[row[self.KEY_COLUMN]] = row

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
