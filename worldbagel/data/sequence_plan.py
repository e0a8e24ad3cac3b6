"""Sequence plans: which frames and texts of an episode window form one training sample, and what carries loss.

A plan is a torch-free list of `PlanItem`s; `worldbagel.data.packing` turns plans into rows of a packed
sequence (with conditioning dropout) and packs several plans into one token budget.

The plan of one window (context frames f_0 .. f_{K-1} spaced by the frame skip k, horizon H):

    item                                  kind   loss          droppable (CFG)   rope
    instruction              (optional)   text   -             text              +n tokens
    for each context frame f_i:
        clean VAE(f_i)                    vae    -             vae               +1
        ViT(f_i)                 (vit)    vit    -             vit               +1
        question about f_i       (any)    text   -             never             +n
        answer                   (any)    text   CE            never             +n
        thought at f_i           (any)    text   CE            never             +n
        action a(f_i -> f_i + k)          text   -             text              +n
        (outcome of f_{i+1}, before it: see below)
    target_mode = "chain" (default), for each target j = 1 .. H:
        outcome of f_{K-1+j}   (outcomes) text   CE            never             +n
        noisy VAE(f_{K-1+j})              vae    MSE           never             +0 (split `noise`)
        if j < H (the target is context for later targets), its clean copies as a context frame above:
        clean VAE, ViT, question/answer, thought, action  (official edit convention: noised target first,
        then its clean VAE + ViT copies, spec 6.4)
    target_mode = "group":
        the actions a(f_K) .. a(f_{K+H-2}) as text items (droppable), then ONE noisy group of the H target
        frames: a single `full` split spanning all of them, one timestep, rope advancing by k between frames
        and not after the last (spec 6.5)

With `think_samples`, a frame's think-mode triple (system text, question, answer) leaves the windows and becomes
a sample of its own: [instruction, clean VAE(f) + ViT(f) (never dropped), system, question, answer (CE)], no target.

An action spanning k > 1 env steps is the k action texts joined by `action_separator`; an empty action text
(a video clip has none) adds no item, so such frames follow each other as in a continuation. Items dropped by CFG
dropout: a text adds nothing; an image adds no tokens but still advances the rope by 1 (spec 6.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from worldbagel.errors import bad_argument

ItemKind = Literal["text", "vae", "vit"]
TARGET_MODES = ("chain", "group")


@dataclass
class PlanConfig:
    """How episode windows become sequence plans (see the module docstring)."""

    context_frames: int = 1
    """K: observation frames in context before the first target."""
    min_context_frames: int | None = None
    """Also make windows near the episode start with fewer context frames (down to this many); None = K only."""
    horizon: int = 1
    """H: frames predicted per sample."""
    frame_skip: int = 1
    """k: env steps between consecutive frames of a window (their actions are joined)."""
    window_stride: int = 1
    """Env steps between the anchors (last context frame) of consecutive windows of an episode."""
    target_mode: str = "chain"
    """chain: each target is its own noisy image, followed by its clean copies; group: one joint noisy group."""
    vit: bool = True
    """Add a ViT copy of every context frame (needs a model with the understanding vision tower)."""
    instruction: bool = True
    """Open the sample with the episode's instruction text when it has one."""
    text_targets: bool = True
    """Add the episode's thoughts and question/answer pairs (CE loss on thoughts and answers)."""
    outcomes: bool = True
    """Chain mode: put a frame's `outcome` annotation (what the action led to, e.g. "at 3,5 facing right")
    between the action and that frame, with CE, wherever a frame follows an action. A world model trained so
    says the outcome before it draws the frame (`WorldModelConfig.outcome_text`)."""
    action_separator: str = ", "
    """Joins the action texts of the k env steps between two frames."""
    think_samples: bool = False
    """Think-mode questions (a Q&A with a system text, e.g. `annotate=gridworld-think`) leave the windows and
    become samples of their own: [instruction, clean VAE + ViT of the frame, system, question, answer]. A long
    thought then never sits between a context frame and the frame predicted from it (50-400 tokens there at
    a varying distance break the frame copy), and every think question is trained, not only those of windows
    that keep their annotations."""
    success_repeat: int = 1
    """Windows whose last target is the final frame of a successful episode (the goal reached: one window per
    episode, ~1 % of them) appear this many times per epoch, so the rare arrival is learned like the rest."""

    def __post_init__(self) -> None:
        for name in ("context_frames", "horizon", "frame_skip", "window_stride", "success_repeat"):
            if int(getattr(self, name)) < 1:
                raise bad_argument(f"plan.{name}", getattr(self, name), "must be an integer >= 1")
        if self.min_context_frames is not None and not 1 <= self.min_context_frames <= self.context_frames:
            raise bad_argument(
                "plan.min_context_frames",
                self.min_context_frames,
                f"must be between 1 and context_frames={self.context_frames} (or null)",
            )
        if self.target_mode not in TARGET_MODES:
            raise bad_argument("plan.target_mode", self.target_mode, f"use one of {TARGET_MODES}")


@dataclass
class DropoutConfig:
    """Conditioning-dropout probabilities for classifier-free guidance (per droppable item).

    The defaults are the paper's text 0.1 / ViT 0.5 / VAE 0.1; `dropout_preset("release")` (`dropout=release` on
    the command line) gives the released training script's 0.1 / 0.3 / 0.3 (`ModelArguments` of
    train/pretrain_unified_navit.py, TRAIN.md; spec 6.2). Only items marked droppable (`PlanItem.cfg`) are
    dropped, never a CE or MSE target: the official `pack_sequence` drops every `enable_cfg` item, and its
    `_add_text` marks texts droppable by default even when they carry CE, so there a CE text can vanish with
    its loss; worldbagel's plans never mark a CE text droppable (answers, thoughts and outcomes are dropped
    together only by `annotations`).
    """

    text: float = 0.1
    """Action / instruction texts."""
    vit: float = 0.5
    """ViT copies of context frames."""
    vae: float = 0.1
    """Clean VAE context frames."""
    annotations: float = 0.0
    """Probability of dropping ALL question/answer/thought texts of a sample (one draw per sample, their CE
    goes with them), so frames are also predicted from contexts without them, as at inference time (a
    world model asked only for the next frame has no answers in its history to lean on)."""

    def __post_init__(self) -> None:
        for name in ("text", "vit", "vae", "annotations"):
            p = getattr(self, name)
            if not 0.0 <= float(p) <= 1.0:
                raise bad_argument(f"dropout.{name}", p, "a probability must be in [0, 1]")


DROPOUT_PRESETS: dict[str, tuple[float, float, float]] = {
    "paper": (0.1, 0.5, 0.1),
    "release": (0.1, 0.3, 0.3),
}
"""Named (text, vit, vae) conditioning-dropout probabilities: the paper's, and the released training script's
(configs/dropout/<name>.yaml holds the same values for the command line)."""


def dropout_preset(name: str, annotations: float = 0.0) -> DropoutConfig:
    """The `DropoutConfig` of a named preset (`DROPOUT_PRESETS`)."""
    if name not in DROPOUT_PRESETS:
        raise bad_argument("dropout preset", name, f"use one of {sorted(DROPOUT_PRESETS)}")
    text, vit, vae = DROPOUT_PRESETS[name]
    return DropoutConfig(text=text, vit=vit, vae=vae, annotations=annotations)


@dataclass
class PackingConfig:
    """Token budget of one packed batch (official fine-tune recipe: 10240 / 11520 / 10240)."""

    expected_tokens: int = 2048
    """Close a pack once it holds at least this many tokens."""
    max_tokens: int = 2560
    """Never exceed this many tokens in a pack."""
    max_tokens_per_sample: int = 2048
    """Skip samples longer than this."""

    def __post_init__(self) -> None:
        if not 0 < self.expected_tokens <= self.max_tokens:
            raise bad_argument(
                "packing.expected_tokens",
                self.expected_tokens,
                f"must be positive and <= packing.max_tokens={self.max_tokens}",
            )
        if not 0 < self.max_tokens_per_sample <= self.max_tokens:
            raise bad_argument(
                "packing.max_tokens_per_sample",
                self.max_tokens_per_sample,
                f"must be positive and <= packing.max_tokens={self.max_tokens}",
            )


@dataclass(frozen=True)
class PlanItem:
    """One segment of a sample."""

    kind: ItemKind
    role: str
    """instruction, action, question, answer, thought, outcome (text); context, copy, target (images)."""
    text: str | None = None
    frame: int | None = None
    """Episode frame index (images)."""
    loss: bool = False
    """Text: CE on its tokens; vae: a noisy target with MSE on the velocity."""
    cfg: bool = False
    """Droppable by conditioning dropout."""
    group: int | None = None
    """Noisy targets: index of the noise group inside the plan (one timestep per group)."""
    advance: int | None = None
    """Rope advance after this item when it differs from the default (group frames)."""
    join: bool = False
    """Extends the previous item's attention split (the frames of a multi-frame group)."""


@dataclass
class SequencePlan:
    """The items of one training sample, drawn from `episode` (an index into the dataset)."""

    episode: int
    context: list[int]
    """Frame indices of the context frames."""
    targets: list[int]
    """Frame indices of the predicted frames."""
    items: list[PlanItem] = field(default_factory=list)

    @property
    def frames(self) -> list[int]:
        return sorted({i.frame for i in self.items if i.frame is not None})

    @property
    def num_groups(self) -> int:
        return len({i.group for i in self.items if i.group is not None})


# ------------------------------------------------------------------------------------------------ episodes
def episode_texts(episode: Any) -> tuple[str | None, dict[int, list[tuple[str, str]]]]:
    """(instruction, {frame index: [(role, text), ...]}) from an episode's per-step annotations.

    `episode.annotations[t]` (worldbagel.data.trajectory) may hold "instruction" (the first one found is
    the episode's), "qa" (a list of {"q", "a"} about the observation at step t, i.e. frame t, optionally with
    the "system" text of think mode, placed before the question with role "system"), "thought" (the reasoning
    before the action at step t) and "outcome" (the observation the action led to: filed under frame t + 1 with
    role "outcome"). Missing annotations mean no such text.
    """
    instruction = None
    per_frame: dict[int, list[tuple[str, str]]] = {}
    for t, ann in enumerate(getattr(episode, "annotations", None) or []):
        if not ann:
            continue
        if instruction is None and ann.get("instruction"):
            instruction = str(ann["instruction"])
        for pair in ann.get("qa") or []:
            if pair.get("q") and pair.get("a"):
                if pair.get("system"):  # think mode's system text, as `WorldModel.reason` puts it first
                    per_frame.setdefault(t, []).append(("system", str(pair["system"])))
                per_frame.setdefault(t, []).extend([("question", str(pair["q"])), ("answer", str(pair["a"]))])
        if ann.get("thought"):
            per_frame.setdefault(t, []).append(("thought", str(ann["thought"])))
        if ann.get("outcome"):
            per_frame.setdefault(t + 1, []).append(("outcome", str(ann["outcome"])))
    return instruction, per_frame


def windows(num_frames: int, cfg: PlanConfig) -> list[tuple[list[int], list[int]]]:
    """All (context frame indices, target frame indices) windows of an episode with `num_frames` frames."""
    k, kmax, h = cfg.frame_skip, cfg.context_frames, cfg.horizon
    kmin = cfg.min_context_frames or kmax
    out = []
    first_anchor = (kmin - 1) * k
    for anchor in range(first_anchor, num_frames - h * k, cfg.window_stride):
        n_ctx = min(kmax, anchor // k + 1)
        context = [anchor - (n_ctx - 1 - i) * k for i in range(n_ctx)]
        targets = [anchor + j * k for j in range(1, h + 1)]
        out.append((context, targets))
    return out


def _action(actions: Sequence[str], frame: int, k: int, sep: str) -> str:
    """The action text between frame and frame + k; empty for clips without actions (no text item then)."""
    return sep.join(str(a) for a in actions[frame : frame + k] if a)


def make_plan(
    episode_index: int,
    context: list[int],
    targets: list[int],
    actions: Sequence[str],
    cfg: PlanConfig,
    instruction: str | None = None,
    texts: dict[int, list[tuple[str, str]]] | None = None,
) -> SequencePlan:
    """The plan of one window (see the module docstring). `actions[i]` is the text of the action taken at
    frame i; `texts` maps a frame index to its (role, text) annotations (from `episode_texts`)."""
    k, sep = cfg.frame_skip, cfg.action_separator
    texts = texts if cfg.text_targets and texts else {}
    items: list[PlanItem] = []
    if cfg.instruction and instruction:
        items.append(PlanItem("text", "instruction", text=instruction, cfg=True))

    def outcome(f: int) -> None:
        """The outcome text of frame f, placed after the action that led to it (chain mode only)."""
        if cfg.outcomes and cfg.target_mode == "chain":
            for trole, text in texts.get(f, []):
                if trole == "outcome":
                    items.append(PlanItem("text", "outcome", text=text, loss=True))

    def clean_frame(f: int, role: str, with_action: bool) -> None:
        items.append(PlanItem("vae", role, frame=f, cfg=True))
        if cfg.vit:
            items.append(PlanItem("vit", role, frame=f, cfg=True))
        for trole, text in texts.get(f, []):
            if trole != "outcome":
                items.append(PlanItem("text", trole, text=text, loss=trole in ("answer", "thought")))
        action = _action(actions, f, k, sep) if with_action else ""
        if action:
            items.append(PlanItem("text", "action", text=action, cfg=True))

    for i, f in enumerate(context):
        if i > 0:
            outcome(f)
        clean_frame(f, "context", with_action=True)
    if cfg.target_mode == "chain":
        for j, f in enumerate(targets):
            outcome(f)
            items.append(PlanItem("vae", "target", frame=f, loss=True, group=j))
            if j < len(targets) - 1:
                clean_frame(f, "copy", with_action=True)
    else:
        for action in (_action(actions, f, k, sep) for f in targets[:-1]):
            if action:
                items.append(PlanItem("text", "action", text=action, cfg=True))
        for j, f in enumerate(targets):
            last = j == len(targets) - 1
            items.append(
                PlanItem("vae", "target", frame=f, loss=True, group=0, advance=0 if last else k, join=j > 0)
            )
    return SequencePlan(episode_index, list(context), list(targets), items)


def _split_think(texts: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """A frame's texts without its think-mode triples, and those (system, question, answer) triples."""
    rest, triples, i = [], [], 0
    while i < len(texts):
        if texts[i][0] == "system" and i + 2 < len(texts):
            triples.append(tuple(text for _, text in texts[i : i + 3]))
            i += 3
        else:
            rest.append(texts[i])
            i += 1
    return rest, triples


def think_plans(
    episode_index: int,
    triples: dict[int, list[tuple[str, str, str]]],
    cfg: PlanConfig,
    instruction: str | None = None,
) -> list[SequencePlan]:
    """One sample per think-mode question (`PlanConfig.think_samples`; `triples[f]`: frame f's (system, question,
    answer) triples from `_split_think`): the frame, then system, question and answer (CE on the answer: the
    thought and the action after it)."""
    plans = []
    for f in sorted(triples):
        for system, question, answer in triples[f]:
            items = []
            if cfg.instruction and instruction:
                items.append(PlanItem("text", "instruction", text=instruction, cfg=True))
            items.append(PlanItem("vae", "context", frame=f))
            if cfg.vit:
                items.append(PlanItem("vit", "context", frame=f))
            items += [
                PlanItem("text", "system", text=system),
                PlanItem("text", "question", text=question),
                PlanItem("text", "answer", text=answer, loss=True),
            ]
            plans.append(SequencePlan(episode_index, [f], [], items))
    return plans


def episode_plans(episode_index: int, episode: Any, cfg: PlanConfig) -> list[SequencePlan]:
    """Every window's plan of one episode (`episode.frames` [T+1, H, W, 3], `episode.action_texts` [T])."""
    actions = list(episode.action_texts)
    num_frames = episode.length + 1 if hasattr(episode, "length") else len(episode.frames)
    if len(actions) < num_frames - 1:
        raise bad_argument(
            "episode.action_texts",
            f"{len(actions)} texts for {num_frames} frames",
            "an episode needs one action text per step (T texts for T+1 frames)",
        )
    instruction, texts = episode_texts(episode)
    triples: dict[int, list[tuple[str, str, str]]] = {}
    if cfg.think_samples:  # think-mode triples leave the windows (once per frame, not once per window)
        split = {f: _split_think(frame_texts) for f, frame_texts in texts.items()}
        texts = {f: rest for f, (rest, _) in split.items()}
        triples = {f: found for f, (_, found) in split.items() if found}
    success = bool((getattr(episode, "metadata", None) or {}).get("success"))
    plans = []
    for ctx, tgt in windows(num_frames, cfg):
        plan = make_plan(episode_index, ctx, tgt, actions, cfg, instruction, texts)
        plans += [plan] * (cfg.success_repeat if success and tgt[-1] == num_frames - 1 else 1)
    if cfg.think_samples and cfg.text_targets:
        plans += think_plans(episode_index, triples, cfg, instruction)
    return plans
