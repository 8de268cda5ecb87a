"""Reading a plan from YAML, and turning every problem into one readable PlanError."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .checks import missing_package
from .datasets import read_case_file
from .errors import PlanError, read_user_file
from .expectations import Expectations
from .files import is_file_input, resolve_files
from .plan import CaseConfig, DatasetConfig, TestPlan, judge_problem
from .settings import key_variable_refusal
from .templates import TemplateError, names_in, render

MAX_PLAN_BYTES = 10 * 1024 * 1024
# A plan is data for a person to read. YAML aliases can make a small file expand into
# billions of values ("billion laughs"), so the parsed plan's size and depth are bounded.
MAX_PLAN_VALUES = 1_000_000
MAX_PLAN_DEPTH = 64


class LoadedPlan:
    """A validated plan with every dataset's cases resolved (inline and from files)."""

    def __init__(self, path: Path, plan: TestPlan, cases: dict[str, list[CaseConfig]],
                 files: dict[str, Path] | None = None) -> None:
        self.path = path
        self.plan = plan
        self.cases = cases
        self.files = files or {}  # local file inputs: sha256 -> path

    @property
    def case_count(self) -> int:
        """Cases after expansion: workflow x case x repeat."""
        total = 0
        for dataset in self.plan.datasets:
            n_workflows = len(dataset.workflows or self.plan.app_workflows)
            total += n_workflows * len(self.cases[dataset.name])
        return total * self.plan.repeat


def load_plan(path: str | Path, data_roots: list[Path] | None = None) -> LoadedPlan:
    """Read, parse and validate a plan file and its data files.

    Data files must lie under the plan's directory or one of ``data_roots``: a plan is a
    shared file, and the rows it reads are sent to the plan's ``base_url``.
    Raises PlanError naming the file, the field and the value for any problem.
    """
    path = Path(path)
    roots = [path.parent.resolve(), *(Path(root).resolve() for root in data_roots or [])]
    shown = str(path)
    raw = parse_yaml(shown, read_user_file(path, MAX_PLAN_BYTES, "plan file"))
    try:
        plan = TestPlan.model_validate(raw)
    except ValidationError as exc:
        raise PlanError(shown, format_validation_error(exc)) from None

    cases: dict[str, list[CaseConfig]] = {}
    staged: dict[str, Path] = {}
    problems: list[str] = []
    targets = [("workflows", plan.workflows), ("judges", plan.judges)]
    for field, configs in targets:
        for index, target in enumerate(configs):
            refusal = key_variable_refusal(target.api_key_env, os.environ) if target.api_key_env else None
            if refusal is not None:
                problems.append(f"{field}[{index}].api_key_env = {target.api_key_env!r}: {refusal}")
    for index, dataset in enumerate(plan.datasets):
        resolved = list(dataset.cases)
        if dataset.file is not None:
            data_path = dataset.file if dataset.file.is_absolute() else path.parent / dataset.file
            real = data_path.resolve()
            if not any(real.is_relative_to(root) for root in roots):
                problems.append(f"datasets[{index}].file = {str(dataset.file)!r}: is outside the plan's directory "
                                f"({roots[0]}); data files are read only there (add --data-root DIR to allow more)")
                continue
            try:
                resolved += read_case_file(data_path, dataset.id_column, dataset.expect_columns)
            except PlanError as exc:
                problems += [f"datasets[{index}].file ({exc.path}): {p}" for p in exc.problems]
                continue
        seen: set[str] = set()
        for position, case in enumerate(resolved):
            case_id = case.id or f"{dataset.name}-{position + 1}"
            if case_id in seen:
                problems.append(f"datasets[{index}] ({dataset.name}): case id {case_id!r} is used more than once")
            seen.add(case_id)
        if not resolved:
            problems.append(f"datasets[{index}] ({dataset.name}): has no cases")
        problems += resolve_expectations(index, dataset, resolved, plan.judge_ids())
        problems += resolve_case_files(index, dataset.name, resolved, path.parent, roots, staged, plan.judge_ids())
        cases[dataset.name] = resolved
    problems += _missing_models(cases)
    if problems:
        raise PlanError(shown, problems)
    return LoadedPlan(path, plan, cases, staged)


MAX_TEMPLATE_PROBLEMS = 10


def _missing_models(cases: dict[str, list[CaseConfig]]) -> list[str]:
    """A similarity model this process cannot load (checked here: workers would end every case ERROR)."""
    models = {(name, c.expect.similarity.model) for name, rows in cases.items() for c in rows
              if c.expect is not None and c.expect.similarity is not None}
    problems = []
    for name, model in sorted(models):
        problem = missing_package(model)
        if problem:
            problems.append(f"dataset {name!r}: expect.similarity.model: {problem}")
    return problems


def select(loaded: LoadedPlan, only: list[str] | None = None, tags: list[str] | None = None) -> LoadedPlan:
    """The part of ``loaded`` that ``--only DATASET,...`` and ``--tag TAG`` keep: datasets named in
    ``only``, cases tagged (or in a dataset tagged) with one of ``tags``. PlanError if a name is
    unknown or nothing is left."""
    plan, shown = loaded.plan, str(loaded.path)
    names = [d.name for d in plan.datasets]
    unknown = [n for n in only or [] if n not in names]
    if unknown:
        raise PlanError(shown, [f"--only: no dataset named {', '.join(map(repr, unknown))} (datasets: "
                                f"{', '.join(names)})"])
    datasets = [d for d in plan.datasets if not only or d.name in only]
    cases = {d.name: loaded.cases[d.name] for d in datasets}
    if tags:
        wanted = set(tags)
        for dataset in datasets:
            if not wanted & set(dataset.tags):
                cases[dataset.name] = [c for c in cases[dataset.name] if wanted & set(c.tags)]
        datasets = [d for d in datasets if cases[d.name]]
        cases = {d.name: cases[d.name] for d in datasets}
    if not datasets:
        raise PlanError(shown, [f"--tag {', '.join(tags or [])}: no dataset or case has this tag"])
    return LoadedPlan(loaded.path, plan.model_copy(update={"datasets": datasets}), cases, loaded.files)


def resolve_case_files(index: int, name: str, cases: list[CaseConfig], plan_dir: Path, roots: list[Path],
                       staged: dict[str, Path], judges: list[str]) -> list[str]:
    """Resolve the file inputs of every case and turn (config/files.py), and check the turns'
    judges; returns the problems, each naming the case and the field."""
    problems: list[str] = []

    def resolved(where: str, value: Any) -> Any:
        try:
            return resolve_files(value, plan_dir, roots, staged)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            return value

    for position, case in enumerate(cases):
        where = f"datasets[{index}] ({name}) case {case.id or position + 1!r}"
        update: dict[str, Any] = {}
        if any(is_file_input(v) or isinstance(v, list) for v in case.inputs.values()):
            update["inputs"] = {k: resolved(f"{where}: inputs.{k}", v) for k, v in case.inputs.items()}
        if case.files:
            update["files"] = [resolved(f"{where}: files[{i}]", v) for i, v in enumerate(case.files)]
        if case.turns:
            turns = []
            for t, turn in enumerate(case.turns):
                problem = judge_problem(turn.expect, judges)
                if problem:
                    problems.append(f"{where}: turns[{t}].expect.judge.by: {problem}")
                turns.append(turn.model_copy(update={
                    "inputs": {k: resolved(f"{where}: turns[{t}].inputs.{k}", v) for k, v in turn.inputs.items()},
                    "files": [resolved(f"{where}: turns[{t}].files[{i}]", v) for i, v in enumerate(turn.files)]}))
            update["turns"] = turns
        if update:
            cases[position] = case.model_copy(update=update)
        if len(problems) >= MAX_TEMPLATE_PROBLEMS:
            break
    return problems


def resolve_expectations(index: int, dataset: DatasetConfig, cases: list[CaseConfig], judges: list[str],
                         ) -> list[str]:
    """Give each case of ``dataset`` its own expectations (a case's own, else the dataset's),
    with row templates rendered from its inputs and expect_values. Returns the problems,
    each naming the dataset and the case (at most MAX_TEMPLATE_PROBLEMS of them)."""
    problems: list[str] = []
    shared = dataset.expect
    raw = shared.model_dump(exclude_unset=True) if shared is not None else None
    templated = raw is not None and bool(names_in(raw))
    for position, case in enumerate(cases):
        where = f"datasets[{index}] ({dataset.name}) case {case.id or position + 1!r}"
        expect = case.expect
        own = expect.model_dump(exclude_unset=True) if expect is not None else None
        if own is not None and names_in(own):
            expect, problem = _rendered(own, case)
        elif expect is None and templated:
            expect, problem = _rendered(raw, case)
        else:
            expect, problem = expect or shared, None
        problem = problem or judge_problem(expect, judges)
        if problem:
            problems.append(f"{where}: expect: {problem}")
            if len(problems) >= MAX_TEMPLATE_PROBLEMS:
                problems.append(f"datasets[{index}] ({dataset.name}): ... (stopped at {MAX_TEMPLATE_PROBLEMS})")
                break
            continue
        if expect is not case.expect and expect is not shared:  # rendered for this row
            cases[position] = case.model_copy(update={"expect": expect})
    return problems


def _rendered(raw: dict[str, Any], case: CaseConfig) -> tuple[Expectations | None, str | None]:
    row = {**case.inputs, **case.expect_values}
    try:
        return Expectations.model_validate(render(raw, row)), None
    except TemplateError as exc:
        return None, str(exc)
    except ValidationError as exc:
        return None, "; ".join(format_validation_error(exc))


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (PyYAML keeps the last one
    silently: a plan's second ``execution:`` would replace the first without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *alias` merges may be overridden by explicit keys: that is YAML
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(shown: str, text: str) -> dict[str, Any]:
    """Parse YAML safely (no Python objects, no tags, no duplicate keys) into a mapping."""
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PlanError(shown, [f"YAML syntax error at {where}{problem}"]) from None
    except RecursionError:
        raise PlanError(shown, ["YAML is nested too deeply"]) from None
    problem = _too_large(raw)
    if problem is not None:
        raise PlanError(shown, [problem])
    if not isinstance(raw, dict):
        kind = "empty" if raw is None else f"a {type(raw).__name__}"
        raise PlanError(shown, [f"the top level must be a mapping of plan fields, got {kind}"])
    return raw


def _too_large(raw: Any) -> str | None:
    """Walk the parsed YAML (aliases included) and stop at the first bound it crosses."""
    count = 0
    stack: list[tuple[Any, int]] = [(raw, 0)]
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_PLAN_VALUES:
            return f"the plan expands to more than {MAX_PLAN_VALUES} values (YAML aliases?)"
        if depth > MAX_PLAN_DEPTH:
            return f"the plan is nested more than {MAX_PLAN_DEPTH} levels deep"
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return None


def format_validation_error(exc: ValidationError) -> list[str]:
    """One line per pydantic error: ``field.path = value: message``."""
    lines = []
    for err in exc.errors(include_url=False):
        field = _format_loc(err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if not field:
            # Plan-wide checks name their own fields in the message.
            lines.append(message if err["type"] == "value_error" else f"(top level): {message}")
        elif err["type"] == "extra_forbidden":
            lines.append(f"{field}: unknown field (check the spelling; see the plan reference)")
        elif err["type"] == "missing":
            lines.append(f"{field}: required field is missing")
        elif err["type"] in ("value_error", "assertion_error"):
            lines.append(f"{field}: {message}")
        else:
            lines.append(f"{field} = {_short_repr(err.get('input'))}: {message}")
    return lines


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
