"""What a Hydra user expects of the CLI (--cfg with required fields, errors with their cause, typos refused,
the same model= group everywhere, a saved config per run) and readable output (device and think-budget
messages, step progress, tables at 80 columns). In-process through `worldbagel.cli.main`."""

from __future__ import annotations

import json
import re

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from rich.console import Console
from standin_envs import GridStandIn
from table_text import missing_cells, render

from worldbagel.cli import main
from worldbagel.cli_compose import compose_config
from worldbagel.config import RolloutConfig
from worldbagel.rollout import run_rollouts


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


# ------------------------------------------------------------------------------------------ --cfg


@pytest.mark.parametrize(
    ("command", "missing"),
    [
        ("info", ["model_dir"]),
        ("finetune", ["model", "data", "out"]),
        ("train-vae", ["data", "out"]),
        ("collect", ["out"]),
        ("predict", ["video"]),
        ("reason", ["image", "question"]),
    ],
)
def test_cfg_shows_required_fields_as_missing(command, missing, capsys):
    assert main([command, "--cfg"]) == 0
    printed = capsys.readouterr().out
    for key in missing:
        assert re.search(rf"^\s*{key}: \?\?\?$", printed, re.M), printed


# ------------------------------------------------------------------------------------------ errors


def test_a_bad_value_says_why_with_the_full_key(capsys):
    assert main(["rollout", "episodes=abc"]) == 2
    printed = _flat(capsys.readouterr().out)
    assert "Value 'abc' of type 'str' could not be converted to Integer" in printed
    assert "full_key: episodes" in printed


@pytest.mark.parametrize("typo", ["+episdoes=1", "episdoes=1"])
def test_an_unknown_key_is_refused_with_the_known_keys(typo, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["rollout", typo, "policy=oracle", f"out={out}"]) == 2
    printed = _flat(capsys.readouterr().out)
    assert f"invalid {typo}" in printed and "did you mean `episodes`?" in printed
    assert "Known keys of `worldbagel rollout`: env, policy, episodes, seed" in printed
    assert not out.exists()


def test_an_unknown_nested_key_names_its_node(capsys):
    assert main(["rollout", "+env.kwarg=3"]) == 2
    printed = _flat(capsys.readouterr().out)
    assert "`env` has no key `kwarg` (env.kwarg); did you mean `env.kwargs`?" in printed
    assert "Known keys of `env`: name, id, kwargs, fps" in printed
    assert main(["info", "model=gridworld", "/tmp"]) == 2
    assert "`worldbagel info` has no `model` group" in _flat(capsys.readouterr().out)


@pytest.mark.parametrize(
    "command", ["info", "rollout", "collect", "generate", "finetune", "train-vae", "eval"]
)
def test_every_key_of_a_composed_config_passes_the_key_check(command):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from worldbagel.cli_compose import compose, config_groups, hydra_session
    from worldbagel.config import SCHEMAS
    from worldbagel.config_check import check_override_keys

    with hydra_session():
        raw = compose(command, [], for_display=True)
    keys = []

    def walk(node, prefix):
        for key in node:
            value = node._get_node(key)
            if OmegaConf.is_dict(value) and not value._is_none() and not value._is_missing():
                walk(value, f"{prefix}{key}.")
            keys.append(f"{prefix}{key}")

    walk(raw, "")
    assert len(keys) > 5
    parsed = OverridesParser.create().parse_overrides([f"{k}=1" for k in keys])
    check_override_keys(command, SCHEMAS[command], parsed, config_groups())  # raises on a refused key


def test_free_form_dicts_still_take_new_keys(capsys):
    assert main(["rollout", "+env.kwargs.max_steps_extra=7", "+policy.kwargs.seed_offset=2", "--cfg"]) == 0
    printed = capsys.readouterr().out
    assert "max_steps_extra: 7" in printed and "seed_offset: 2" in printed


# ------------------------------------------------------------------------------------------ model= everywhere


def test_collect_takes_the_model_group_like_rollout(tiny_dir, tmp_path, capsys):
    _, cfg = compose_config("collect", ["model=tiny", f"model.path={tiny_dir}", "sampler=fast", "out=x"])
    assert cfg.model.path == str(tiny_dir) and cfg.sampler.num_steps == 8
    base = ["collect", "episodes=1", "max_steps=1", "env.kwargs.size=5"]
    # the model reaches the world-model policy: a missing folder is its error
    assert (
        main([*base, "policy=reasoning", "model=tiny", "model.path=/nonexistent", f"out={tmp_path / 'a'}"])
        == 1
    )
    assert "model folder /nonexistent does not exist" in _flat(capsys.readouterr().out)
    assert (
        main([*base, "policy=reasoning", "model=tiny", f"model.path={tiny_dir}", f"out={tmp_path / 'b'}"])
        == 0
    )
    assert (tmp_path / "b" / "ep-000000").is_dir()
    assert main([*base, "policy=oracle", "model=gridworld", f"out={tmp_path / 'c'}"]) == 1
    assert "policy=oracle does not use a world model" in _flat(capsys.readouterr().out)


@pytest.mark.parametrize(
    "command", ["rollout", "collect", "generate", "predict", "reason", "imagine", "eval"]
)
def test_every_model_command_takes_the_model_and_sampler_groups(command):
    required = {"collect": ["out=x"], "predict": ["video=x"], "reason": ["image=x", "question=q"]}
    _, cfg = compose_config(command, ["model=scratch-tiny", "sampler=release", *required.get(command, [])])
    assert cfg.model.name == "scratch-tiny" and cfg.sampler.num_steps == 50


# ------------------------------------------------------------------------------------------ saved config


@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("rollout", ["policy=oracle", "episodes=1", "video=false", "gif=false"]),
        ("collect", ["episodes=1", "env.kwargs.size=5"]),
        ("imagine", ["actions=[move right]", "gif=false", "mp4=false"]),
        ("predict", ["frames=1", "gif=false", "mp4=false"]),
    ],
)
def test_every_run_folder_holds_its_resolved_config(command, args, tmp_path, frame):
    if command == "predict":
        Image.fromarray(frame).save(tmp_path / "clip.png")
        args = [*args, f"video={tmp_path / 'clip.png'}"]
    out = tmp_path / "run"
    assert main([command, *args, f"out={out}"]) == 0
    given = OmegaConf.load(out / "overrides.yaml")
    assert given.command == command and list(given.overrides) == [*args, f"out={out}"]
    saved = OmegaConf.load(out / "config.yaml")
    _, cfg = compose_config(command, [*args, f"out={out}"])
    assert saved == OmegaConf.structured(cfg)  # every field, defaults included


def test_rollout_config_yaml_says_the_default_folder_it_wrote(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["rollout", "policy=oracle", "episodes=1", "video=false", "gif=false"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    saved = OmegaConf.merge(OmegaConf.structured(RolloutConfig), OmegaConf.load(run / "config.yaml"))
    assert (
        saved.out == str(run.relative_to(tmp_path)) and saved.policy.name == "oracle" and saved.episodes == 1
    )


def test_run_rollouts_creates_no_folder_when_its_first_env_fails(tmp_path):
    from worldbagel.errors import WorldBagelError

    def broken():
        raise TypeError("unexpected keyword argument 'sise'")

    with pytest.raises(WorldBagelError, match="could not build the env"):
        run_rollouts(broken, lambda env: None, episodes=1, out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["rollout", "collect"])
def test_a_failed_start_leaves_no_run_folder(command, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([command, "env.id=Nope-v9", f"out={out}"]) == 1
    assert "env.id" in capsys.readouterr().out
    assert not out.exists()


# ------------------------------------------------------------------------------------------ messages


def test_generate_on_a_machine_without_cuda_names_model_device_cpu(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # what a CPU-only machine reports
    args = [
        "generate",
        f"model.path={tiny_dir}",
        "prompt=hi",
        f"out={tmp_path / 'x.png'}",
    ]  # bagel-7b: cuda:0
    assert main(args) == 1
    printed = _flat(capsys.readouterr().out)
    assert "invalid model.device='cuda:0'" in printed and "use model.device=cpu" in printed
    assert not (tmp_path / "x.png").exists()


def test_reason_warns_when_think_mode_runs_out_of_tokens(tmp_path, capsys):
    from worldbagel.envs.gridworld import GridWorldEnv

    obs, _ = GridWorldEnv().reset(seed=0)
    Image.fromarray(obs).save(tmp_path / "obs.png")
    args = ["reason", f"image={tmp_path / 'obs.png'}", "question=Which move next?", "think=true"]
    assert main([*args, "max_new_tokens=6", f"out={tmp_path / 'a.txt'}"]) == 0
    printed = _flat(capsys.readouterr().out)
    assert "think mode used all 6 tokens (max_new_tokens=6) before </think>: the answer is empty" in printed
    assert "Raise the budget, e.g. max_new_tokens=512" in printed
    assert "</think>" not in (tmp_path / "a.txt").read_text()  # the unfinished thought is not an answer


def test_generate_text_warns_when_think_mode_runs_out_of_tokens(tiny_dir, tmp_path, capsys):
    args = ["generate", "model=tiny", f"model.path={tiny_dir}", "output=text", "think=true", "prompt=where?"]
    assert main([*args, "max_new_tokens=3", f"out={tmp_path / 'a.txt'}"]) == 0
    printed = _flat(capsys.readouterr().out)  # random weights never close </think> in 3 tokens
    assert "warning: think mode" in printed and "(max_new_tokens=3) before </think>" in printed


def test_think_budget_warning():
    from worldbagel.think_text import think_budget_warning

    assert think_budget_warning("<think> walk </think> move up", 9, 128, "max_new_tokens") is None
    assert think_budget_warning("<think> walk </think>", 9, 128, "k", answer=False) is None
    cut = think_budget_warning("<think> walk and walk", 128, 128, "max_new_tokens")
    assert cut.startswith("think mode used all 128 tokens (max_new_tokens=128) before </think>")
    early = think_budget_warning("<think> walk </think>", 20, 128, "max_new_tokens")
    assert "stopped after 20 of 128 tokens" in early and "right after </think>" in early


def test_rollout_reports_steps_within_an_episode(tmp_path):
    seen = []
    result = run_rollouts(
        lambda: GridStandIn(size=5),
        lambda env: __import__("worldbagel.policies", fromlist=["RandomPolicy"]).RandomPolicy(
            env.action_space
        ),
        episodes=2,
        max_steps=4,
        on_step=lambda episode, steps, limit: seen.append((episode, steps, limit)),
    )
    lengths = [e.length for e in result.episodes]
    assert seen == [(e, s, 4) for e, n in enumerate(lengths) for s in range(1, n + 1)]


def test_rollout_cli_shows_a_step_bar(tmp_path):
    from worldbagel.commands import rollout

    _, cfg = compose_config("rollout", ["policy=random", "episodes=1", "video=false", "gif=false"])
    cfg.out = str(tmp_path / "run")
    console = Console(force_terminal=True, width=100, record=True)
    assert rollout.run(cfg, console) == 0
    length = json.loads((tmp_path / "run" / "metrics.json").read_text())["episodes"][0]["length"]
    # the last refresh of the bar: steps taken of the env's limit (GridWorld: 64)
    assert re.findall(r"episode 0 step\W+(\d+)/(\d+)", console.export_text())[-1] == (str(length), "64")


# ------------------------------------------------------------------------------------------ 80 columns


def test_command_tables_keep_every_cell_at_80_columns(tiny_dir):
    from worldbagel.commands.imagine import _table
    from worldbagel.commands.rollout import results_table
    from worldbagel.rollout import EpisodeResult, RolloutResult

    eps = [
        EpisodeResult(
            0, 123456, length=640, ret=-12.375, success=True, spl=0.8125, video="e.mp4", gif="e.gif"
        )
    ]
    eps.append(EpisodeResult(1, 123457, status="failed", error="boom"))
    text = render(results_table(RolloutResult(eps, 123456, 2), "WorldBagel/MiniWorld-Maze-v0 x planner"))
    assert missing_cells(text, ["123457", "failed", "640", "-12.375", "0.812", "mp4 gif", "1/2 ok"]) == []
    rows = [
        {
            "step": 12,
            "action": "turn left 30 degrees",
            "psnr": 31.25,
            "ssim": 0.9876,
            "imagined_reward": -0.01,
        }
    ]
    text = render(_table([dict(rows[0], state_match=False)], with_state=True))
    assert (
        missing_cells(text, ["turn left 30 degrees", "31.25", "0.988", "-0.01", "no", "imagined reward"])
        == []
    )


def test_info_and_collect_tables_keep_every_cell_at_80_columns(tiny_dir, tmp_path, capsys):
    assert main(["info", str(tiny_dir)]) == 0  # capsys: an 80-column console
    text = capsys.readouterr().out
    assert (
        missing_cells(text, ["latent patch / max latent side", "2 / 64", "F32 (1.04 M)", "1,036,480"]) == []
    )
    assert main(["collect", "episodes=1", "env.kwargs.size=5", f"out={tmp_path / 'd'}"]) == 0
    text = capsys.readouterr().out
    assert missing_cells(text, ["already present (skipped)", "success rate (written)", "1.00"]) == []
