"""Reading cases from data files: one CSV row or one JSONL line is one case's inputs."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from .errors import PlanError, read_user_file
from .plan import CaseConfig

MAX_DATA_BYTES = 512 * 1024 * 1024


def read_case_file(path: Path, id_column: str | None = None, expect_columns: list[str] | None = None,
                   ) -> list[CaseConfig]:
    """Read a ``.csv`` or ``.jsonl`` file into cases.

    When ``id_column`` is set, that column (CSV) or key (JSONL) names the case and is
    removed from its inputs; otherwise cases are numbered by row. ``expect_columns`` are
    moved from the inputs to the case's ``expect_values`` (read by row templates, never sent);
    a row where one is missing or empty is an error naming the line. A JSONL row's ``expect``
    object is that case's own expectations.
    """
    shown = str(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise PlanError(shown, [f"unsupported data file type {suffix or '(none)'!r}: use .csv or .jsonl"])
    text = read_user_file(path, MAX_DATA_BYTES, "data file")
    rows = _csv_rows(shown, text) if suffix == ".csv" else _jsonl_rows(shown, text)
    cases = []
    for line, row in rows:
        case_id = None
        if id_column is not None:
            if id_column not in row:
                raise PlanError(shown, [f"line {line}: id_column {id_column!r} is missing"])
            case_id = str(row.pop(id_column))
        values = {}
        for column in expect_columns or []:
            value = row.pop(column, None)
            if value is None or (isinstance(value, str) and not value.strip()):
                what = "missing" if value is None else "empty"
                raise PlanError(shown, [f"line {line}: case {case_id or line!r}: expect column {column!r} is {what}"])
            values[column] = value
        own_expect = row.pop("expect", None) if suffix == ".jsonl" else None
        try:
            cases.append(CaseConfig(id=case_id, inputs=row, expect=own_expect, expect_values=values))
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            field = ".".join(str(part) for part in error["loc"])
            problem = error["msg"].removeprefix("Value error, ")
            raise PlanError(shown, [f"line {line}: case {case_id or line!r}: {field}: {problem}"]) from None
    return cases


# Rows are yielded one at a time: a 100k-row file is never held as rows and cases at once.
def _csv_rows(shown: str, text: str) -> Iterator[tuple[int, dict]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise PlanError(shown, ["CSV file is empty (it needs a header row)"]) from None
    except csv.Error as exc:
        raise PlanError(shown, [f"line 1: CSV error: {exc}"]) from None
    if not header or any(not name.strip() for name in header):
        raise PlanError(shown, [f"line 1: header has an empty column name: {header!r}"])
    try:
        for values in reader:
            if not values:
                continue
            if len(values) != len(header):
                raise PlanError(
                    shown,
                    [f"line {reader.line_num}: {len(values)} fields, the header has {len(header)}"],
                )
            yield reader.line_num, dict(zip(header, values, strict=True))
    except csv.Error as exc:
        raise PlanError(shown, [f"line {reader.line_num}: CSV error: {exc}"]) from None


def _jsonl_rows(shown: str, text: str) -> Iterator[tuple[int, dict]]:
    for number, line in enumerate(io.StringIO(text, newline=""), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise PlanError(shown, [f"line {number}: invalid JSON: {exc}"]) from None
        if not isinstance(value, dict):
            raise PlanError(shown, [f"line {number}: expected a JSON object of inputs, got {type(value).__name__}"])
        yield number, value
