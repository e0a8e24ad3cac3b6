"""`worldbagel reason image=FILE question=TEXT [think=true]`: ask the world model about an observation.

The image (or every frame of a clip, in order) enters the world model's history; the answer is generated
greedily and printed (with the thought in think mode) and, with `out=FILE`, written to a text file.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape

from worldbagel.atomic_files import atomic_write_text
from worldbagel.config import ReasonConfig
from worldbagel.errors import bad_argument
from worldbagel.media import read_clip
from worldbagel.think_text import think_budget_warning
from worldbagel.world_model_loader import load_world_model


def run(cfg: ReasonConfig, console: Console) -> int:
    if not cfg.question.strip():
        raise bad_argument("question", cfg.question, "ask a question, e.g. question='Where is the goal?'")
    if cfg.max_new_tokens < 1:
        raise bad_argument("max_new_tokens", cfg.max_new_tokens, "use an int >= 1")
    frames = read_clip(cfg.image, "image")
    with console.status(f"loading {cfg.model.path or cfg.model.name}"):
        wm = load_world_model(cfg.model, cfg.sampler, world={"max_history_frames": cfg.max_history_frames})
    with console.status("thinking" if cfg.think else "answering"):
        wm.reset(frames[0], instruction=cfg.instruction)
        for frame in frames[1:]:
            wm.observe(frame)
        thought, answer = wm.reason_full(cfg.question, think=cfg.think, max_new_tokens=cfg.max_new_tokens)
    warning, closed = None, True
    if cfg.think:
        closed = bool(thought)  # split_think: no </think> -> ("", everything said)
        if not closed:
            thought, answer = answer, ""  # what was said is the unfinished thought, not an answer
        said = f"<think> {thought} </think> {answer}" if closed else f"<think> {thought}"
        # reason_full returns text, not token ids: re-encoding what was said counts them (exact for the byte
        # tokenizer of the small models, within a token or two for BPE)
        tokens = len(wm.pipe.tokenizer.encode(said.removeprefix("<think> ")))
        warning = think_budget_warning(said, tokens, cfg.max_new_tokens, "max_new_tokens")
        console.print(f"[bold]thought:[/bold] {escape(thought)}", highlight=False)
    console.print(answer, markup=False, highlight=False)
    if warning:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
    if cfg.out:
        path = Path(cfg.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = (f"<think> {thought}{' </think>' if closed else ''}\n" if cfg.think else "") + answer + "\n"
        atomic_write_text(path, text)
    return 0
