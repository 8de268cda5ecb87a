"""File inputs on the worker: a run's local files, uploaded to Dify once per run and app.

The producer stages each local file's bytes in the run's Redis state (``stage``); the first
worker that needs one for an app takes a Redis lock (redis-py's ``Lock``), uploads it with
``POST /files/upload`` (multipart ``file`` and ``user``; 201 with the UploadFile's ``id``:
``api/controllers/service_api/app/file.py`` in langgenius/dify) and keeps the id beside it;
every other case of the run reads the id. Dify takes the id in a file variable as
``{type, transfer_method: local_file, upload_file_id}`` and a URL as ``{type, transfer_method:
remote_url, url}`` (``api/factories/file_factory.py``, ``build_from_mapping``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from ...config.files import FILE_MARKER, FileRef
from ...config.plan import WorkflowConfig
from ..deadline import Deadline
from ..store import PREFIX, run_key
from .errors import ConfigurationError, timeout_error

UPLOAD_PATH = "/files/upload"
# How long an upload may hold the lock before another worker may take over (a dead uploader).
UPLOAD_LOCK_SECONDS = 60
Upload = Callable[[WorkflowConfig, str, str, bytes, Deadline], str]


def stage(client: redis.Redis, run_id: str, files: dict[str, bytes], ttl: int) -> None:
    """Put the run's local files (sha256 -> bytes) where its workers find them."""
    pipe = client.pipeline()
    for digest, data in files.items():
        pipe.set(run_key(run_id, "file", digest), data, ex=ttl)
    pipe.execute()


class RunFiles:
    """Turns a case's ``{"$file": FileRef}`` inputs into Dify's file mappings."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self.redis = client
        self.ttl = ttl

    def resolve(self, run_id: str, workflow: WorkflowConfig, api_key: str, value: Any, deadline: Deadline,
                upload: Upload) -> Any:
        """``value`` (an input, or the files list) with every file reference as Dify takes it."""
        if isinstance(value, list):
            return [self.resolve(run_id, workflow, api_key, item, deadline, upload) for item in value]
        if not (isinstance(value, dict) and set(value) == {FILE_MARKER}):
            return value
        ref = FileRef.model_validate(value[FILE_MARKER])
        if ref.url is not None:
            return {"type": ref.type, "transfer_method": "remote_url", "url": ref.url}
        upload_id = self._upload_id(run_id, workflow, api_key, ref, deadline, upload)
        return {"type": ref.type, "transfer_method": "local_file", "upload_file_id": upload_id}

    def _upload_id(self, run_id: str, workflow: WorkflowConfig, api_key: str, ref: FileRef, deadline: Deadline,
                   upload: Upload) -> str:
        key = run_key(run_id, "upload", workflow.id, ref.sha256)
        known = self.redis.get(key)
        if known is not None:
            return known.decode()
        lock = self.redis.lock(PREFIX + "lock:" + key, timeout=UPLOAD_LOCK_SECONDS,
                               blocking_timeout=max(0.1, deadline.remaining()))
        if not lock.acquire():
            raise timeout_error(deadline)
        try:
            known = self.redis.get(key)  # uploaded by the worker that held the lock before
            if known is not None:
                return known.decode()
            data = self.redis.get(run_key(run_id, "file", ref.sha256))
            if data is None:
                raise ConfigurationError(f"file {ref.name!r} (sha256 {ref.sha256}) is not in the run's state: the "
                                         "run expired or its producer did not stage it")
            upload_id = upload(workflow, api_key, ref.name or "file", data, deadline)
            self.redis.set(key, upload_id, ex=self.ttl)
            return upload_id
        finally:
            try:
                lock.release()
            except redis.exceptions.LockError:
                pass  # it expired meanwhile: the id is kept all the same
