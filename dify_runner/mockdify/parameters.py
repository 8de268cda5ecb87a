"""What the mock's ``GET /v1/parameters`` answers: the app's start form and its limits.

Shape: ``api/controllers/service_api/app/app.py`` (AppParameterApi) and
``api/controllers/common/fields.py``; ``user_input_form`` in its old structure
(``workflow.user_input_form(to_old_structure=True)``): a list of ``{type: {variable, ...}}``.
"""

from __future__ import annotations

from typing import Any

from .scenario import RESERVED_KEY

# The mock app's start variables, in /parameters' old structure
# (api/controllers/service_api/app/app.py: workflow.user_input_form(to_old_structure=True)).
# `_mock` is declared, as a JSON object, because it is the mock's own input.
DEFAULT_FORM: list[dict[str, Any]] = [
    {"paragraph": {"label": "Query", "variable": "query", "required": False, "default": ""}},
    {"text-input": {"label": "Target language", "variable": "target_language", "required": False,
                    "max_length": 48, "default": ""}},
    {"json_object": {"label": "Mock behaviour", "variable": RESERVED_KEY, "required": False}},
]



def parameters_body(form: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "opening_statement": None, "suggested_questions": [],
        "suggested_questions_after_answer": {"enabled": False}, "speech_to_text": {"enabled": False},
        "text_to_speech": {"enabled": False, "voice": "", "language": "", "autoPlay": "disabled"},
        "retriever_resource": {"enabled": False}, "annotation_reply": {"enabled": False},
        "more_like_this": {"enabled": False}, "sensitive_word_avoidance": {"enabled": False},
        "user_input_form": form,
        "file_upload": {"image": {"enabled": False, "number_limits": 3, "detail": "high",
                                  "transfer_methods": ["remote_url", "local_file"]}},
        "system_parameters": {"file_size_limit": 15, "image_file_size_limit": 10, "audio_file_size_limit": 50,
                              "video_file_size_limit": 100, "workflow_file_upload_limit": 10},
    }
