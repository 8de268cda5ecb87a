"""Errors raised while reading user input (plans, data files, settings)."""

from __future__ import annotations


class PlanError(Exception):
    """A plan or one of its data files is invalid.

    The message is meant for a person: it names the file, the field and the value.
    The CLI prints it as is and exits with status 2.
    """

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{path}: invalid plan\n{lines}")
