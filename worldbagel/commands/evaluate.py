"""`worldbagel eval`: evaluate a world model; metrics.json, tables, horizon plots and a contact sheet.

Tasks (docs/metrics.md, "worldbagel eval"):
    frames       the NWM frame-prediction protocol (worldbagel.eval.protocol) with copy-last-frame and
                 copy-previous-frame baselines; PSNR is dataset-level (PSNR of the mean MSE)
    controllability  next frame under every action vs the env's true frames (worldbagel.eval.controllability)
    lookback     turn left k times and back, open loop, with the model's window and with one frame of history
    navigation   closed-loop episodes of a policy (default the world-model planner) in the env group
    trajectory   open-loop planning to goal frames on continuous-action data: ATE / RPE
    text         exact match on the dataset's Q&A annotations

metrics.json is rewritten after every task, so a later failure keeps the finished sections.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from worldbagel.code_version import code_version
from worldbagel.config import EvalConfig
from worldbagel.errors import bad_argument
from worldbagel.eval.contact_sheet import contact_sheet
from worldbagel.eval.controllability_eval import evaluate_controllability
from worldbagel.eval.env_replay import EnvReplay
from worldbagel.eval.heldout import has_continuous_actions, load_heldout
from worldbagel.eval.horizon_plot import plot_metric_vs_horizon
from worldbagel.eval.horizons import COPY_LAST_FRAME
from worldbagel.eval.lookback_eval import evaluate_lookback
from worldbagel.eval.options import TASKS
from worldbagel.eval.planning import (
    check_baselines,
    evaluate_navigation,
    evaluate_trajectory_planning,
    navigation_baselines,
)
from worldbagel.eval.protocol import MODEL_MODES, evaluate_frame_prediction
from worldbagel.eval.qa_eval import collect_questions, evaluate_text
from worldbagel.eval.report import metrics_document, report_tables, write_metrics_json
from worldbagel.perceptual_metrics import load_perceptual
from worldbagel.run_folder import default_run_dir, run_folder
from worldbagel.tracking import open_tracker, require_backend
from worldbagel.world_model_loader import load_pipeline, load_world_model

logger = logging.getLogger(__name__)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]eval[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def resolve_tasks(cfg: EvalConfig, episodes: list | None) -> tuple[list[str], dict[str, str]]:
    """(tasks to run, {task: why it is skipped}) from cfg.tasks (None = every task the data supports)."""
    if cfg.tasks is not None:
        bad = [t for t in cfg.tasks if t not in TASKS]
        if bad or not cfg.tasks:
            raise bad_argument("tasks", cfg.tasks, f"use one or more of {list(TASKS)}")
        return list(dict.fromkeys(cfg.tasks)), {}
    tasks, skipped = ["frames"], {}
    replay = EnvReplay()
    if episodes and any(replay.why_not(ep) is None for ep in episodes):
        tasks += ["controllability", "lookback"]
    else:
        why = replay.why_not(episodes[0]) if episodes else "no episodes"
        for name in ("controllability", "lookback"):
            skipped[name] = f"the episodes do not replay in their env ({why})"
    if cfg.dataset.format == "env":
        tasks.append("navigation")
    else:
        skipped["navigation"] = (
            "dataset is not recorded from the env group (add tasks=[...,navigation] to run it)"
        )
    if episodes and any(has_continuous_actions(ep) for ep in episodes):
        tasks.append("trajectory")
    else:
        skipped["trajectory"] = "no continuous (dx, dy, dyaw) actions in the dataset"
    if episodes and collect_questions(episodes):
        tasks.append("text")
    else:
        skipped["text"] = "no Q&A annotations in the dataset"
    return tasks, skipped


def _env_kwargs(cfg: EvalConfig) -> dict[str, Any]:
    kwargs = dict(cfg.env.kwargs)
    if cfg.env_split is not None and "split" in kwargs:
        kwargs["split"] = cfg.env_split
    return kwargs


def _printable(section: Any) -> Any:
    """A section without lists of records (per-trajectory results, examples) for the scalar tables."""
    if isinstance(section, dict):
        return {
            k: _printable(v)
            for k, v in section.items()
            if not (isinstance(v, list) and v and isinstance(v[0], dict))
        }
    return section


SYMBOLIC_SHOWN = ("n", "accuracy", "undecodable_rate")


def printable_document(doc: dict) -> dict:
    """The document as printed: record lists dropped, symbolic entries cut to n / accuracy / undecodable_rate
    (metrics.json keeps everything)."""
    out = _printable(doc)
    if "symbolic" in out:
        out["symbolic"] = {
            k: {f: v[f] for f in SYMBOLIC_SHOWN if f in v} if isinstance(v, dict) else v
            for k, v in out["symbolic"].items()
            if k != "fields"
        }
    return out


def tracked_figures(doc: dict) -> tuple[dict[str, float], dict[int, dict[str, float]]]:
    """What the tracker records of a metrics document: (every number of the printed sections but frame
    prediction, as eval/<section>/<key>..., logged at step 0; {horizon: eval/frames/<mode>/<metric> mean},
    logged with the horizon as the step, so each metric is a curve over the horizon)."""
    flat: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[prefix] = float(value)

    for section, value in printable_document(doc).items():
        if section not in ("run", "frame_prediction") and isinstance(value, Mapping):
            walk(f"eval/{section}", value)
    per_horizon: dict[int, dict[str, float]] = {}
    frames = doc.get("frame_prediction") or {"horizons": [], "modes": {}}
    for mode, metrics in frames["modes"].items():
        for metric, stats in metrics.items():
            for h, mean in zip(frames["horizons"], stats["mean"]):
                if mean is not None:
                    per_horizon.setdefault(int(h), {})[f"eval/frames/{mode}/{metric}"] = float(mean)
    return flat, per_horizon


def _track(cfg: EvalConfig, out: Path, doc: dict) -> None:
    """Record the finished evaluation with the tracker: figures (`tracked_figures`), the contact sheet, the
    config and code version."""
    tracker = open_tracker(cfg.tracker, out, "eval", asdict(cfg))
    try:
        flat, per_horizon = tracked_figures(doc)
        tracker.log_scalars(0, flat)
        sheet = out / "contact_sheet.png"
        if sheet.is_file():
            with Image.open(sheet) as image:
                tracker.log_images(0, "eval/contact_sheet", [np.asarray(image.convert("RGB"))])
        for horizon in sorted(per_horizon):  # steps in increasing order (W&B refuses going back)
            tracker.log_scalars(horizon, per_horizon[horizon])
    finally:
        tracker.close()


def _contact_sheet(path: Path, result, samples: int) -> Path | None:
    if samples < 1:
        return None
    order = sorted(range(len(result.samples)), key=lambda i: -len(result.samples[i].horizons))
    chosen = sorted(order[:samples])
    ks = sorted(set.intersection(*(set(result.samples[i].horizons) for i in chosen)))
    modes = [m for m in (*MODEL_MODES, COPY_LAST_FRAME) if m in result.predictions]
    real = np.stack([[result.samples[i].target(k) for k in ks] for i in chosen])
    predicted = {m: np.stack([[result.predictions[m][i][k] for k in ks] for i in chosen]) for m in modes}
    context = np.stack([result.samples[i].frames[result.samples[i].c] for i in chosen])
    labels = [f"{result.samples[i].episode_id} t0={result.samples[i].context_end}" for i in chosen]
    return contact_sheet(
        path, real, predicted, ks, context=context, sample_labels=labels, title="real vs predicted"
    )


def _frames_task(cfg: EvalConfig, wm, episodes, out: Path, console: Console, doc: dict) -> None:
    f = cfg.frames
    perceptual = [
        load_perceptual(name, weights_path=f.perceptual_weights.get(name), device=cfg.model.device)
        for name in f.perceptual
    ]
    with _progress(console) as bar:
        task = bar.add_task("frame prediction", total=None)
        result = evaluate_frame_prediction(
            wm,
            episodes,
            horizons=f.horizons,
            modes=f.modes,
            context=f.context,
            max_trajectories=f.max_trajectories,
            samples_per_trajectory=f.samples_per_trajectory,
            max_samples=f.max_samples,
            batch_size=f.batch_size,
            metrics=f.metrics,
            perceptual=perceptual,
            symbolic=f.symbolic,
            seed=cfg.seed,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    doc["frame_prediction"] = result.summary()
    symbolic = result.symbolic_section()
    if symbolic is not None:
        doc["symbolic"] = symbolic
    files = [p.name for p in plot_metric_vs_horizon(doc["frame_prediction"], out)]
    sheet = _contact_sheet(out / "contact_sheet.png", result, f.contact_sheet_samples)
    if sheet is not None:
        files.append(sheet.name)
    doc["run"]["frames"] = {
        "samples": len(result.samples),
        "trajectories": len({s.episode_id for s in result.samples}),
        "context": f.context,
        "predicted_frames": result.predicted_frames,
        "predict_s": round(result.wall_s, 3),
        "imagined_frames_per_s": result.predicted_frames / result.wall_s if result.wall_s > 0 else None,
        "files": files,
    }


def _probe_task(name: str, label: str, probe, console: Console, doc: dict) -> None:
    """Run a probe over held-out histories (controllability, look-back) with a progress bar: `probe(progress)`
    returns (section, why); the section goes into the document, or the reason it did not run into run.skipped."""
    with _progress(console) as bar:
        task = bar.add_task(label, total=None)
        section, why = probe(lambda done, total: bar.update(task, completed=done, total=total))
    if section is None:
        doc["run"]["skipped"][name] = why
    else:
        doc[name] = section


def _controllability_task(cfg: EvalConfig, wm, episodes, console: Console, doc: dict) -> None:
    c = cfg.controllability
    probe = partial(
        evaluate_controllability,
        wm,
        episodes,
        context=c.context,
        max_trajectories=c.max_trajectories,
        samples_per_trajectory=c.samples_per_trajectory,
        max_samples=c.max_samples,
        batch_size=c.batch_size,
        exclude=c.exclude,
        seed=cfg.seed,
    )
    _probe_task("controllability", "controllability", lambda p: probe(progress=p), console, doc)


def _lookback_task(cfg: EvalConfig, wm, episodes, console: Console, doc: dict) -> None:
    lb = cfg.lookback
    probe = partial(
        evaluate_lookback,
        wm,
        episodes,
        turns=lb.turns,
        context=lb.context,
        max_trajectories=lb.max_trajectories,
        samples_per_trajectory=lb.samples_per_trajectory,
        max_samples=lb.max_samples,
        batch_size=lb.batch_size,
        one_frame_history=lb.one_frame_history,
        seed=cfg.seed,
    )
    _probe_task("lookback", "look-back", lambda p: probe(progress=p), console, doc)


def _navigation_task(cfg: EvalConfig, wm, out: Path, console: Console, doc: dict) -> None:
    n = cfg.navigation
    with _progress(console) as bar:
        task = bar.add_task(f"navigation {cfg.env.name} x {cfg.policy.name}", total=n.episodes)
        section, _ = evaluate_navigation(
            cfg.env.id,
            _env_kwargs(cfg),
            cfg.policy.name,
            cfg.policy.kwargs,
            world_model=wm,
            episodes=n.episodes,
            seed=n.seed,
            max_steps=n.max_steps,
            out_dir=out / "navigation",
            video=n.video,
            fps=cfg.env.fps,
            progress=lambda done, total, ep: bar.update(task, completed=done),
        )
        baselines = [b for b in dict.fromkeys(n.baselines) if b != cfg.policy.name]
        if baselines:
            task = bar.add_task("navigation baselines", total=n.episodes * len(baselines))
            section["baselines"] = navigation_baselines(
                baselines,
                cfg.env.id,
                _env_kwargs(cfg),
                episodes=n.episodes,
                seed=n.seed,
                max_steps=n.max_steps,
                progress=lambda done, total: bar.update(task, completed=done),
            )
    doc["navigation"] = section


def _trajectory_task(cfg: EvalConfig, wm, episodes, doc: dict) -> None:
    t = cfg.trajectory
    doc["trajectory"] = evaluate_trajectory_planning(
        wm,
        episodes,
        horizon=t.horizon,
        trajectories=t.trajectories,
        context=cfg.frames.context,
        population=t.population,
        elites=t.elites,
        iterations=t.iterations,
        energy=t.energy,
        align=t.align,
        rpe_delta=t.rpe_delta,
        seed=cfg.seed,
    )


def _text_task(cfg: EvalConfig, wm, episodes, console: Console, doc: dict) -> None:
    with _progress(console) as bar:
        task = bar.add_task("questions", total=None)
        section = evaluate_text(
            wm,
            episodes,
            max_questions=cfg.text.max_questions,
            context=cfg.frames.context,
            think=cfg.text.think,
            max_new_tokens=cfg.text.max_new_tokens,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if section is None:
        doc["run"]["skipped"]["text"] = "no Q&A annotations in the dataset"
    else:
        doc["text"] = section


def run(cfg: EvalConfig, console: Console) -> int:
    require_backend(cfg.tracker)  # a missing tensorboard / wandb fails before any data or model loads
    out = Path(cfg.out) if cfg.out else default_run_dir("eval")
    if cfg.tasks is not None:
        resolve_tasks(cfg, None)  # validate names before any slow work
    check_baselines(cfg.navigation.baselines)
    needs_data = cfg.tasks is None or bool(
        {"frames", "controllability", "lookback", "trajectory", "text"} & set(cfg.tasks)
    )
    episodes = load_heldout(cfg.dataset, cfg.env.id, _env_kwargs(cfg)) if needs_data else None
    tasks, skipped = resolve_tasks(cfg, episodes)
    wm = load_world_model(cfg.model, sampler=cfg.sampler, world=cfg.world, pipe=load_pipeline(cfg.model))
    doc: dict[str, Any] = {
        "run": {
            "command": "eval",
            "model": {"name": cfg.model.name, "path": cfg.model.path},
            "sampler": asdict(wm.config.sampler),
            "dataset": {k: v for k, v in asdict(cfg.dataset).items() if v is not None},
            "episodes": len(episodes) if episodes is not None else 0,
            "tasks": tasks,
            "skipped": skipped,
            "seed": cfg.seed,
            "code_version": code_version(),
        }
    }

    def save() -> Path:
        return write_metrics_json(out / "metrics.json", metrics_document(**doc))

    with run_folder(out, cfg, "eval", exclusive=True):  # config.yaml saved; one writer per folder
        for name in tasks:
            t = time.perf_counter()
            if name == "frames":
                _frames_task(cfg, wm, episodes, out, console, doc)
            elif name == "controllability":
                _controllability_task(cfg, wm, episodes, console, doc)
            elif name == "lookback":
                _lookback_task(cfg, wm, episodes, console, doc)
            elif name == "navigation":
                _navigation_task(cfg, wm, out, console, doc)
            elif name == "trajectory":
                _trajectory_task(cfg, wm, episodes, doc)
            else:
                _text_task(cfg, wm, episodes, console, doc)
            doc["run"].setdefault("task_seconds", {})[name] = round(time.perf_counter() - t, 2)
            save()
        path = save()
        _track(cfg, out, metrics_document(**doc))
    for table in report_tables(printable_document(metrics_document(**doc))):
        console.print(table)
    for task, why in doc["run"]["skipped"].items():
        console.print(f"[dim]skipped {task}: {why}[/dim]")
    console.print(f"run folder: {out}  ({path.name}, horizon_<metric>.png, contact_sheet.png)")
    return 0
