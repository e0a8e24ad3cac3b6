"""WorldModel: BAGEL as an action-conditioned video predictor and a reasoner over observation histories.

    wm = WorldModel(pipe, codec)                 # any BAGEL folder: BAGEL-7B-MoT or a small one
    wm.reset(first_obs, instruction="reach the green cell")
    wm.act(1); frame = wm.predict()[0]           # next frame for action 1, re-encoded into the history
    frames = wm.imagine([0, 0, 3])               # open loop on a fork: the real history is untouched
    answer = wm.reason("Where is the goal?")

The history is interleaved exactly like BAGEL's edit data: each frame enters as clean VAE latents (+ ViT
tokens), each action as a text segment. Prediction uses the official edit-style CFG contexts: the main
context, the context before the latest action text (text guidance) and a text-only context (image guidance).
The window keeps the instruction plus the newest `max_history_frames` frames (and the actions between them:
the kept history starts at a frame, as a training window does), so long rollouts keep memory bounded.

With `outcome_text` (a model trained on `outcome` annotations, `plan.outcomes`), every predicted frame that
follows an action is preceded by the model's own words about it (greedy text, e.g. "at 3,5 facing right"):
the text is generated after the action, appended to the history, and the frame is drawn conditioned on it.
`last_outcome` holds the latest one.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from worldbagel.actions import ActionCodec
from worldbagel.errors import bad_argument
from worldbagel.inference.context import Context, Segment, extend_batch, window_batch
from worldbagel.inference.generate import ImageRequest, generate_images, generate_text_batch
from worldbagel.inference.pipeline import BagelPipeline
from worldbagel.inference.sampler import SamplerConfig
from worldbagel.inference.value_checks import require_finite, require_int
from worldbagel.think_text import VLM_THINK_SYSTEM_PROMPT, split_think

logger = logging.getLogger(__name__)


@dataclass
class WorldModelConfig:
    """How the world model keeps its history and samples frames."""

    max_history_frames: int = 4
    """Frames kept in the context window (with their actions); older ones are dropped and the rest re-prefilled."""
    use_vit: bool = True
    """Also feed every frame through the ViT (understanding tokens), as BAGEL's edit data does."""
    reencode: str = "pixels"
    """How a predicted frame enters the history: `pixels` (decode, then encode like a real frame) or
    `latents` (reuse the generated latents: cheaper, no VAE round trip)."""
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    """Rectified-flow sampling knobs (steps, shift, CFG scales, interval, renorm)."""
    image_cfg: bool = True
    """Keep a text-only context for image guidance (costs one text prefill per action)."""
    window_slack: int = 2
    """Extra frames allowed before the window is applied (re-prefilling then happens once every
    `window_slack + 1` frames instead of every frame)."""
    outcome_text: bool = False
    """Before each predicted frame that follows an action, generate the model's outcome text and put it in
    the history (for models trained with `plan.outcomes` on `outcome` annotations)."""
    outcome_max_tokens: int = 32
    """Longest outcome text (tokens)."""
    think_prompt: str | None = None
    """The system text think mode puts before a question (`reason(..., think=True)`, `ReasoningPolicy`): the
    one the model was trained with. None: the official VLM thinking prompt (the BAGEL release)."""

    def check(self) -> None:
        if self.max_history_frames < 1:
            raise bad_argument("max_history_frames", self.max_history_frames, "keep at least 1 frame")
        if self.reencode not in ("pixels", "latents"):
            raise bad_argument("reencode", self.reencode, "use 'pixels' or 'latents'")
        if self.outcome_max_tokens < 1:
            raise bad_argument("outcome_max_tokens", self.outcome_max_tokens, "must be >= 1")
        self.sampler.check()


class WorldModel:
    """A BAGEL pipeline plus an action codec, holding one observed/imagined history."""

    def __init__(
        self, pipe: BagelPipeline, codec: ActionCodec | None = None, config: WorldModelConfig | None = None
    ):
        self.pipe = pipe
        self.codec = codec
        self.config = config or WorldModelConfig()
        self.config.check()
        self._main: Context | None = None
        self._text_only: Context | None = None
        self._before_action: Context | None = None
        self._has_instruction = False
        self.frame_size: tuple[int, int] | None = None
        self.frames_seen = 0
        self.last_outcome: str | None = None
        """The latest outcome text (`outcome_text`), None before the first one."""
        self._said: deque[tuple[int, ...]] = deque(maxlen=8)
        # recent outcome texts (framed ids), shared with every fork: guesses for the next ones (speed only,
        # the verified greedy text is the same without them)

    # ------------------------------------------------------------------ history
    @property
    def context(self) -> Context:
        if self._main is None:
            raise bad_argument("history", None, "call reset(first_obs) before using the world model")
        return self._main

    def reset(self, first_obs: np.ndarray, instruction: str | None = None) -> WorldModel:
        """Start a new history from a first observation (and an optional instruction)."""
        _check_frame("first_obs", first_obs)  # before the old history is dropped
        self._main = self.pipe.new_context()
        self._text_only = self.pipe.new_context() if self.config.image_cfg else None
        self._has_instruction = bool(instruction)
        if instruction:
            self._main.add_text(instruction)
            if self._text_only is not None:
                self._text_only.add_text(instruction)
        self._before_action = None
        self.frames_seen = 0
        self.frame_size = None
        self.last_outcome = None
        return self.observe(first_obs)

    def observe(self, obs: np.ndarray) -> WorldModel:
        """Append an observed frame (uint8 [H, W, 3])."""
        obs = _check_frame("obs", obs)
        self.frame_size = self.pipe.vae_transform.target_size(obs.shape[0], obs.shape[1])
        append_frames([self], [self.context.image_segments(obs, vae=True, vit=self.config.use_vit)])
        return self

    def _windowed(self, incoming: list[Segment]) -> list[Segment]:
        """What the main context must prefill to append a frame's segments: the frame alone, or (when the window
        moves) the kept history plus the frame after emptying the cache, so a window costs no extra forward.
        The main context holds frames, actions and outcome texts (one group each); the kept history starts at a
        frame (the newest n frames and everything after the oldest of them), as training windows do."""
        keep = 1 if self._has_instruction else 0
        n, slack = self.config.max_history_frames, self.config.window_slack
        everything = list(self.context.segments) + list(incoming)
        groups = list(dict.fromkeys(s.group for s in everything))
        frames = list(dict.fromkeys(s.group for s in everything if s.kind != "text"))
        if len(frames) <= n + slack:
            return list(incoming)
        return self.context.drop_groups(keep + len(groups) - groups.index(frames[-n]), keep, incoming)

    def act(self, action: Any) -> WorldModel:
        """Append an action (raw env action through the codec, or action text: checked by the codec when there
        is one, which also gives its canonical spelling, as an env action would)."""
        act_batch([self], [action])
        return self

    def _encode(self, action: Any) -> str:
        """The action text of `action`: raw actions through the codec; text decoded by the codec (raising
        InvalidAction for text outside its vocabulary) and re-encoded, or taken as it is without a codec."""
        if isinstance(action, str):
            if self.codec is not None:
                return self.codec.encode(self.codec.decode(action))
            if not action.strip():
                raise bad_argument("action", action, "give non-empty action text, e.g. 'move up'")
            return action
        if self.codec is None:
            raise bad_argument("action", action, "this world model has no action codec; pass action text")
        return self.codec.encode(action)

    def fork(self) -> WorldModel:
        """A branch sharing this history (no recomputation, no tensor copy)."""
        other = WorldModel.__new__(WorldModel)
        other.__dict__.update(self.__dict__)
        other._main = self.context.fork()
        other._text_only = self._text_only.fork() if self._text_only is not None else None
        other._before_action = self._before_action.fork() if self._before_action is not None else None
        return other

    # ------------------------------------------------------------------ prediction
    def _request(self, noise: torch.Tensor | None) -> ImageRequest:
        return ImageRequest(
            self.context,
            self._before_action if self._before_action is not None else self.context,
            self._text_only,
            noise,
        )

    def _frame_segments(
        self, latents: torch.Tensor, grid: tuple[int, int], frame: np.ndarray
    ) -> list[Segment]:
        """A predicted frame's history segments: its latents as they are, or (`pixels`) the decoded frame
        encoded again like a real one."""
        if self.config.reencode == "latents":
            return self.context.latent_segments(latents, grid, frame if self.config.use_vit else None)
        return self.context.image_segments(frame, vae=True, vit=self.config.use_vit)

    def predict(
        self, n_frames: int = 1, actions: list | None = None, generator: torch.Generator | None = None
    ) -> list[np.ndarray]:
        """Predict `n_frames` next frames; frame i first appends actions[i] when given. Each predicted frame
        is re-encoded into the history so the next prediction sees it."""
        require_int("n_frames", n_frames, 1, "predict at least 1 frame")
        if actions is not None and len(actions) != n_frames:
            raise bad_argument("actions", actions, f"give exactly n_frames={n_frames} actions (or none)")
        return predict_batch([self], n_frames, [actions] if actions is not None else None, generator)[0]

    def imagine(self, action_sequence: list, generator: torch.Generator | None = None) -> list[np.ndarray]:
        """Open-loop rollout of an action sequence on a fork (this history is not changed)."""
        if len(action_sequence) == 0:
            raise bad_argument("action_sequence", action_sequence, "give at least one action to imagine")
        return self.fork().predict(len(action_sequence), list(action_sequence), generator)

    def continue_video(
        self, frames: list[np.ndarray], n: int, generator: torch.Generator | None = None
    ) -> list[np.ndarray]:
        """Observe `frames` (a clip) from scratch and predict the next `n` frames with no actions."""
        if len(frames) == 0:
            raise bad_argument("frames", frames, "give at least one frame to continue")
        self.reset(frames[0])
        for f in frames[1:]:
            self.observe(f)
        return self.predict(n, generator=generator)

    # ------------------------------------------------------------------ text
    def reason(self, question: str, think: bool = False, max_new_tokens: int = 128, **sampling) -> str:
        """Answer a question about the history (greedy unless sampling options are given). With think, the
        thinking system text (`think_prompt`) comes first and only the answer after </think> is returned
        (`reason_full` returns both)."""
        return self.reason_full(question, think, max_new_tokens, **sampling)[1]

    @property
    def think_prompt(self) -> str:
        """The system text of think mode (`config.think_prompt`, else the official VLM one)."""
        return self.config.think_prompt or VLM_THINK_SYSTEM_PROMPT

    def reason_full(
        self, question: str, think: bool = False, max_new_tokens: int = 128, **sampling
    ) -> tuple[str, str]:
        """(thought, answer) for a question; thought is '' without think."""
        if not isinstance(question, str) or not question.strip():
            raise bad_argument("question", question, "ask a question, e.g. 'Where is the goal?'")
        ctx = self.context.fork()
        if think:
            ctx.add_text(self.think_prompt)
        ctx.add_text(question)
        out = generate_text_batch([ctx], max_new_tokens=max_new_tokens, **sampling)[0]
        return split_think(out.text) if think else ("", out.text.strip())


def _check_frame(name: str, obs) -> np.ndarray:
    """An observed frame as an array: RGB [H, W, 3], finite when it is float."""
    obs = np.asarray(obs)
    if obs.ndim != 3 or obs.shape[-1] != 3:
        raise bad_argument(f"{name}.shape", obs.shape, "expected an RGB frame [H, W, 3]")
    require_finite(name, obs)
    return obs


def predict_batch(
    worlds: list[WorldModel],
    n_frames: int = 1,
    actions: list[list] | None = None,
    generator: torch.Generator | None = None,
    absorb: bool = True,
) -> list[list[np.ndarray]]:
    """Predict `n_frames` frames for several world models (e.g. forked candidates) with ONE packed forward per
    denoising step across all of them.

    `absorb=False` leaves the LAST predicted frame out of the histories (decoded only): what a planner wants
    for the final imagined step, saving a VAE encode, a ViT encode and a prefill per world."""
    require_int("n_frames", n_frames, 1, "predict at least 1 frame")
    if actions is not None and any(len(acts) != n_frames for acts in actions):
        raise bad_argument("actions", actions, f"give each world exactly n_frames={n_frames} actions")
    for w, acts in zip(worlds, actions or []):  # every action checked before the first frame is predicted
        for a in acts:
            w._encode(a)
    if not worlds:
        return []
    outs: list[list[np.ndarray]] = [[] for _ in worlds]
    for i in range(n_frames):
        if actions is not None:
            act_batch(worlds, [acts[i] for acts in actions])
        size = worlds[0].frame_size
        if size is None:
            raise bad_argument("history", None, "call reset(first_obs) before predicting")
        _say_outcomes([w for w in worlds if w.config.outcome_text and w._before_action is not None])
        grid = worlds[0].pipe.latent_grid(*size)
        reqs = [w._request(None) for w in worlds]
        cfg = worlds[0].config.sampler
        if any(w._before_action is None for w in worlds) and cfg.cfg_text_scale > 1:
            # no action since the last frame (video continuation): nothing to drop for text guidance
            cfg = replace(cfg, cfg_text_scale=1.0)
        if any(w._text_only is None for w in worlds) and cfg.cfg_img_scale > 1:
            cfg = replace(cfg, cfg_img_scale=1.0)  # image_cfg=False: no text-only context kept
        results = generate_images(reqs, grid, cfg, generator)
        frames = worlds[0].pipe.decode_batch([res.latents for res in results], grid)
        for j, frame in enumerate(frames):
            outs[j].append(frame)
        if absorb or i < n_frames - 1:
            segs = [w._frame_segments(res.latents, res.grid, f) for w, res, f in zip(worlds, results, frames)]
            append_frames(worlds, segs)
    return outs


def act_batch(worlds: list[WorldModel], actions: list) -> None:
    """Append one action (raw env action through the codec, or action text) to each world: one packed forward
    for all main contexts and one for all text-only contexts."""
    texts = [w._encode(a) for w, a in zip(worlds, actions)]  # all checked before any context changes
    for w in worlds:
        w._before_action = w.context.fork()
    extend_batch([w.context for w in worlds], [[w.context.text_segment(t)] for w, t in zip(worlds, texts)])
    guided = [(w._text_only, t) for w, t in zip(worlds, texts) if w._text_only is not None]
    extend_batch([c for c, _ in guided], [[c.text_segment(t)] for c, t in guided])


def append_frames(worlds: list[WorldModel], segments: list[list[Segment]]) -> None:
    """Append one frame's segments to each world's history, windows applied, in one packed forward (plus one
    re-prefill of the text-only contexts whose window moves)."""
    extend_batch([w.context for w in worlds], [w._windowed(segs) for w, segs in zip(worlds, segments)])
    for w in worlds:
        w.frames_seen += 1
        w._before_action = None
    # the text-only context (image guidance) holds the instruction and the actions
    by_window: dict[tuple[int, int], list[Context]] = {}
    for w in worlds:
        if w._text_only is not None:
            keep = 1 if w._has_instruction else 0
            n = w.config.max_history_frames
            if w._text_only.num_groups > keep + n + w.config.window_slack:
                by_window.setdefault((keep + n, keep), []).append(w._text_only)
    for (max_groups, keep), contexts in by_window.items():
        window_batch(contexts, max_groups, keep)


def _say_outcomes(worlds: list[WorldModel]) -> None:
    """Generate each world's outcome text after its latest action (one batched decode) and append it to its
    history, where the next frame is drawn from."""
    if not worlds:
        return
    limit = max(w.config.outcome_max_tokens for w in worlds)
    said = worlds[0]._said
    outs = generate_text_batch([w.context for w in worlds], max_new_tokens=limit, draft_from=list(said))
    bos, eos = worlds[0].pipe.special.bos, worlds[0].pipe.special.eos
    for ids in dict.fromkeys((bos, *o.ids, eos) for o in outs if o.stopped):
        if ids not in said:
            said.append(ids)
    texts = [out.text.strip() for out in outs]
    for w, text in zip(worlds, texts):
        w.last_outcome = text
    segs = [[w.context.text_segment(text)] for w, text in zip(worlds, texts)]
    extend_batch([w.context for w in worlds], segs)
