"""``dify-runner compare A B``: two runs case by case, to gate CI on regressions.

Task ids are deterministic (``workflow/dataset/case[#n]``), so the same plan run twice
gives the same ids: a case that passed in A and not in B is newly failing, the reverse
is fixed. B regresses on A when any threshold is crossed (see ``Thresholds``).
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich import box
from rich.console import Console
from rich.table import Table

from ..config.errors import PlanError
from .reports import FILE_NAMES, RunSummary
from .summary import number_text, task_status_in

CHANGES_SHOWN = 20


class Thresholds(BaseModel):
    """How much worse B may be than A before compare exits 1."""

    model_config = ConfigDict(extra="forbid")

    max_new_failures: int = Field(0, ge=0)
    max_pass_rate_drop: float = Field(0.0, ge=0, le=1)  # in points of share: 0.02 = two percentage points
    max_latency_increase: float = Field(0.2, ge=0)  # p95, relative: 0.2 = 20% slower
    min_latency_increase: float = Field(0.05, ge=0)  # seconds: below this a p95 change is noise
    max_cost_increase: float = Field(0.2, ge=0)  # mean cost per case, relative
    # Mean score of any kind of check (similarity, judge, ...), in points of 0..1; None: not gated.
    max_score_drop: float | None = Field(None, ge=0, le=1)


class CaseChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    case: str
    before: str
    after: str
    error_message: str | None = None


class ScoreChange(BaseModel):
    """One kind of check: its mean score in A and in B (None where it did not run)."""

    model_config = ConfigDict(extra="forbid")

    check: str
    mean_a: float | None
    mean_b: float | None
    pass_rate_a: float | None
    pass_rate_b: float | None

    @property
    def delta(self) -> float | None:
        return None if self.mean_a is None or self.mean_b is None else round(self.mean_b - self.mean_a, 6)


class CaseScoreDrop(BaseModel):
    model_config = ConfigDict(extra="forbid")

    case: str
    check: str
    before: float
    after: float


class Comparison(BaseModel):
    """What ``compare`` found; ``regressions`` empty means B is no worse than A."""

    model_config = ConfigDict(extra="forbid")

    run_a: RunSummary
    run_b: RunSummary
    common_cases: int
    only_in_a: int
    only_in_b: int
    newly_failing: list[CaseChange]
    fixed: list[CaseChange]
    pass_rate_delta: float
    latency_p95_delta: float | None
    cost_per_case_a: float | None
    cost_per_case_b: float | None
    scores: list[ScoreChange] = Field(default_factory=list)
    # Cases whose graded score (similarity, judge) fell the most, largest drop first.
    score_drops: list[CaseScoreDrop] = Field(default_factory=list)
    regressions: list[str]


def resolve_report(reference: str, runs_dir: Path) -> Path:
    """A report.json file, a run directory, or a run id under ``runs_dir``."""
    for candidate in (Path(reference), Path(reference) / FILE_NAMES["json"], runs_dir / reference / FILE_NAMES["json"]):
        if candidate.is_file():
            return candidate
    raise PlanError(reference, [f"no report.json there, nor in {runs_dir / reference} (run `dify-runner report` "
                                "first, or pass the file)"])


Cases = dict[str, tuple[str, str | None, dict[str, float]]]
GRADED = ("similarity", "judge")


def load_report(path: Path) -> tuple[RunSummary, Cases]:
    """The run summary and, per case id, its 8-state status, error message and graded scores."""
    try:
        with path.open(encoding="utf-8") as handle:
            raw = json.load(handle)
        run = RunSummary.model_validate(raw["run"])
        cases = {}
        for result in raw["results"]:
            status = task_status_in(result.get("metadata", {}), result["status"])
            scores = {c["name"]: float(c["score"]) for c in result.get("checks") or []
                      if c.get("name") in GRADED and c.get("score") is not None}
            cases[str(result["execution_id"])] = (status, result.get("error_message"), scores)
    except OSError as exc:
        raise PlanError(str(path), [f"cannot read it: {exc.strerror}"]) from None
    except (ValueError, KeyError, TypeError, ValidationError) as exc:  # json errors are ValueErrors
        raise PlanError(str(path), [f"not a dify-runner report.json: {type(exc).__name__}: {exc}"]) from None
    return run, cases


def compare(path_a: Path, path_b: Path, thresholds: Thresholds) -> Comparison:
    run_a, cases_a = load_report(path_a)
    run_b, cases_b = load_report(path_b)
    common = cases_a.keys() & cases_b.keys()
    newly_failing, fixed, drops = [], [], []
    for case in sorted(common):
        (before, _, scores_a), (after, error, scores_b) = cases_a[case], cases_b[case]
        for check, score in scores_b.items():
            if check in scores_a and score < scores_a[check]:
                drops.append(CaseScoreDrop(case=case, check=check, before=scores_a[check], after=score))
        if before == "succeeded" and after != "succeeded":
            newly_failing.append(CaseChange(case=case, before=before, after=after, error_message=error))
        elif before != "succeeded" and after == "succeeded":
            fixed.append(CaseChange(case=case, before=before, after=after))
    a, b = run_a.statistics, run_b.statistics
    p95 = None if a.latency_p95 is None or b.latency_p95 is None else round(b.latency_p95 - a.latency_p95, 6)
    cost_a, cost_b = _cost_per_case(run_a), _cost_per_case(run_b)
    regressions = []
    if len(newly_failing) > thresholds.max_new_failures:
        regressions.append(f"{len(newly_failing)} case(s) newly failing (allowed: {thresholds.max_new_failures})")
    if a.success_rate - b.success_rate > thresholds.max_pass_rate_drop + 1e-12:
        regressions.append(f"pass rate fell from {a.success_rate:.1%} to {b.success_rate:.1%} "
                           f"(allowed drop: {thresholds.max_pass_rate_drop:.1%})")
    if p95 is not None and a.latency_p95 and p95 > thresholds.min_latency_increase \
            and p95 / a.latency_p95 > thresholds.max_latency_increase:
        regressions.append(f"latency p95 rose from {a.latency_p95:.3f} s to {b.latency_p95:.3f} s "
                           f"(allowed: +{thresholds.max_latency_increase:.0%})")
    if cost_a and cost_b is not None and (cost_b - cost_a) / cost_a > thresholds.max_cost_increase:
        regressions.append(f"cost per case rose from {cost_a:.6f} to {cost_b:.6f} "
                           f"(allowed: +{thresholds.max_cost_increase:.0%})")
    scores = [ScoreChange(check=name, mean_a=a.checks[name].mean_score if name in a.checks else None,
                          mean_b=b.checks[name].mean_score if name in b.checks else None,
                          pass_rate_a=a.checks[name].pass_rate if name in a.checks else None,
                          pass_rate_b=b.checks[name].pass_rate if name in b.checks else None)
              for name in sorted(a.checks.keys() | b.checks.keys())]
    for change in scores:
        drop = change.delta
        if thresholds.max_score_drop is not None and drop is not None and -drop > thresholds.max_score_drop + 1e-12:
            regressions.append(f"mean {change.check} score fell from {change.mean_a:.3f} to {change.mean_b:.3f} "
                               f"(allowed drop: {thresholds.max_score_drop:g})")
    drops.sort(key=lambda d: (d.after - d.before, d.case))
    return Comparison(
        run_a=run_a, run_b=run_b, common_cases=len(common), only_in_a=len(cases_a.keys() - common),
        only_in_b=len(cases_b.keys() - common), newly_failing=newly_failing, fixed=fixed,
        pass_rate_delta=round(b.success_rate - a.success_rate, 6), latency_p95_delta=p95,
        cost_per_case_a=cost_a, cost_per_case_b=cost_b, scores=scores, score_drops=drops[:CHANGES_SHOWN],
        regressions=regressions,
    )


def _cost_per_case(run: RunSummary) -> float | None:
    s = run.statistics
    known = s.total_tasks - s.cost_unknown_tasks
    return s.total_cost / known if known > 0 else None


def print_comparison(console: Console, c: Comparison) -> None:
    a, b = c.run_a.statistics, c.run_b.statistics
    table = Table(title=f"{c.run_a.run_id} → {c.run_b.run_id}", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("", "A", "B", "change"):
        table.add_column(column, justify="left" if not column else "right")
    table.add_row("cases", str(a.total_tasks), str(b.total_tasks), f"{b.total_tasks - a.total_tasks:+d}")
    table.add_row("pass rate", f"{a.success_rate:.1%}", f"{b.success_rate:.1%}", f"{c.pass_rate_delta * 100:+.1f} pt")
    for name in ("latency_p50", "latency_p95", "latency_p99"):
        va, vb = getattr(a, name), getattr(b, name)
        change = "-" if va is None or vb is None else f"{vb - va:+.3f}" + (f" ({(vb - va) / va:+.0%})" if va else "")
        table.add_row(name.replace("latency_", "") + " s", number_text(va), number_text(vb), change)
    table.add_row("tokens", str(a.total_tokens), str(b.total_tokens), f"{b.total_tokens - a.total_tokens:+d}")
    ca, cb = c.cost_per_case_a, c.cost_per_case_b
    table.add_row("cost/case", number_text(ca, 6), number_text(cb, 6),
                  "-" if ca is None or cb is None else f"{cb - ca:+.6f}")
    for change in c.scores:
        delta = change.delta
        table.add_row(f"{change.check} score", number_text(change.mean_a), number_text(change.mean_b),
                      "-" if delta is None else f"{delta:+.3f}")
    console.print(table)
    if c.score_drops:
        console.print("[bold]largest score drops[/]:")
        for drop in c.score_drops:
            console.print(f"  {drop.check} {drop.before:.3f} → {drop.after:.3f}  {drop.case}", markup=False,
                          highlight=False)
    console.print(f"{c.common_cases} cases in both; {c.only_in_a} only in A, {c.only_in_b} only in B; "
                  f"{len(c.newly_failing)} newly failing, {len(c.fixed)} fixed", highlight=False)
    for title, changes in (("newly failing", c.newly_failing), ("fixed", c.fixed)):
        if changes:
            console.print(f"[bold]{title}[/]:")
            for change in changes[:CHANGES_SHOWN]:
                why = f": {change.error_message}" if change.error_message else ""
                console.print(f"  {change.before} → {change.after}  {change.case}{why}", markup=False,
                              highlight=False)
            if len(changes) > CHANGES_SHOWN:
                console.print(f"  ... and {len(changes) - CHANGES_SHOWN} more", highlight=False)
    if c.regressions:
        console.print("[red bold]regression:[/] " + "; ".join(c.regressions), highlight=False)
    else:
        console.print("[green]no regression[/] beyond the thresholds", highlight=False)

