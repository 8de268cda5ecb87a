"""Errors raised while reading user input (plans, data files, settings)."""

from __future__ import annotations

from pathlib import Path


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


def read_user_file(path: Path, max_bytes: int, what: str) -> str:
    """Read a UTF-8 file the user named, turning every failure into a PlanError."""
    shown = str(path)
    try:
        if path.stat().st_size > max_bytes:
            raise PlanError(shown, [f"{what} is larger than {max_bytes} bytes"])
        # utf-8-sig: spreadsheet exports often start with a byte-order mark.
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise PlanError(shown, [f"{what} not found"]) from None
    except IsADirectoryError:
        raise PlanError(shown, [f"is a directory, not a {what}"]) from None
    except UnicodeDecodeError as exc:
        raise PlanError(shown, [f"not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    except OSError as exc:
        raise PlanError(shown, [f"cannot read {what}: {exc.strerror}"]) from None
