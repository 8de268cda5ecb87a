"""Errors raised while reading user input (plans, data files, settings)."""

from __future__ import annotations

import os
import stat
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


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def read_user_file(path: Path, max_bytes: int, what: str) -> str:
    """Read a UTF-8 file the user named, turning every failure into a PlanError.

    Only regular files are read (a FIFO would block for good, a link to /dev/zero would never
    end), and never more than ``max_bytes``: the bound holds before the read, not after it.
    """
    shown = str(path)
    try:
        # O_NONBLOCK: opening a FIFO with no writer must not hang before fstat can refuse it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise PlanError(shown, [f"{what} not found"]) from None
    except OSError as exc:
        raise PlanError(shown, [f"cannot read {what}: {exc.strerror}"]) from None
    mode = os.fstat(fd).st_mode
    for test, kind in _KINDS:
        if test(mode):
            os.close(fd)
            raise PlanError(shown, [f"is {kind}, not a {what}: only regular files are read"])
    with os.fdopen(fd, "rb") as handle:
        try:
            data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise PlanError(shown, [f"cannot read {what}: {exc.strerror}"]) from None
    if len(data) > max_bytes:
        raise PlanError(shown, [f"{what} is larger than {max_bytes} bytes"])
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PlanError(shown, [f"not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
