"""scripts/gpu_check.py, run as a command: its CPU rehearsal (`--smoke`) runs every section and writes one JSON;
a failing or overrunning section is recorded and the others still run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
SECTIONS = ["environment", "flex_attention", "bf16_parity", "bench_scale", "lora_step", "gpu_tests"]
"""The sections the check promises, in order (the script's docstring)."""


def test_smoke_runs_every_section_into_one_json(tmp_path):
    rc, report = _run(tmp_path, "--inline")
    assert rc == 0 and report["complete"] and report["ok"] and report["smoke"]
    sections = report["sections"]
    assert list(sections) == SECTIONS
    failed = {k: v.get("error") for k, v in sections.items() if not v["ok"]}
    assert not failed, failed
    assert all(s["seconds"] > 0 and s["budget_s"] > 0 for s in sections.values())
    assert sum(s["budget_s"] for s in sections.values()) <= 8 * 60  # gpu_check.sh stops everything at 8 min
    flex = sections["flex_attention"]["result"]
    assert flex["float32"]["forward_rel"] < 1e-5 and 0 < flex["bfloat16"]["forward_rel"] < 2e-2
    parity = sections["bf16_parity"]["result"]
    assert 0 < parity["latents_rel"] < 0.05 and 0 < parity["logits_rel"] < 0.05
    row = sections["bench_scale"]["result"]["rows"][0]
    assert (
        row["seconds_per_frame"] > 0
        and row["seconds_per_frame_unbatched"] > 0
        and row["text_tokens_per_s"] > 0
    )
    lora = sections["lora_step"]["result"]
    assert lora["step_s"] > 0 and lora["tokens"] > 0 and lora["plan_parts_gib"]["activations"] > 0
    tests = sections["gpu_tests"]["result"]
    assert tests["tests"] >= 2 and tests["skipped"] == tests["tests"] and not tests["failed"]  # no CUDA here


def _run(tmp_path, *argv: str) -> tuple[int, dict]:
    out = tmp_path / "check.json"
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--out", str(out), *argv]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return run.returncode, json.loads(out.read_text())


def test_a_failing_or_overrunning_section_is_recorded(tmp_path):
    rc, report = _run(tmp_path, "--sections", "environment,flex_attention", "--fail", "flex_attention")
    env, flex = report["sections"]["environment"], report["sections"]["flex_attention"]
    assert rc == 1 and report["complete"] and not report["ok"]
    assert env["ok"] and env["result"]["torch"]  # ran in its own process, before the failure
    assert not flex["ok"] and "injected failure" in flex["error"] and "Traceback" in flex["traceback"]
    rc, report = _run(tmp_path, "--sections", "environment", "--budget-scale", "0.005")
    env = report["sections"]["environment"]
    assert rc == 1 and not env["ok"] and env["error"] == "timed out after 0 s"
