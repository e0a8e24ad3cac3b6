"""`worldbagel generate`: one official-style generation (image or text) from the command line."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.markup import escape

from worldbagel.atomic_files import atomic_write_text
from worldbagel.config import GenerateConfig
from worldbagel.errors import bad_argument
from worldbagel.eval.png_canvas import save_png_atomic
from worldbagel.inference.pipeline import BagelPipeline
from worldbagel.media import read_image
from worldbagel.model.tensor_parallel import is_rank_zero
from worldbagel.think_text import think_budget_warning

logger = logging.getLogger(__name__)


def _warn(console: Console, warning: str | None) -> None:
    if warning:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)


def run(cfg: GenerateConfig, console: Console) -> int:
    if cfg.output not in ("image", "text"):
        raise bad_argument("output", cfg.output, "use output=image or output=text")
    if not cfg.prompt and cfg.image is None:
        raise bad_argument("prompt", cfg.prompt, "give a prompt=... and/or an image=PATH")
    inputs: list = []
    if cfg.image is not None:
        inputs.append(Image.fromarray(read_image(cfg.image, "image")))
    if cfg.prompt:
        inputs.append(cfg.prompt)
    gen_config = cfg.sampler
    gen_config.check()
    with console.status(f"loading {cfg.model.path or cfg.model.name}"):
        pipe = BagelPipeline.from_config(cfg.model)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    understanding = cfg.output == "text"
    ic = pipe.interleave_contexts(inputs, think=cfg.think, understanding_output=understanding)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if understanding:
        answer = pipe.generate_text(ic.context, max_new_tokens=cfg.max_new_tokens)
        if not is_rank_zero():  # tensor-parallel ranks compute the same answer: one writes and prints
            return 0
        atomic_write_text(out, answer.text + "\n")
        console.print(answer.text, markup=False, highlight=False)
        if cfg.think:
            _warn(
                console,
                think_budget_warning(answer.text, len(answer.ids), cfg.max_new_tokens, "max_new_tokens"),
            )
        return 0
    if cfg.think:
        with console.status("thinking"):
            pipe.think(ic, max_think_tokens=cfg.max_new_tokens)
        console.print(f"[bold]thought:[/bold] {escape(ic.thought)}", highlight=False)
        budget = cfg.max_new_tokens
        _warn(
            console, think_budget_warning(ic.thought, ic.think_tokens, budget, "max_new_tokens", answer=False)
        )
    size = ic.image_size or (512, 512)
    size = (cfg.height or size[0], cfg.width or size[1])
    with console.status(f"denoising {size[0]}x{size[1]} in {gen_config.num_steps - 1} steps"):
        image = pipe.generate_image(ic, image_size=size, config=gen_config, generator=generator)
    if not is_rank_zero():
        return 0
    fmt = Image.registered_extensions().get(out.suffix.lower(), "PNG")
    save_png_atomic(out, lambda tmp: Image.fromarray(np.asarray(image)).save(tmp, format=fmt))
    console.print(f"wrote {out} ({image.shape[1]}x{image.shape[0]})")
    return 0
