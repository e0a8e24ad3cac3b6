"""PNG plots of each frame metric against the prediction horizon, one line per mode (mean ± std band).

Input is a frame-prediction summary (`HorizonScores.summary()` or metrics.json's "frame_prediction"):
    {"horizons": [k...], "modes": {mode: {metric: {"mean": [...], "std": [...], "n": [...]}}}}
The horizon axis is logarithmic (base 2), with a tick at every evaluated horizon.

Backends: "matplotlib" (the `plots` extra: `pip install "worldbagel[plots]"`), "pil" (always available,
drawn with Pillow), or "auto" (matplotlib when importable, else Pillow). Files are written atomically.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from worldbagel.errors import DependencyNotInstalled, bad_argument
from worldbagel.frame_metrics import PSNR_FRAME_MEAN

from .png_canvas import label_font, save_png_atomic
from .report import METRIC_DIRECTION

BACKENDS = ("auto", "matplotlib", "pil")
#: line colours per mode, in the order modes appear (colour-blind-safe Okabe-Ito palette)
COLOURS = (
    (0, 114, 178),
    (213, 94, 0),
    (0, 158, 115),
    (204, 121, 167),
    (230, 159, 0),
    (86, 180, 233),
    (0, 0, 0),
)
SIZE = (720, 450)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values (1, 2, 5 x 10^n steps) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise bad_argument("tick range", (lo, hi), "pass finite bounds")
    if hi <= lo:
        pad = abs(lo) * 0.05 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(count - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    if ticks[-1] < hi:
        ticks.append(round(t, 12))
    return ticks


def _series(summary: Mapping, metric: str) -> list[tuple[str, list, list]]:
    """[(mode, means, stds)] of one metric; horizons without samples stay None."""
    out = []
    for mode, per in summary["modes"].items():
        if metric in per:
            out.append((mode, list(per[metric]["mean"]), list(per[metric]["std"])))
    return out


def _title(metric: str) -> str:
    higher = METRIC_DIRECTION.get(metric)
    hint = "" if higher is None else (" (higher is better)" if higher else " (lower is better)")
    return f"{metric.upper()} vs prediction horizon{hint}"


def _draw_pil(summary: Mapping, metric: str) -> Image.Image:
    width, height = SIZE
    left, right, top, bottom = 78, 24, 44, 58
    horizons = list(summary["horizons"])
    series = _series(summary, metric)
    lows, highs = [], []
    for _, means, stds in series:
        for m, s in zip(means, stds):
            if m is not None and math.isfinite(m):
                s = s if s is not None and math.isfinite(s) else 0.0
                lows.append(m - s)
                highs.append(m + s)
    span = (max(highs) - min(lows)) or abs(max(highs)) or 1.0
    ticks = nice_ticks(min(lows) - 0.04 * span, max(highs) + 0.04 * span)
    y_lo, y_hi = ticks[0], ticks[-1]
    x_lo, x_hi = math.log2(horizons[0]), math.log2(horizons[-1])
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    pad = 0.06 * (x_hi - x_lo)
    x_lo, x_hi = x_lo - pad, x_hi + pad

    def px(k: float, v: float) -> tuple[float, float]:
        x = left + (math.log2(k) - x_lo) / (x_hi - x_lo) * (width - left - right)
        y = top + (y_hi - v) / (y_hi - y_lo) * (height - top - bottom)
        return x, y

    img = Image.new("RGBA", SIZE, (255, 255, 255, 255))
    draw = ImageDraw.Draw(img)
    small, big = label_font(13), label_font(16)
    draw.text((left, 12), _title(metric), fill=(20, 20, 20), font=big)
    for t in ticks:  # horizontal grid + y labels
        _, y = px(horizons[0], t)
        draw.line([(left, y), (width - right, y)], fill=(225, 225, 225))
        draw.text((left - 8, y), f"{t:.4g}", fill=(60, 60, 60), font=small, anchor="rm")
    for k in horizons:  # x ticks
        x, _ = px(k, y_lo)
        draw.line([(x, height - bottom), (x, height - bottom + 5)], fill=(60, 60, 60))
        draw.text((x, height - bottom + 8), str(k), fill=(60, 60, 60), font=small, anchor="mt")
    draw.rectangle([left, top, width - right, height - bottom], outline=(60, 60, 60))
    draw.text(
        ((left + width - right) / 2, height - 18),
        "horizon k (steps, log scale)",
        fill=(20, 20, 20),
        font=small,
        anchor="mm",
    )
    label = Image.new("RGBA", (int(draw.textlength(metric, font=small)) + 4, 18), (255, 255, 255, 0))
    ImageDraw.Draw(label).text((2, 9), metric, fill=(20, 20, 20, 255), font=small, anchor="lm")
    label = label.rotate(90, expand=True)
    img.alpha_composite(label, (6, int((top + height - bottom - label.height) / 2)))

    band = Image.new("RGBA", SIZE, (0, 0, 0, 0))
    band_draw = ImageDraw.Draw(band)
    for i, (_, means, stds) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        pts = [
            (k, m, s or 0.0) for k, m, s in zip(horizons, means, stds) if m is not None and math.isfinite(m)
        ]
        if len(pts) >= 2:
            upper = [px(k, m + s) for k, m, s in pts]
            lower = [px(k, m - s) for k, m, s in reversed(pts)]
            band_draw.polygon(upper + lower, fill=(*colour, 40))
    img = Image.alpha_composite(img, band)
    draw = ImageDraw.Draw(img)
    for i, (_, means, _) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        pts = [px(k, m) for k, m in zip(horizons, means) if m is not None and math.isfinite(m)]
        if len(pts) >= 2:
            draw.line(pts, fill=colour, width=3, joint="curve")
        for x, y in pts:
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour, outline=(255, 255, 255))
    # legend in the inner corner that covers the fewest data points
    line_h = 20
    legend_w = max(draw.textlength(mode, font=small) for mode, _, _ in series) + 40
    legend_h = line_h * len(series) + 6
    points = [
        px(k, m)
        for _, means, _ in series
        for k, m in zip(horizons, means)
        if m is not None and math.isfinite(m)
    ]
    corners = [
        (width - right - legend_w - 8, top + 8),
        (left + 8, top + 8),
        (width - right - legend_w - 8, height - bottom - legend_h - 8),
        (left + 8, height - bottom - legend_h - 8),
    ]

    def covered(corner: tuple[float, float]) -> int:
        x0, y0 = corner
        return sum(x0 - 6 <= x <= x0 + legend_w + 6 and y0 - 6 <= y <= y0 + legend_h + 6 for x, y in points)

    lx, ly = min(corners, key=covered)  # min keeps the first (top-right) on ties
    draw.rectangle([lx, ly, lx + legend_w, ly + legend_h], fill=(255, 255, 255), outline=(200, 200, 200))
    for i, (mode, _, _) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        y = ly + 13 + i * line_h
        draw.line([(lx + 8, y), (lx + 28, y)], fill=colour, width=3)
        draw.text((lx + 34, y), mode, fill=(20, 20, 20), font=small, anchor="lm")
    return img.convert("RGB")


def _save_matplotlib(summary: Mapping, metric: str, path: str) -> None:
    import matplotlib  # lazy: optional dependency (plots extra)

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # lazy: optional dependency (plots extra)

    horizons = list(summary["horizons"])
    fig, ax = plt.subplots(figsize=(SIZE[0] / 100, SIZE[1] / 100), dpi=100)
    try:
        for i, (mode, means, stds) in enumerate(_series(summary, metric)):
            colour = tuple(c / 255 for c in COLOURS[i % len(COLOURS)])
            pts = [
                (k, m, s or 0.0)
                for k, m, s in zip(horizons, means, stds)
                if m is not None and math.isfinite(m)
            ]
            ks = [p[0] for p in pts]
            ms = [p[1] for p in pts]
            ax.plot(ks, ms, marker="o", color=colour, label=mode, linewidth=2)
            ax.fill_between(
                ks, [m - s for _, m, s in pts], [m + s for _, m, s in pts], color=colour, alpha=0.15
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(horizons)
        ax.set_xticklabels([str(k) for k in horizons])
        ax.set_xlabel("horizon k (steps, log scale)")
        ax.set_ylabel(metric)
        ax.set_title(_title(metric))
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def plot_metric_vs_horizon(
    summary: Mapping,
    out_dir: str | os.PathLike,
    metrics: Sequence[str] | None = None,
    backend: str = "auto",
) -> list[Path]:
    """Write `horizon_<metric>.png` for each metric of a frame-prediction summary; returns the paths.

    Args:
        summary: `HorizonScores.summary()` or metrics.json's "frame_prediction" section.
        out_dir: folder for the PNGs (created if needed).
        metrics: which metrics (default: all in the summary, in order, except `psnr_frame_mean`: the plots
            show the headline dataset-level `psnr`).
        backend: "auto", "matplotlib" or "pil" (see the module docstring).
    """
    if backend not in BACKENDS:
        raise bad_argument("backend", backend, f"choose one of {BACKENDS}")
    if "horizons" not in summary or "modes" not in summary:
        raise bad_argument("summary", sorted(summary), "pass HorizonScores.summary() (keys horizons, modes)")
    if backend == "auto":
        backend = "matplotlib" if importlib.util.find_spec("matplotlib") is not None else "pil"
    if backend == "matplotlib" and importlib.util.find_spec("matplotlib") is None:
        raise DependencyNotInstalled(
            'backend="matplotlib" needs matplotlib: pip install "worldbagel[plots]" (or use backend="pil")'
        )
    available = list(dict.fromkeys(m for per in summary["modes"].values() for m in per))
    names = [m for m in available if m != PSNR_FRAME_MEAN] if metrics is None else list(metrics)
    paths = []
    for metric in names:
        series = _series(summary, metric)
        if not any(m is not None and math.isfinite(m) for _, means, _ in series for m in means):
            raise bad_argument("metrics", names, f"'{metric}' has no finite values; available: {available}")
        path = Path(out_dir) / f"horizon_{metric}.png"
        if backend == "matplotlib":
            save_png_atomic(path, lambda tmp, metric=metric: _save_matplotlib(summary, metric, tmp))
        else:
            image = _draw_pil(summary, metric)
            save_png_atomic(path, lambda tmp, image=image: image.save(tmp, format="PNG"))
        paths.append(path)
    return paths
