"""Synthetic episodes with simple, learnable dynamics (a square moved by actions) for tests and benchmarks.

Each episode is a `worldbagel.data.trajectory.Episode`: frames uint8 [T+1, H, W, 3] (a coloured square on a
dark background) and `action_texts[t]` one of "move left" / "move right" / "move up" / "move down" (the
square moves `step` pixels, clamped to the frame). With `annotate`, step annotations carry an instruction,
a thought per step and a question/answer pair at step 0.
"""

from __future__ import annotations

import numpy as np

from worldbagel.data.trajectory import Episode

MOVES = {"move left": (0, -1), "move right": (0, 1), "move up": (-1, 0), "move down": (1, 0)}


def _draw(size: int, pos: list[int], side: int, colour: np.ndarray) -> np.ndarray:
    img = np.full((size, size, 3), 20, dtype=np.uint8)
    img[pos[0] : pos[0] + side, pos[1] : pos[1] + side] = colour
    return img


def toy_episodes(
    n: int,
    steps: int = 6,
    size: int = 64,
    side: int = 16,
    step: int = 8,
    seed: int = 0,
    annotate: bool = False,
) -> list[Episode]:
    """`n` random episodes of `steps` actions each (seeded)."""
    rng = np.random.default_rng(seed)
    names = list(MOVES)
    out = []
    for e in range(n):
        colour = rng.integers(80, 256, size=3).astype(np.uint8)
        pos = [int(rng.integers(0, size - side)), int(rng.integers(0, size - side))]
        frames, actions, notes = [_draw(size, pos, side, colour)], [], []
        for t in range(steps):
            a = int(rng.integers(len(names)))
            dr, dc = MOVES[names[a]]
            note = {}
            if annotate:
                note["thought"] = f"the square should go {names[a].split()[1]}"
                if t == 0:
                    note["instruction"] = "move the square"
                    side_name = "top" if pos[0] < (size - side) // 2 else "bottom"
                    note["qa"] = [{"q": "where is the square?", "a": side_name}]
            pos = [min(max(pos[0] + dr * step, 0), size - side), min(max(pos[1] + dc * step, 0), size - side)]
            frames.append(_draw(size, pos, side, colour))
            actions.append(a)
            notes.append(note)
        out.append(
            Episode.from_arrays(
                f"toy-{seed}-{e}", np.stack(frames), actions, [names[a] for a in actions], annotations=notes
            )
        )
    return out
