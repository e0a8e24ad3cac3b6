"""PNG contact sheet of real vs predicted frames over the prediction horizon, drawn with Pillow.

Shape legend:
    S      samples (one block of rows each)
    K      horizons (columns), e.g. k in {1, 2, 4, 8, 16}
    H, W   frame size; frames are (..., H, W, 3) uint8, or float in [0, 1]

Layout: a header row names the columns ("context" when given, then "k=1", "k=2", ...); each sample
is a block of rows, first the real frames then one row per prediction mode, each row labelled on the
left. With `show_psnr`, every predicted cell carries its PSNR (dB) against the real frame below it.
Small frames are enlarged by an integer factor (nearest neighbour, at least `cell` pixels) so pixels
stay crisp; frames larger than `cell` are shrunk to it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from worldbagel.errors import bad_argument
from worldbagel.frame_metrics import psnr

from .png_canvas import label_font, save_png_atomic

BACKGROUND = (255, 255, 255)
INK = (25, 25, 25)
MUTED = (110, 110, 110)


def _uint8(frames, name: str) -> np.ndarray:
    a = np.asarray(frames)
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating):
            raise bad_argument(f"{name}.dtype", str(a.dtype), "pass uint8 frames or floats in [0, 1]")
        a = (np.clip(np.nan_to_num(a), 0.0, 1.0) * 255).round().astype(np.uint8)
    return a


def _enlarge(frame: np.ndarray, cell: int) -> Image.Image:
    img = Image.fromarray(frame)
    h, w = frame.shape[:2]
    factor = max(1, -(-cell // max(h, w)))  # ceil: 64 px frames in a 96 px cell show at 128 px
    if factor > 1:
        img = img.resize((w * factor, h * factor), Image.Resampling.NEAREST)
    elif max(h, w) > cell:
        scale = cell / max(h, w)
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    return img


def contact_sheet(
    path: str | os.PathLike,
    real,
    predicted: Mapping[str, np.ndarray],
    horizons: Sequence[int],
    context=None,
    sample_labels: Sequence[str] | None = None,
    cell: int = 96,
    show_psnr: bool = True,
    title: str | None = None,
) -> Path:
    """Write a real-vs-predicted contact sheet PNG (atomically) and return its path.

    Args:
        path: output .png file.
        real: (S, K, H, W, 3) true frames at each horizon.
        predicted: {mode: (S, K, H, W, 3)} predicted frames, e.g. single_step / open_loop / copy_last_frame.
        horizons: the K horizons, used as column labels.
        context: optional (S, H, W, 3) last observed frames, shown in a first "context" column.
        sample_labels: S names for the sample blocks (default "sample 0", ...).
        cell: target cell side in pixels (small frames are enlarged by the smallest integer factor
            reaching it, large ones shrunk to it).
        show_psnr: print each predicted cell's PSNR against the real frame under it.
        title: optional line above the sheet.
    """
    real = _uint8(real, "real")
    if real.ndim != 5 or real.shape[-1] != 3:
        raise bad_argument("real.shape", real.shape, "pass (S, K, H, W, 3) frames: samples x horizons")
    n_samples, n_k = real.shape[:2]
    if len(horizons) != n_k:
        raise bad_argument("horizons", list(horizons), f"give one label per column ({n_k} horizons in real)")
    preds = {}
    for mode, frames in predicted.items():
        frames = _uint8(frames, f"predicted[{mode!r}]")
        if frames.shape != real.shape:
            raise bad_argument(
                f"predicted[{mode!r}].shape", frames.shape, f"must equal real.shape {real.shape}"
            )
        preds[str(mode)] = frames
    if context is not None:
        context = _uint8(context, "context")
        if context.shape != (n_samples, *real.shape[2:]):
            raise bad_argument(
                "context.shape", context.shape, f"pass (S, H, W, 3) = {(n_samples, *real.shape[2:])}"
            )
    labels = list(sample_labels) if sample_labels is not None else [f"sample {i}" for i in range(n_samples)]
    if len(labels) != n_samples:
        raise bad_argument("sample_labels", labels, f"give one label per sample ({n_samples})")
    if not isinstance(cell, int) or cell < 8:
        raise bad_argument("cell", cell, "use an int >= 8 pixels")

    font, small, bold = label_font(14), label_font(12), label_font(15)
    probe = _enlarge(real[0, 0], cell)
    cw, ch = probe.size
    gap = 6
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = 16 + max(
        [measure.textlength(t, font=bold) for t in labels]
        + [measure.textlength(m, font=font) for m in ["real", *preds]]
    )
    label_w = int(min(max(label_w, 60), 260))
    caption_h = 16 if show_psnr and preds else 0
    row_h = ch + gap + caption_h
    rows_per_sample = 1 + len(preds)
    block_gap = 14
    n_cols = n_k + (context is not None)
    title_h = 28 if title else 0
    header_h = 24
    width = label_w + n_cols * (cw + gap) + gap
    height = title_h + header_h + n_samples * (rows_per_sample * row_h + block_gap) + gap

    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((gap, 6), title, fill=INK, font=bold)
    col_x = [label_w + gap + c * (cw + gap) for c in range(n_cols)]
    headers = (["context"] if context is not None else []) + [f"k={k}" for k in horizons]
    for x, text in zip(col_x, headers):
        draw.text((x + cw / 2, title_h + header_h / 2), text, fill=INK, font=font, anchor="mm")

    y = title_h + header_h
    first_k_col = 1 if context is not None else 0
    for s in range(n_samples):
        draw.line([(gap, y - block_gap / 2), (width - gap, y - block_gap / 2)], fill=(215, 215, 215))
        rows = [("real", real[s])] + [(mode, frames[s]) for mode, frames in preds.items()]
        for r, (name, frames) in enumerate(rows):
            ry = y + r * row_h
            if r == 0:
                draw.text((gap, ry + ch / 2 - 9), labels[s], fill=INK, font=bold, anchor="lm")
                draw.text((gap, ry + ch / 2 + 9), "real", fill=MUTED, font=font, anchor="lm")
                if context is not None:
                    sheet.paste(_enlarge(context[s], cell), (col_x[0], ry))
            else:
                draw.text((gap, ry + ch / 2), name, fill=INK, font=font, anchor="lm")
            for k in range(n_k):
                x = col_x[first_k_col + k]
                sheet.paste(_enlarge(frames[k], cell), (x, ry))
                if r > 0 and show_psnr:
                    db = psnr(frames[k], real[s, k], max_db=None)
                    caption = f"{db:.1f} dB" if np.isfinite(db) else "identical"
                    draw.text((x + cw / 2, ry + ch + 2), caption, fill=MUTED, font=small, anchor="mt")
        y += rows_per_sample * row_h + block_gap
    return save_png_atomic(Path(path), lambda tmp: sheet.save(tmp, format="PNG"))
