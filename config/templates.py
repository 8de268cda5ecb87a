"""Row templates: ``{{ column }}`` in an ``expect:`` block reads that column of each row.

Deliberately not Jinja: a plan is shared data, and a template here only names a column.
A string that is exactly one template takes the column's value as it is (a JSONL number
stays a number); a template inside longer text is replaced by the value as text.
"""

from __future__ import annotations

import json
import re
from typing import Any

_TEMPLATE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}")
_WHOLE = re.compile(r"^\{\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}$")


class TemplateError(ValueError):
    """A template names a column the row lacks, or whose value is empty."""


def is_template(text: str) -> bool:
    return _TEMPLATE.search(text) is not None


def names_in(value: Any) -> set[str]:
    """Every column the templates in ``value`` (a str, or dicts and lists of them) read."""
    if isinstance(value, str):
        return set(_TEMPLATE.findall(value))
    if isinstance(value, dict):
        return set().union(*(names_in(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(names_in(v) for v in value)) if value else set()
    return set()


def render(value: Any, row: dict[str, Any]) -> Any:
    """``value`` with every template replaced by its column of ``row``."""
    if isinstance(value, str):
        whole = _WHOLE.match(value)
        if whole:
            return _column(whole.group(1), row)
        return _TEMPLATE.sub(lambda m: _text(_column(m.group(1), row)), value)
    if isinstance(value, dict):
        return {k: render(v, row) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, row) for v in value]
    return value


def _column(name: str, row: dict[str, Any]) -> Any:
    if name not in row:
        shown = ", ".join(sorted(row)[:20]) or "none"
        raise TemplateError(f"{{{{ {name} }}}}: the row has no column {name!r} (its columns: {shown})")
    value = row[name]
    if value is None or (isinstance(value, str) and not value.strip()):
        raise TemplateError(f"{{{{ {name} }}}}: column {name!r} is empty in this row")
    return value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
