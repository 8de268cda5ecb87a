"""A case's file input against the app's file variable (preflight and ``validate --remote``).

What Dify allows, from ``GET /parameters`` (langgenius/dify, ``api/controllers/service_api/app/
app.py``): each ``file`` / ``file-list`` variable of ``user_input_form`` names
``allowed_file_types`` (image, document, audio, video, custom), ``allowed_file_extensions``
(for custom, with the dot: ``.png``), ``allowed_file_upload_methods`` (local_file, remote_url)
and, for a list, ``max_length``; ``system_parameters`` holds the size limits in MB
(``file_size_limit``, ``image_file_size_limit``, ``audio_file_size_limit``,
``video_file_size_limit``), as Dify's upload checks them (``api/services/file_service.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config.files import FileRef, file_refs

SIZE_LIMITS = {"image": "image_file_size_limit", "audio": "audio_file_size_limit",
               "video": "video_file_size_limit"}


def file_problem(variable: str, kind: str, spec: Mapping[str, Any], value: Any,
                 limits: Mapping[str, Any]) -> str | None:
    """Why ``value`` does not fit the app's file variable, or None."""
    if value is None:
        return None
    refs = file_refs(value)
    if kind == "file" and (isinstance(value, list) or len(refs) != 1):
        return f"input {variable!r} (file) must be one file input ({{file: PATH}} or {{file: URL}})"
    if kind == "file-list":
        if not isinstance(value, list) or len(refs) != len(value):
            return f"input {variable!r} (file-list) must be a list of file inputs"
        most = spec.get("max_length")
        if isinstance(most, int) and most > 0 and len(refs) > most:
            return f"input {variable!r} has {len(refs)} files, more than the app allows ({most})"
    for ref in refs:
        problem = _one_file(variable, spec, ref, limits)
        if problem:
            return problem
    return None


def _one_file(variable: str, spec: Mapping[str, Any], ref: FileRef, limits: Mapping[str, Any]) -> str | None:
    shown = ref.name or ref.url
    types = spec.get("allowed_file_types") or []
    extensions = [str(e).lower().lstrip(".") for e in spec.get("allowed_file_extensions") or []]
    if types and ref.type not in types and not ("custom" in types and ref.extension in extensions):
        return (f"input {variable!r}: {shown!r} is a {ref.type} file; the app takes {', '.join(types)}"
                + (f" (extensions {', '.join(extensions)})" if "custom" in types and extensions else ""))
    methods = spec.get("allowed_file_upload_methods") or []
    method = "remote_url" if ref.url else "local_file"
    if methods and method not in methods:
        return f"input {variable!r}: {shown!r} would be sent as {method}; the app allows {', '.join(methods)}"
    limit = limits.get(SIZE_LIMITS.get(ref.type, "file_size_limit"))
    if ref.size is not None and isinstance(limit, (int, float)) and limit > 0 and ref.size > limit * 1024 * 1024:
        return (f"input {variable!r}: {shown!r} has {ref.size} bytes, more than the app's "
                f"{SIZE_LIMITS.get(ref.type, 'file_size_limit')} ({limit:g} MB)")
    return None
