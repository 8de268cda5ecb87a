"""File inputs: a case input that is a file, sent to Dify the way its file variables expect.

In a plan a file input is a mapping with one ``file`` key (and an optional ``type``)::

    inputs:
      photo: {file: data/cat.png}                          # uploaded once per run
      docs: [{file: data/a.pdf}, {file: "https://example.com/b.pdf", type: document}]

A local path is read by the producer (relative to the plan, inside its data roots), staged in
the run's Redis state and uploaded by a worker with ``POST /files/upload`` once per run and
workflow; an ``http(s)://`` value is passed as ``transfer_method: remote_url``. In the task
message the input becomes ``{"$file": FileRef}``: the file's name, size, digest and Dify type,
never its bytes.

Dify's file types and their extensions: ``api/constants/__init__.py`` (IMAGE_EXTENSIONS, ...)
and ``api/factories/file_factory.py`` (``type`` defaults to ``custom``) in langgenius/dify.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

FileType = Literal["image", "document", "audio", "video", "custom"]
FILE_MARKER = "$file"
# Staged in Redis for the run's workers: Dify's own default limits stay below this
# (UPLOAD_FILE_SIZE_LIMIT 15 MB, UPLOAD_VIDEO_FILE_SIZE_LIMIT 100 MB).
MAX_FILE_BYTES = 100 * 1024 * 1024
EXTENSIONS: dict[str, frozenset[str]] = {
    "image": frozenset({"jpg", "jpeg", "png", "webp", "gif", "svg"}),
    "video": frozenset({"mp4", "mov", "mpeg", "webm"}),
    "audio": frozenset({"mp3", "m4a", "wav", "amr", "mpga"}),
    "document": frozenset({"txt", "markdown", "md", "mdx", "pdf", "html", "htm", "xlsx", "xls", "vtt", "properties",
                           "doc", "docx", "csv", "eml", "msg", "pptx", "ppt", "xml", "epub"}),
}


class FileRef(BaseModel):
    """A file input as the task message carries it."""

    model_config = ConfigDict(extra="forbid")

    type: FileType
    url: str | None = None  # remote_url
    name: str | None = None  # local_file: the file's name, digest and size
    sha256: str | None = None
    size: int | None = Field(None, ge=0)

    @property
    def extension(self) -> str:
        return extension_of(self.name or self.url or "")


def extension_of(name: str) -> str:
    """A file name's or URL's extension, lower case, without the dot ("" when it has none)."""
    name = name.split("?")[0]
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def file_type_of(name: str) -> FileType:
    """Dify's type for a file name or URL (its extension), ``custom`` when none fits."""
    extension = extension_of(name)
    for kind, extensions in EXTENSIONS.items():
        if extension in extensions:
            return kind  # type: ignore[return-value]
    return "custom"


def is_file_input(value: Any) -> bool:
    return isinstance(value, dict) and "file" in value and set(value) <= {"file", "type"}


def resolve_files(value: Any, plan_dir: Path, roots: list[Path], staged: dict[str, Path]) -> Any:
    """``value`` with every ``{file: ...}`` replaced by ``{"$file": FileRef}``; a local file's
    path is added to ``staged`` (digest -> path). Raises ValueError naming the problem."""
    if isinstance(value, list):
        return [resolve_files(item, plan_dir, roots, staged) for item in value]
    if not is_file_input(value):
        return value
    source, kind = value["file"], value.get("type")
    if not isinstance(source, str) or not source:
        raise ValueError(f"file: {source!r} is not a path or an http(s) URL")
    if kind is not None and kind not in get_args(FileType):
        raise ValueError(f"type: {kind!r} is not one of {', '.join(get_args(FileType))}")
    if source.startswith(("http://", "https://")):
        return {FILE_MARKER: FileRef(type=kind or file_type_of(source), url=source).model_dump(exclude_none=True)}
    path = Path(source) if Path(source).is_absolute() else plan_dir / source
    real = path.resolve()
    if not any(real.is_relative_to(root) for root in roots):
        raise ValueError(f"file: {source!r} is outside the plan's directory ({roots[0]}); files are read only "
                         "there (add --data-root DIR to allow more)")
    if not real.is_file():
        raise ValueError(f"file: {source!r} does not exist ({real})")
    size = real.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ValueError(f"file: {source!r} has {size} bytes, more than dify-runner stages ({MAX_FILE_BYTES})")
    digest = hashlib.sha256(real.read_bytes()).hexdigest()
    staged[digest] = real
    ref = FileRef(type=kind or file_type_of(real.name), name=real.name, sha256=digest, size=size)
    return {FILE_MARKER: ref.model_dump(exclude_none=True)}


def file_refs(value: Any) -> list[FileRef]:
    """The FileRefs in an input value (one, a list, or none)."""
    items = value if isinstance(value, list) else [value]
    return [FileRef.model_validate(item[FILE_MARKER]) for item in items
            if isinstance(item, dict) and set(item) == {FILE_MARKER}]
