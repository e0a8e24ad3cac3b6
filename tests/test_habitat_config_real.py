"""HabitatNavEnv's overrides against habitat-lab's OWN config code (no habitat-sim needed).

habitat-lab is pip-installed with `--no-deps --target .cache/habitat-lab/<version>` (git-ignored) on
first use, so its numpy / gym pins never touch the project's environment. Only its config package
runs: `habitat/__init__.py` imports the simulator side (numpy-quaternion, numba, gym, then
habitat-sim's magnum), so the probe registers a bare `habitat` package object whose `__path__` is
the installed folder (its `__init__.py` never runs) and imports `habitat.config` from it; that
package needs only hydra-core and omegaconf. The probe runs in a subprocess because habitat-lab
registers a Hydra search-path plugin and config-store entries that would leak into worldbagel's own
config composition in this process.

In the probe, `habitat.get_config` is habitat-lab's real one; `habitat.Env` (which needs habitat-sim)
is the one stand-in: it records the config the adapter built and offers one episode.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import fake_habitat
import pytest
from omegaconf import OmegaConf

from worldbagel.envs.habitat_env import HABITAT_LAB_REQUIREMENT

ROOT = Path(__file__).resolve().parents[1]
HABITAT_LAB_VERSION = HABITAT_LAB_REQUIREMENT.split("==")[1]
"""The habitat-lab build the adapter names and pyproject's `habitat` extra pins (checked below)."""
CACHE = ROOT / ".cache" / "habitat-lab" / HABITAT_LAB_VERSION
POINTNAV = "benchmark/nav/pointnav/pointnav_habitat_test.yaml"
_NETWORK_ERRORS = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "ConnectTimeout",
    "ReadTimeout",
    "ProxyError",
    "Max retries exceeded",
)

PROBE = textwrap.dedent(
    """
    import json, sys, types
    from types import SimpleNamespace

    target, cases = sys.argv[1], json.loads(sys.argv[2])
    package = types.ModuleType("habitat")  # habitat/__init__.py is never run (it imports habitat-sim)
    package.__path__ = [target + "/habitat"]
    sys.modules["habitat"] = package
    import habitat.config  # habitat-lab's real config package: hydra + omegaconf only

    heavy = [m for m in ("habitat_sim", "magnum", "quaternion", "numba", "gym") if m in sys.modules]
    assert not heavy, f"habitat.config pulled in {heavy}"

    class RecordingEnv:  # stand-in for habitat.Env, which needs habitat-sim
        def __init__(self, config):
            self.config = config
            self.episodes = [SimpleNamespace(episode_id="0")]

    package.get_config = habitat.config.get_config
    package.Env = RecordingEnv
    from omegaconf import OmegaConf
    from worldbagel.envs.habitat_env import HabitatNavEnv

    def compose(case):
        if "env" in case:
            env = HabitatNavEnv(**case["env"])
            return env.config, env.overrides
        return habitat.config.get_config(case["config_path"], case["overrides"]), None

    out = []
    for case in cases:
        try:
            config, overrides = compose(case)
            values = {k: OmegaConf.select(config, k) for k in case["keys"]}
            out.append({"ok": True, "values": values, "overrides": overrides})
        except Exception as exc:
            cause = exc.__cause__
            out.append({"ok": False, "error": type(exc).__name__, "message": str(exc),
                        "cause": type(cause).__name__ if cause is not None else None})
    print("PROBE" + json.dumps(out))
    """
)


def _pip_install(target: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-input",
            "--disable-pip-version-check",
            "--retries",
            "1",
            "--timeout",
            "60",
            "--target",
            str(target),
            f"habitat-lab=={HABITAT_LAB_VERSION}",
        ],
        capture_output=True,
        text=True,
    )


@pytest.fixture(scope="session")
def habitat_lab() -> Path:
    """The habitat-lab install folder: installed into .cache/ on first use, reused afterwards."""
    if (CACHE / "habitat" / "config" / "default.py").is_file():
        return CACHE
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    staging = CACHE.parent / f".staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    done = _pip_install(staging)
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        log = done.stdout + done.stderr
        if any(marker in log for marker in _NETWORK_ERRORS):
            pytest.skip(f"pip cannot reach the package registry to install habitat-lab: {log[-400:]}")
        pytest.fail(f"pip install habitat-lab=={HABITAT_LAB_VERSION} failed:\n{log[-2000:]}")
    try:
        os.replace(staging, CACHE)  # whole folder at once: a half-finished install is never reused
    except OSError:  # another session installed it meanwhile
        shutil.rmtree(staging, ignore_errors=True)
    return CACHE


def _probe(habitat_lab: Path, cases: list[dict]) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(habitat_lab), json.dumps(cases)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("PROBE")]
    assert done.returncode == 0 and lines, f"probe failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return json.loads(lines[-1][len("PROBE") :])


SENSORS = "habitat.simulator.agents.main_agent.sim_sensors"
KEYS = [
    "habitat.dataset.data_path",
    "habitat.dataset.scenes_dir",
    "habitat.dataset.split",
    "habitat.simulator.turn_angle",
    "habitat.simulator.forward_step_size",
    "habitat.environment.max_episode_steps",
    "habitat.task.measurements.success.success_distance",
    f"{SENSORS}.rgb_sensor.width",
    f"{SENSORS}.depth_sensor.height",
    "habitat.task.measurements.soft_spl.type",
]


def test_pyproject_pins_the_tested_habitat_lab():
    text = (ROOT / "pyproject.toml").read_text()
    extra = re.search(r"^habitat = \[(.*)\]$", text, re.M)
    assert extra, "pyproject.toml has no `habitat = [...]` extra"
    assert f'"{HABITAT_LAB_REQUIREMENT}"' in extra.group(1)


def test_adapter_config_composes_with_real_habitat_lab(habitat_lab):
    data_path = "data/datasets/pointnav/habitat-test-scenes/v1/{split}/{split}.json.gz"
    awkward = "data/my runs/it's, a=b:[c]/${HOME}/\\${x}/{split}.json.gz\\"
    cases = [
        {
            "env": {
                "data_path": data_path,
                "scenes_dir": "data/scene_datasets",
                "split": "val",
                "obs_size": 48,
                "depth": True,
                "turn_angle": 45.0,  # a whole float, as yaml or a CLI override may give it
                "forward_step": 0.5,
                "success_distance": 0.3,
                "max_steps": 7,
            },
            "keys": KEYS,
        },
        {
            "env": {"task": "imagenav", "data_path": awkward, "scenes_dir": "a b/${x}", "split": "1"},
            "keys": KEYS,
        },
        {"env": {"overrides": ["habitat.simulator.forward_step_size=0.4"]}, "keys": KEYS},
        {"env": {"overrides": ["habitat.simulator.turn_angle=22.5"]}, "keys": KEYS},
    ]
    full, imagenav, user_wins, refused = _probe(habitat_lab, cases)
    assert full["ok"], f"habitat-lab refused the adapter's overrides: {full}"
    assert full["values"] == {
        "habitat.dataset.data_path": data_path,
        "habitat.dataset.scenes_dir": "data/scene_datasets",
        "habitat.dataset.split": "val",
        "habitat.simulator.turn_angle": 45,
        "habitat.simulator.forward_step_size": 0.5,
        "habitat.environment.max_episode_steps": 7,
        "habitat.task.measurements.success.success_distance": 0.3,
        f"{SENSORS}.rgb_sensor.width": 48,
        f"{SENSORS}.depth_sensor.height": 48,
        "habitat.task.measurements.soft_spl.type": "SoftSPL",
    }
    assert type(full["values"]["habitat.simulator.turn_angle"]) is int
    assert any(o.startswith("+habitat/task/measurements@") for o in full["overrides"]), "soft-SPL was added"
    assert imagenav["ok"], f"habitat-lab refused the adapter's overrides: {imagenav}"
    assert imagenav["values"]["habitat.dataset.data_path"] == awkward, "paths arrive verbatim"
    assert imagenav["values"]["habitat.dataset.scenes_dir"] == "a b/${x}"
    assert imagenav["values"]["habitat.dataset.split"] == "1"
    assert user_wins["ok"] and user_wins["values"]["habitat.simulator.forward_step_size"] == 0.4
    assert not refused["ok"] and refused["error"] == "ConfigError", refused
    assert "habitat.simulator.turn_angle=22.5" in refused["message"]
    assert "could not be converted to Integer" in refused["message"]


AGREEMENT_CASES = [
    ["habitat.simulator.turn_angle=30"],
    ["habitat.simulator.turn_angle=22.5"],
    ["habitat.simulator.turn_angle=30.0"],
    ["habitat.simulator.turn_angle='30'"],
    ["habitat.simulator.turn_angle=abc"],
    ["habitat.simulator.turn_angle=null"],
    ["habitat.simulator.forward_step_size=1"],
    ["habitat.environment.max_episode_steps=true"],
    [f"{SENSORS}.rgb_sensor.width=64.0"],
    ["habitat.dataset.data_path=data/{split}/{split}.json.gz"],
    ["habitat.dataset.data_path='data/{split}/{split}.json.gz'"],
    ["habitat.dataset.split=1"],
    ["habitat.nokey=1"],
    ["habitat.task.measurements.spl.success_distance=1.0"],
    ["+habitat/task/measurements@habitat.task.measurements.soft_spl=soft_spl"],
    ["+habitat/task/measurements@habitat.task.measurements.soft_spl=soft_spl"] * 2,
    ["+habitat/task/measurements@habitat.task.measurements.nope=nope"],
]


def test_fake_habitat_accepts_and_refuses_what_habitat_lab_does(habitat_lab):
    keys = KEYS[:7]
    real = _probe(
        habitat_lab, [{"config_path": POINTNAV, "overrides": o, "keys": keys} for o in AGREEMENT_CASES]
    )
    for overrides, want in zip(AGREEMENT_CASES, real):
        try:
            cfg = fake_habitat.get_config(POINTNAV, overrides)
        except Exception as exc:
            got = {"ok": False, "error": type(exc).__name__}
        else:
            got = {"ok": True, "values": {k: OmegaConf.select(cfg, k) for k in keys}}
        assert got["ok"] == want["ok"], f"{overrides}: fake {got}, habitat-lab {want}"
        if want["ok"]:
            assert got["values"] == want["values"], overrides
        else:
            assert got["error"] == want["error"], f"{overrides}: fake {got}, habitat-lab {want}"
