"""Packaging: the installed layout and that every module imports."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import subprocess
import sys

import worldbagel


def test_envs_policies_configs_live_inside_worldbagel():
    for name in ("worldbagel.envs", "worldbagel.policies", "worldbagel.configs"):
        assert importlib.util.find_spec(name) is not None, name


def test_no_top_level_envs_outside_the_repo(tmp_path):
    # Run from a folder outside the repo so the repo root is not on sys.path.
    code = (
        "import importlib.util as u; import sys;"
        "print(u.find_spec('envs') is None, u.find_spec('policies') is None, u.find_spec('configs') is None)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "True True True"


def test_every_module_imports():
    failed = {}
    names = []
    # envs/, policies/ and configs/ are mapped into worldbagel by package-dir, so an editable install
    # does not list them under worldbagel.__path__: walk each root explicitly.
    roots = [worldbagel] + [
        importlib.import_module(f"worldbagel.{n}") for n in ("envs", "policies", "configs")
    ]
    for root in roots:
        names.append(root.__name__)
        for info in pkgutil.walk_packages(root.__path__, prefix=root.__name__ + "."):
            names.append(info.name)
            try:
                importlib.import_module(info.name)
            except Exception as exc:  # pragma: no cover - reported below
                failed[info.name] = repr(exc)
    assert not failed, failed
    assert "worldbagel.cli" in names and "worldbagel.envs" in names
