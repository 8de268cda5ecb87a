"""Preflight: before the first message is published, ask each workflow's Dify whether the run
can work at all, so a wrong key, URL or app costs one request instead of one per case.

For each workflow that talks to Dify over HTTP, with the key of its ``api_key_env``:

- ``GET {base_url}/info`` (api/controllers/service_api/app/app.py): 401 is a rejected key
  (api/controllers/service_api/wraps.py, ``validate_app_token``), 403 a disabled app, anything
  that is not Dify's JSON means the URL is not a Dify API; ``mode`` says which API the app
  answers on: it fills a workflow's unset ``app_mode``, and one that contradicts the plan's
  (a chat app planned as a workflow) is an error, as are turns sent to an app without
  conversations.
- ``GET {base_url}/parameters``: the app's ``user_input_form``, checked against every case's
  inputs the way Dify checks them (api/core/app/apps/base_app_generator.py,
  ``_validate_inputs``): a required variable missing, a select value not among its options, a
  number that is not one, a text longer than its max_length are errors; inputs the app does not
  declare are a warning (Dify drops them). File inputs are checked against the variable's
  ``allowed_file_types``, ``allowed_file_extensions``, ``allowed_file_upload_methods`` and
  ``max_length``, and their size against ``system_parameters`` (``file_size_limit`` and the
  image, audio and video limits, in MB: ``api/controllers/service_api/app/app.py``).

A Dify judge (``role: judge``) is a workflow and is checked the same way. An OpenAI-compatible
judge gets ``GET {base_url}/models``: no answer or a 401 is an error (no case could be graded);
another status is a warning (not every compatible server lists its models).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from ..config.checks import OpenAIJudge
from ..config.errors import PlanError
from ..config.manifest import Task
from ..config.plan import WorkflowConfig, api_of
from ..config.settings import mask_url
from .preflight_files import file_problem

TIMEOUT = httpx.Timeout(10.0)
EXAMPLES = 3  # cases named per problem
# The API each non-workflow app mode answers on (api/controllers/service_api/app/).
MODE_API = {"workflow": "/workflows/run", "chat": "/chat-messages", "agent-chat": "/chat-messages",
            "advanced-chat": "/chat-messages", "completion": "/completion-messages"}


class PreflightError(PlanError):
    """A workflow cannot run as planned; the CLI prints it and exits 2 before publishing."""


def preflight(
    plan_path: str, workflows: Iterable[WorkflowConfig], cases: Iterable[Task], environ: Mapping[str, str],
    *, keys_required: bool, http: httpx.Client | None = None, judges: Iterable[OpenAIJudge] = (),
    modes: dict[str, str] | None = None,
) -> list[str]:
    """Check every HTTP workflow; returns warnings, raises PreflightError with every problem.

    ``keys_required``: the key variables must be set here (the embedded default, whose worker
    is this process); otherwise an unset one is a warning (fleet workers have their own env).
    """
    by_workflow: dict[str, list[Task]] = defaultdict(list)
    for task in cases:
        by_workflow[task.workflow_id].append(task)
    problems: list[str] = []
    warnings: list[str] = []
    client = http or httpx.Client(timeout=TIMEOUT, follow_redirects=False)
    try:
        for workflow in workflows:
            if workflow.is_stub or workflow.is_mock or workflow.api_key_env is None:
                continue
            found = _check_workflow(client, workflow, by_workflow.get(workflow.id, []), environ, keys_required,
                                    modes if modes is not None else {})
            problems += found[0]
            warnings += found[1]
        for judge in judges:
            found = _check_judge(client, judge, environ, keys_required)
            problems += found[0]
            warnings += found[1]
    finally:
        if http is None:
            client.close()
    if problems:
        raise PreflightError(plan_path, problems + [f"warning: {w}" for w in warnings]
                             + ["(--no-preflight skips these checks)"])
    return warnings


def _check_workflow(
    client: httpx.Client, workflow: WorkflowConfig, tasks: list[Task], environ: Mapping[str, str],
    keys_required: bool, modes: dict[str, str],
) -> tuple[list[str], list[str]]:
    name, var, url = f"workflow {workflow.id!r}", workflow.api_key_env or "", mask_url(workflow.base_url)
    key = environ.get(var)  # a name the key rule refuses never gets here: load_plan refused it
    if not key:
        if keys_required:
            return [f"{name}: {var} is not set, so no case of it could run (the embedded default's worker is "
                    "this process: export the key first)"], []
        return [], []  # plan_warnings (cli.py) already says so
    headers = {"Authorization": f"Bearer {key}"}
    info, problem = _get(client, f"{workflow.base_url}/info", headers, name, var, url)
    if problem is not None:
        return [problem], []
    mode = info.get("mode")
    # A mode this version of dify-runner does not know gives no verdict.
    api = api_of(mode) if isinstance(mode, str) and mode in MODE_API else None
    if api is not None:
        planned = workflow.app_mode
        if planned is not None and api_of(planned) != api:
            return [f"{name}: the app at {url} ({info.get('name')!r}) is a {mode!r} app, but the plan says app_mode: "
                    f"{planned}; it answers on {MODE_API[mode]}"], []
        modes[workflow.id] = mode
        if mode == "agent-chat" and workflow.response_mode == "blocking":
            return [f"{name}: the app at {url} is an agent app, which Dify runs only in streaming mode: "
                    "set response_mode: streaming"], []
    talks = [t.case_id for t in tasks if t.turns]
    if talks and api in ("workflow", "completion"):
        return [f"{name}: {_cases(talks)} are conversations (turns), but the app at {url} is a {mode!r} app: only "
                "chat apps keep conversations"], []
    parameters, problem = _get(client, f"{workflow.base_url}/parameters", headers, name, var, url)
    if problem is not None:
        return [problem], []
    form = parameters.get("user_input_form")
    if not isinstance(form, list):
        return [f"{name}: GET {url}/parameters has no user_input_form list: is {url} a Dify API?"], []
    limits = parameters.get("system_parameters") if isinstance(parameters.get("system_parameters"), dict) else {}
    return check_inputs(name, form, tasks, limits, chat=api == "chat")


def _check_judge(client: httpx.Client, judge: OpenAIJudge, environ: Mapping[str, str],
                 keys_required: bool) -> tuple[list[str], list[str]]:
    name, url = f"judge {judge.id!r}", mask_url(judge.base_url)
    key = environ.get(judge.api_key_env) if judge.api_key_env else None
    if judge.api_key_env and not key:
        if keys_required:
            return [f"{name}: {judge.api_key_env} is not set, so no case could be graded (the embedded default's "
                    "worker is this process: export the key first)"], []
        return [], []
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = client.get(f"{judge.base_url}/models", headers=headers)
    except httpx.HTTPError as exc:
        return [f"{name}: cannot reach {url} ({type(exc).__name__}: {exc or 'no answer'})"], []
    if response.status_code in (401, 403):
        return [f"{name}: {url} rejected the key in {judge.api_key_env} (HTTP {response.status_code})"], []
    if response.status_code != 200:
        return [], [f"{name}: GET {url}/models answered HTTP {response.status_code}; is {url} an OpenAI-compatible "
                    "API (its base URL, such as https://api.openai.com/v1)?"]
    return [], []


def _get(client: httpx.Client, full_url: str, headers: dict[str, str], name: str, var: str,
         url: str) -> tuple[dict[str, Any], str | None]:
    path = full_url.rsplit("/", 1)[1]
    try:
        response = client.get(full_url, headers=headers)
    except httpx.HTTPError as exc:
        return {}, f"{name}: cannot reach {url} ({type(exc).__name__}: {exc or 'no answer'})"
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code == 401:
        return {}, f"{name}: Dify at {url} rejected the key in {var} (HTTP 401: {_message(body)})"
    if response.status_code == 403:
        return {}, f"{name}: Dify at {url} refused the app (HTTP 403: {_message(body)})"
    if response.status_code != 200 or not isinstance(body, dict):
        snippet = response.text[:120].strip() or "(empty body)"
        return {}, (f"{name}: {url} is not a Dify API: GET /{path} answered HTTP {response.status_code} {snippet!r} "
                    "(base_url is the API's URL, such as https://api.dify.ai/v1)")
    return body, None


def _message(body: object) -> str:
    if isinstance(body, dict) and body.get("message"):
        return f"{body.get('code', '')} {body['message']}".strip()
    return "no message"


def check_inputs(name: str, form: list[Any], tasks: list[Task], limits: Mapping[str, Any] | None = None,
                 chat: bool = False) -> tuple[list[str], list[str]]:
    """Every case's inputs against the app's user_input_form (its old structure: a list of
    ``{type: {variable, required, options, max_length, ...}}``)."""
    fields: dict[str, tuple[str, dict[str, Any]]] = {}
    for item in form:
        if isinstance(item, dict) and len(item) == 1:
            kind, spec = next(iter(item.items()))
            if isinstance(spec, dict) and isinstance(spec.get("variable"), str):
                fields[spec["variable"]] = (str(kind), spec)
    found: dict[str, list[str]] = defaultdict(list)  # problem -> case ids
    unknown: dict[str, list[str]] = defaultdict(list)
    for task in tasks:
        inputs = task.parameters
        if chat and task.query is None and not task.turns:
            inputs = {k: v for k, v in inputs.items() if k != "query"}  # sent as the message
        for variable, (kind, spec) in fields.items():
            problem = _field_problem(variable, kind, spec, inputs.get(variable))
            if problem is None and kind in ("file", "file-list"):
                problem = file_problem(variable, kind, spec, inputs.get(variable), limits or {})
            if problem is not None:
                found[problem].append(task.case_id or task.task_id)
        for column in inputs:
            if column not in fields:
                unknown[column].append(task.case_id or task.task_id)
    problems = [f"{name}: {problem} in {_cases(ids)}" for problem, ids in found.items()]
    warnings = [f"{name}: the app does not declare input {column!r} (Dify ignores it), sent by {_cases(ids)}"
                for column, ids in unknown.items()]
    return problems, warnings


def _field_problem(variable: str, kind: str, spec: dict[str, Any], value: Any) -> str | None:
    if value is None:
        return f"required input {variable!r} is missing" if spec.get("required") else None
    if kind in ("text-input", "paragraph", "select") and not isinstance(value, str):
        return f"input {variable!r} ({kind}) must be a string, got {type(value).__name__}"
    if kind == "select":
        options = spec.get("options") or []
        if value not in options:
            return f"input {variable!r} = {value!r} is not one of the app's options {options}"
    if kind == "number" and not _is_number(value):
        return f"input {variable!r} = {value!r} is not a number"
    limit = spec.get("max_length")
    if kind in ("text-input", "paragraph") and isinstance(limit, int) and limit > 0 and len(value) > limit:
        return f"input {variable!r} is longer than the app's max_length ({limit} characters)"
    return None


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    try:
        float(str(value))
        return True
    except ValueError:
        return False


def _cases(ids: list[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:EXAMPLES])
    more = f" and {len(ids) - EXAMPLES} more" if len(ids) > EXAMPLES else ""
    return f"{len(ids)} case(s): {shown}{more}"
