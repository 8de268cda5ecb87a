"""``run --dry-run`` / ``submit --dry-run``: the cases a plan would run, with their resolved
expectations (row templates filled in), and nothing published."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

from ..config.manifest import RunManifest

SHOWN = 160


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= SHOWN else text[: SHOWN - 3] + "..."


def print_dry_run(console: Console, manifest: RunManifest) -> int:
    """One block per case: its id, inputs and expectations. Returns the exit code (0)."""
    for task in manifest.cases:
        console.print(task.task_id, markup=False, highlight=False)
        console.print(f"  inputs: {_short(task.parameters)}", markup=False, highlight=False)
        if task.query is not None or task.files:
            console.print(f"  query: {_short(task.query)}" + (f" files: {_short(task.files)}" if task.files else ""),
                          markup=False, highlight=False)
        for index, turn in enumerate(task.turns or [], 1):
            expect = turn.expect.model_dump(mode="json", exclude_defaults=True) if turn.expect else None
            text = f"  turn {index}: {_short(turn.query)}" + (f" inputs: {_short(turn.inputs)}" if turn.inputs else "")
            text += (f" files: {_short(turn.files)}" if turn.files else "") + (f" expect: {_short(expect)}"
                                                                               if expect else "")
            console.print(text, markup=False, highlight=False)
        if task.expect is not None:
            expect = task.expect.model_dump(mode="json", exclude_defaults=True)
            console.print(f"  expect: {_short(expect or {'status': 'succeeded'})}", markup=False, highlight=False)
    datasets = sorted({t.dataset for t in manifest.cases})
    console.print(f"dry run: {len(manifest.cases)} case(s) of plan {manifest.plan_name!r} in {len(datasets)} "
                  f"dataset(s) ({', '.join(datasets)}); nothing was published", highlight=False)
    return 0
