"""`worldbagel <command> -m ...`: Hydra sweep syntax, one output per job, a summary table (in-process CLI)."""

from __future__ import annotations

import json
import re

from omegaconf import OmegaConf
from table_text import missing_cells, render

from worldbagel.cli import main

FAST = ["episodes=1", "max_steps=3", "video=false", "gif=false"]


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_multirun_runs_the_cartesian_product_one_folder_per_job(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["rollout", "-m", "policy=oracle,random", "seed=range(0,2)", *FAST, f"out={out}"]) == 0
    printed = capsys.readouterr().out
    jobs = OmegaConf.load(out / "multirun.yaml").jobs
    expected = [("oracle", 0), ("oracle", 1), ("random", 0), ("random", 1)]
    assert [(j.num, j.status, j.out) for j in jobs] == [(i, "ok", str(out / str(i))) for i in range(4)]
    for i, (policy, seed) in enumerate(expected):
        metrics = json.loads((out / str(i) / "metrics.json").read_text())
        assert (metrics["policy"], metrics["seed"]) == (policy, seed)
        saved = OmegaConf.load(out / str(i) / "config.yaml")
        assert (saved.policy.name, saved.seed, saved.out) == (policy, seed, str(out / str(i)))
    assert jobs[0].headline.success == 1.0 and jobs[0].headline.SPL == 1.0  # the oracle's shortest paths
    summary = _flat(printed[printed.index("--multirun: 4/4 ok") :])
    for i, (policy, seed) in enumerate(expected):  # job, swept values (one per line), status, output
        assert f"│ {i} │ policy={policy} │ ok │ {i} │" in summary and f"seed={seed}" in summary, summary


def test_multirun_without_out_uses_one_default_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["rollout", "--multirun", "policy=oracle", "episodes=1,2", "video=false", "gif=false"]) == 0
    (sweep,) = (tmp_path / "runs").iterdir()
    assert sweep.name.startswith("rollout-")
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]
    assert [len(json.loads((sweep / n / "metrics.json").read_text())["episodes"]) for n in "01"] == [1, 2]


def test_multirun_cfg_expands_glob_over_a_group(capsys):
    assert main(["rollout", "-m", "--cfg", "policy=glob(*,exclude=[planner,reasoning])", "seed=3"]) == 0
    printed = capsys.readouterr().out
    assert re.findall(r"# job (\d): policy=(\w+)", printed) == [
        ("0", "oracle"),
        ("1", "random"),
        ("2", "scripted"),
    ]
    assert printed.count("seed: 3") == 3


def test_multirun_gives_a_user_out_folder_one_subfolder_per_job(tmp_path):
    out = tmp_path / "data"
    args = [
        "collect",
        "-m",
        "seed=0,10",
        "episodes=1",
        f"out={out}",
        "env.kwargs.size=5",
        "env.kwargs.obs_size=40",
    ]
    assert main(args) == 0
    seeds = [json.loads((out / n / "index.json").read_text())["episodes"][0]["seed"] for n in "01"]
    assert seeds == [0, 10]
    figures = [dict(job.headline) for job in OmegaConf.load(out / "multirun.yaml").jobs]
    lengths = [json.loads((out / n / "index.json").read_text())["episodes"][0]["length"] for n in "01"]
    assert figures == [{"episodes": 1, "steps": n, "success": 1.0} for n in lengths]


def test_multirun_of_a_file_output_writes_one_file_per_job(tiny_dir, tmp_path):
    args = ["generate", "-m", "model=tiny", f"model.path={tiny_dir}", "sampler=fast", "sampler.num_steps=2"]
    assert main([*args, "prompt=move up,move down", f"out={tmp_path / 'img.png'}"]) == 0
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.png")) == ["0/img.png", "1/img.png"]
    assert not (tmp_path / "img.png").exists()


def test_a_failing_job_is_reported_and_the_sweep_goes_on(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert (
        main(
            ["rollout", "-m", "env.id=Nope-v9,WorldBagel/GridWorld-v0", "policy=oracle", *FAST, f"out={out}"]
        )
        == 1
    )
    printed = _flat(capsys.readouterr().out)
    assert (
        "--multirun: 1/2 ok" in printed
        and "exit 1" in printed
        and "job 0: invalid env.id='Nope-v9'" in printed
    )
    assert not (out / "0").exists() and (out / "1" / "metrics.json").is_file()
    assert [j.status for j in OmegaConf.load(out / "multirun.yaml").jobs] == ["failed", "ok"]


def test_a_bad_value_in_any_job_stops_the_sweep_before_the_first_job(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["rollout", "-m", "episodes=1,abc", "policy=oracle", f"out={out}"]) == 2
    printed = _flat(capsys.readouterr().out)
    assert "(job 1: episodes=abc)" in printed and "could not be converted to Integer" in printed
    assert not out.exists()


def test_sweep_syntax_without_multirun_says_to_add_it(capsys):
    assert main(["rollout", "episodes=1,2"]) == 2
    assert "--multirun" in capsys.readouterr().out


def test_summary_table_keeps_every_cell_at_80_columns():
    from worldbagel.cli_multirun import summary_table
    from worldbagel.sweep import Job, Sweep

    swept = {
        "policy": "reasoning",
        "model.path": "/checkpoints/worldbagel/gridworld-finetune-00042",
        "sampler.num_steps": "8",
    }
    jobs = [
        Job(i, [], dict(swept, seed=str(i)), out=f"/runs/rollout-20250101-000000/{i}", status=s, rc=rc)
        for i, (s, rc) in enumerate([("ok", 0), ("failed", 1)])
    ]
    jobs[0].headline = {"success": 0.95, "SPL": 0.871}
    sweep = Sweep("rollout", [], jobs, [*swept, "seed"])
    from pathlib import Path

    sweep.folder = Path("/runs/rollout-20250101-000000")
    text = render(summary_table(sweep), width=80)
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text
    cells = [*(f"{k}={v}" for k, v in swept.items()), "seed=1", "exit 1", "0.950", "0.871", "success", "SPL"]
    assert missing_cells(text, cells) == [], text
