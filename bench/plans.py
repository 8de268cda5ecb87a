"""Plans written for a benchmark: N cases from a generated JSONL file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


def write_plan(directory: Path, name: str, cases: int, workflow: dict[str, Any], execution: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / f"{name}.jsonl"
    with data.open("w") as out:
        for i in range(cases):
            out.write(json.dumps({"id": f"c{i}", "query": f"question {i}"}) + "\n")
    plan = {
        "name": name,
        "workflows": [{"id": "wf", **workflow}],
        "datasets": [{"name": "ds", "file": data.name, "id_column": "id"}],
        "execution": execution,
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path
