"""The wheel carries every package: setuptools installs only the packages pyproject lists
(the editable install finds the rest, so only an image or a wheel would show the gap)."""

from __future__ import annotations

import tomllib

from .conftest import REPO


def test_every_python_package_is_listed_in_pyproject() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    roots = {"dify_runner": REPO / "dify_runner", **{name: REPO / path for name, path in config["package-dir"].items()}}
    found = set()
    for name, root in roots.items():
        for init in root.rglob("__init__.py"):
            relative = init.parent.relative_to(root).parts
            found.add(".".join((name, *relative)))
    assert found - listed == set(), "packages missing from [tool.setuptools] packages in pyproject.toml"
