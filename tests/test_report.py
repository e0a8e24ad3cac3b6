"""Evaluation report: metrics.json, rich tables, horizon plots and contact sheets."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from worldbagel.errors import ConfigError, DependencyNotInstalled, WorldBagelError
from worldbagel.eval import horizon_plot as HP
from worldbagel.eval import report as R
from worldbagel.eval.contact_sheet import contact_sheet
from worldbagel.eval.horizons import COPY_LAST_FRAME, OPEN_LOOP, SINGLE_STEP, HorizonScores


def _summary() -> dict:
    s = HorizonScores()
    for i, k in enumerate(s.horizons):
        s.add(SINGLE_STEP, k, {"psnr": [30.0 - i, 32.0 - i], "mse": [0.01 * (i + 1)] * 2})
        s.add(COPY_LAST_FRAME, k, {"psnr": [25.0 - i, 25.0 - i], "mse": [0.02 * (i + 1)] * 2})
    s.add(OPEN_LOOP, 1, {"psnr": [33.0]})
    return s.summary()


def _render(table) -> str:
    console = Console(record=True, width=200, color_system=None)
    console.print(table)
    return console.export_text()


# ---------------------------------------------------------------------------------------- metrics.json
def test_metrics_json_roundtrip(tmp_path):
    doc = R.metrics_document(
        run={"model": "tiny", "dataset": tmp_path / "data"},
        frame_prediction=_summary(),
        navigation={"success_rate": np.float32(0.5), "n_episodes": np.int64(4)},
        text={"accuracy": 1.0, "correct": 3, "n": 3},
        trajectory={"ate": float("inf"), "rpe": {"trans_rmse": float("nan")}},
    )
    assert doc["schema_version"] == R.SCHEMA_VERSION and "symbolic" not in doc
    assert doc["frame_prediction"]["higher_is_better"] == {
        "mse": False,
        "psnr": True,
        "psnr_frame_mean": True,
    }
    path = R.write_metrics_json(tmp_path / "out" / "metrics.json", doc)
    raw = path.read_text()
    assert "Infinity" not in raw and "NaN" not in raw
    back = R.read_metrics_json(path)
    assert back["trajectory"] == {"ate": None, "rpe": {"trans_rmse": None}}
    assert back["navigation"] == {"success_rate": 0.5, "n_episodes": 4}
    assert back["run"]["dataset"] == str(tmp_path / "data")
    # psnr is dataset-level (PSNR of the mean MSE of 30 and 32 dB frames); the per-frame mean sits beside it
    single = back["frame_prediction"]["modes"]["single_step"]
    assert single["psnr"]["mean"][0] == pytest.approx(10 * np.log10(2 / (10**-3.0 + 10**-3.2)))
    assert single["psnr"]["aggregate"] == "psnr_of_mean_mse" and single["psnr_frame_mean"]["mean"][0] == 31.0
    assert back["frame_prediction"]["modes"]["open_loop"]["psnr"]["n"] == [1, 0, 0, 0, 0]
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temp files left


def test_metrics_json_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    R.write_metrics_json(path, R.metrics_document(text={"accuracy": 0.25, "correct": 1, "n": 4}))
    before = path.read_text()

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(R.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        R.write_metrics_json(path, R.metrics_document(text={"accuracy": 1.0, "correct": 4, "n": 4}))
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_metrics_json_errors(tmp_path):
    with pytest.raises(ConfigError, match="frame_prediction"):
        R.metrics_document(frame_prediction={"psnr": 1.0})
    with pytest.raises(ConfigError, match="JSON"):
        R.metrics_document(run={"model": object()})
    with pytest.raises(ConfigError, match="metrics_document"):
        R.write_metrics_json(tmp_path / "m.json", {"text": {}})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(WorldBagelError, match="schema_version 1"):
        R.read_metrics_json(bad)
    with pytest.raises(WorldBagelError, match="cannot read"):
        R.read_metrics_json(tmp_path / "missing.json")


# ---------------------------------------------------------------------------------------------- tables
def test_horizon_table_content_and_best_marking():
    table = R.horizon_table(_summary())
    assert [c.header for c in table.columns] == ["metric", "mode", "k=1", "k=2", "k=4", "k=8", "k=16"]
    text = _render(table)
    assert "psnr ↑" in text and "mse ↓" in text
    assert "psnr_frame_mean ↑" in text and "31 ± 1" in text and "25 ± 0" in text  # per-frame mean ± std
    # best per horizon is bold: open_loop's 33 at k=1 for psnr (dataset-level: no std), single_step's mse
    psnr_k1 = table.columns[2]._cells
    assert psnr_k1[2] == "[bold]33[/bold]" and not psnr_k1[0].startswith("[bold]")
    assert table.columns[3]._cells[0].startswith("[bold]")  # k=2: single_step beats copy_last_frame
    assert "-" in table.columns[3]._cells[2]  # open_loop has no k=2 sample
    with pytest.raises(ConfigError, match="lpips"):
        R.horizon_table(_summary(), metrics=["lpips"])


def test_scalar_and_report_tables():
    doc = R.metrics_document(
        navigation={"success_rate": 0.5, "spl": 0.4321987, "n_episodes": 10},
        trajectory={"ate": 0.25, "align": "rigid", "rpe": {"trans_rmse": 0.1}},
        frame_prediction=_summary(),
    )
    tables = R.report_tables(doc)
    assert [t.title for t in tables] == ["Frame prediction", "Navigation", "Trajectory"]
    text = _render(tables[2])
    assert "rpe.trans_rmse" in text and "rigid" in text
    assert "0.4322" in _render(tables[1])
    assert (
        R.format_value(None) == "-"
        and R.format_value(3) == "3"
        and R.format_value(0.123456, 0.01) == "0.1235 ± 0.01"
    )


# ----------------------------------------------------------------------------------------------- plots
def test_nice_ticks():
    assert HP.nice_ticks(0.0, 1.0) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert HP.nice_ticks(13.2, 31.7) == [10.0, 15.0, 20.0, 25.0, 30.0, 35.0]
    ticks = HP.nice_ticks(5.0, 5.0)
    assert ticks[0] < 5.0 < ticks[-1]


def _colour_rows(img: np.ndarray, colour) -> np.ndarray:
    return np.nonzero(np.all(img == np.array(colour, np.uint8), axis=-1))[0]


def test_pil_plot_draws_each_mode_in_order(tmp_path):
    summary = _summary()
    paths = HP.plot_metric_vs_horizon(summary, tmp_path, backend="pil")
    assert [p.name for p in paths] == ["horizon_psnr.png", "horizon_mse.png"]
    img = np.asarray(Image.open(paths[0]).convert("RGB"))
    assert img.shape == (HP.SIZE[1], HP.SIZE[0], 3)
    single, copy, open_loop = (_colour_rows(img, c) for c in HP.COLOURS[:3])
    assert single.size and copy.size and open_loop.size
    assert _colour_rows(img, HP.COLOURS[3]).size == 0  # only three modes
    # higher PSNR is drawn higher up (smaller row): single_step (30.5..) above copy_last_frame (25..)
    assert np.median(single) < np.median(copy)


def test_plot_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="backend"):
        HP.plot_metric_vs_horizon(_summary(), tmp_path, backend="svg")
    with pytest.raises(ConfigError, match="ssim"):
        HP.plot_metric_vs_horizon(_summary(), tmp_path, metrics=["ssim"], backend="pil")
    monkeypatch.setattr(HP.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DependencyNotInstalled, match="worldbagel\\[plots\\]"):
        HP.plot_metric_vs_horizon(_summary(), tmp_path, backend="matplotlib")
    # auto falls back to Pillow without matplotlib
    assert HP.plot_metric_vs_horizon(_summary(), tmp_path, metrics=["mse"])[0].exists()


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed")
def test_matplotlib_plot(tmp_path):
    (path,) = HP.plot_metric_vs_horizon(_summary(), tmp_path, metrics=["psnr"], backend="matplotlib")
    img = Image.open(path)
    assert img.format == "PNG" and img.size == HP.SIZE
    arr = np.asarray(img.convert("RGB")).astype(int)
    # the first mode's line colour (Okabe-Ito blue) is present, anti-aliased so match approximately
    assert (np.abs(arr - np.array(HP.COLOURS[0])).sum(-1) < 30).sum() > 100


# ---------------------------------------------------------------------------------------- contact sheet
def _solid(shape, colour) -> np.ndarray:
    out = np.zeros((*shape, 3), np.uint8)
    out[...] = colour
    return out


def test_contact_sheet_places_every_frame(tmp_path):
    samples, horizons, side = 2, (1, 2, 4), 8
    real = _solid((samples, len(horizons), side, side), (10, 200, 30))
    pred = _solid((samples, len(horizons), side, side), (200, 20, 180))
    copy = _solid((samples, len(horizons), side, side), (20, 20, 240))
    context = _solid((samples, side, side), (250, 150, 0))
    path = contact_sheet(
        tmp_path / "sheet.png",
        real,
        {"open_loop": pred, "copy_last_frame": copy},
        horizons,
        context=context,
        cell=16,
    )
    img = np.asarray(Image.open(path).convert("RGB"))
    cell_area = (2 * side) ** 2  # 8 px frames enlarged x2 for a 16 px cell

    def count(colour) -> int:
        return int(np.all(img == np.array(colour, np.uint8), axis=-1).sum())

    assert count((10, 200, 30)) == samples * len(horizons) * cell_area
    assert count((200, 20, 180)) == samples * len(horizons) * cell_area
    assert count((20, 20, 240)) == samples * len(horizons) * cell_area
    assert count((250, 150, 0)) == samples * cell_area


def test_contact_sheet_float_frames_and_errors(tmp_path):
    real = np.full((1, 2, 12, 12, 3), 0.5)
    real[0, 1] = 0.8
    path = contact_sheet(
        tmp_path / "s.png", real, {"open_loop": real * 0.2}, (1, 2), sample_labels=["ep 7"], title="t"
    )
    img = np.asarray(Image.open(path).convert("RGB"))
    # floats in [0, 1] become uint8: 0.5 -> 128, 0.8 -> 204, 0.1 -> 26, 0.16 -> 41 (one 96 px cell each)
    for value in (128, 204, 26, 41):
        assert int(np.all(img == value, axis=-1).sum()) >= 96 * 96
    with pytest.raises(ConfigError, match="horizons"):
        contact_sheet(tmp_path / "s.png", real, {}, (1, 2, 4))
    with pytest.raises(ConfigError, match=r"predicted\['x'\].shape"):
        contact_sheet(tmp_path / "s.png", real, {"x": real[:, :1]}, (1, 2))
    with pytest.raises(ConfigError, match="real.shape"):
        contact_sheet(tmp_path / "s.png", real[0], {}, (1, 2))
    with pytest.raises(ConfigError, match="sample_labels"):
        contact_sheet(tmp_path / "s.png", real, {}, (1, 2), sample_labels=["a", "b"])


def test_eval_tables_keep_every_cell_at_80_columns():
    from table_text import missing_cells, render

    text_section = {
        "accuracy": 0.90625,
        "by_question": {"Where is the goal relative to the agent?": 0.875, "What is the next move?": 0.9125},
        "chance": 0.25,
    }
    doc = R.metrics_document(text=text_section, frame_prediction=_summary())
    for table in R.report_tables(doc):
        cells = [str(c) for col in table.columns for c in col._cells if c]
        cells = [c.replace("[bold]", "").replace("[/bold]", "") for c in cells]
        assert not missing_cells(render(table, 80), cells), table.title
