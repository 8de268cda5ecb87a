"""The mock's file uploads: ``POST /v1/files/upload`` as Dify answers it.

Dify (``api/controllers/service_api/app/file.py``): multipart ``file`` (and ``user``), 201 with
the UploadFile's fields (``id, name, size, extension, mime_type, created_by, created_at``);
400 ``no_file_uploaded`` without a file, 400 ``too_many_files`` with more than one, 413
``file_too_large`` over the limit, 415 ``unsupported_file_type``. The files are remembered by
id so that a run's file mappings can be checked (``Invalid upload file`` otherwise, as
``api/factories/file_factory.py`` answers).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request

from .scenario import error_body

MAX_UPLOAD_BYTES = 15 * 1024 * 1024  # Dify's UPLOAD_FILE_SIZE_LIMIT default (MB)


@dataclass
class Uploaded:
    id: str
    name: str
    size: int
    user: str


class Uploads:
    def __init__(self) -> None:
        self.files: dict[str, Uploaded] = {}

    async def receive(self, request: Request) -> tuple[int, dict[str, Any]]:
        form = await request.form()
        files = [v for v in form.values() if isinstance(v, UploadFile)]
        if "file" not in form or not files:
            return 400, error_body(400, "no_file_uploaded", "Please upload your file.")
        if len(files) > 1:
            return 400, error_body(400, "too_many_files", "Only one file is allowed.")
        upload = files[0]
        data = await upload.read()
        if len(data) > MAX_UPLOAD_BYTES:
            return 413, error_body(413, "file_too_large", f"File size exceeded. {len(data)} > {MAX_UPLOAD_BYTES}")
        name = upload.filename or "file"
        record = Uploaded(str(uuid.uuid4()), name, len(data), str(form.get("user") or ""))
        self.files[record.id] = record
        extension = name.rsplit(".", 1)[-1] if "." in name else ""
        return 201, {"id": record.id, "name": name, "size": len(data), "extension": extension,
                     "mime_type": upload.content_type, "created_by": str(uuid.uuid4()),
                     "created_at": int(time.time()), "preview_url": None, "source_url": "",
                     "original_url": None, "user_id": None, "tenant_id": None, "conversation_id": None,
                     "file_key": None}

    def describe(self, mapping: Any) -> str | None:
        """The name of the file a run's mapping names; raises ValueError as Dify would."""
        if not isinstance(mapping, dict) or "transfer_method" not in mapping:
            return None
        method = mapping.get("transfer_method")
        if method == "local_file":
            record = self.files.get(str(mapping.get("upload_file_id")))
            if record is None:
                raise ValueError("Invalid upload file")
            return record.name
        if method == "remote_url":
            if not mapping.get("url"):
                raise ValueError("Invalid file url")
            return str(mapping["url"]).rsplit("/", 1)[-1]
        raise ValueError(f"Invalid transfer method {method!r}")

    def names(self, *values: Any) -> list[str]:
        """The names of every file in run inputs and files lists (ValueError on a bad mapping)."""
        found: list[str] = []
        for value in values:
            items = value if isinstance(value, list) else [value]
            for item in items:
                name = self.describe(item)
                if name is not None:
                    found.append(name)
        return found
