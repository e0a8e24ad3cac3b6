"""Sequence plans and packed batches: item order, splits, rope positions, loss rows, masks, CFG dropout, budgets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldbagel.data.packing import (
    ANNOTATION_ROLES,
    EpisodeFeatures,
    TextIds,
    build_batch,
    draw_dropout,
    pack_by_budget,
    plan_tokens,
)
from worldbagel.data.sequence_plan import (
    DropoutConfig,
    PackingConfig,
    PlanConfig,
    episode_plans,
    make_plan,
    windows,
)
from worldbagel.data.trajectory import Episode
from worldbagel.errors import ConfigError
from worldbagel.model.sequence import SpecialIds

SPECIAL = SpecialIds(bos=250, eos=251, start_of_image=252, end_of_image=253)
T, Z, NP, P = 4, 8, 4, 12  # latent tokens per frame (2x2 grid), features, ViT patches (2x2), patch features
NO_DROP = DropoutConfig(0.0, 0.0, 0.0)


def encode(text: str) -> list[int]:
    return [ord(c) % 200 for c in text]


def features(frames: int = 8, seed: int = 0) -> EpisodeFeatures:
    g = torch.Generator().manual_seed(seed)
    return EpisodeFeatures(
        latents=torch.randn(frames, T, Z, generator=g),
        grid=(2, 2),
        vit=torch.randn(frames, NP, P, generator=g),
        vit_grid=(2, 2),
    )


def episode(steps: int = 6, annotate: bool = True) -> Episode:
    frames = np.zeros((steps + 1, 8, 8, 3), np.uint8)
    names = [f"act{i}" for i in range(steps)]
    notes = [{"thought": f"th{i}"} if annotate else {} for i in range(steps)]
    if annotate:
        notes[0].update(instruction="goal", qa=[{"q": "q0?", "a": "ans"}])
    return Episode.from_arrays("e", frames, list(range(steps)), names, annotations=notes)


def build(plans, dropout=NO_DROP, seeds=None, feats=None, **sides):
    feats = feats or [features() for _ in plans]
    return build_batch(
        plans, feats, TextIds(encode), SPECIAL, dropout, seeds or list(range(len(plans))), **sides
    )


# ------------------------------------------------------------------------------------------------ plans
def test_windows_context_horizon_skip():
    assert windows(7, PlanConfig(context_frames=2, horizon=1)) == [
        ([0, 1], [2]),
        ([1, 2], [3]),
        ([2, 3], [4]),
        ([3, 4], [5]),
        ([4, 5], [6]),
    ]
    assert windows(7, PlanConfig(context_frames=2, horizon=2, frame_skip=2)) == [([0, 2], [4, 6])]
    grow = windows(4, PlanConfig(context_frames=3, min_context_frames=1))
    assert grow == [([0], [1]), ([0, 1], [2]), ([0, 1, 2], [3])]
    assert windows(3, PlanConfig(context_frames=2, horizon=2)) == []
    with pytest.raises(ConfigError, match="target_mode"):
        PlanConfig(target_mode="joint")


def test_successful_arrivals_repeat_per_epoch():
    won = episode(steps=4)
    won.metadata["success"] = True
    cfg = PlanConfig(context_frames=1, success_repeat=3)
    plans = episode_plans(0, won, cfg)
    # 4 windows; the one whose target is the last frame (the goal reached) three times
    assert [p.targets for p in plans] == [[1], [2], [3], [4], [4], [4]]
    assert len(episode_plans(0, episode(steps=4), cfg)) == 4  # not a success: nothing repeats
    assert len(episode_plans(0, won, PlanConfig(context_frames=1))) == 4  # default 1
    with pytest.raises(ConfigError, match="success_repeat"):
        PlanConfig(success_repeat=0)


def test_chain_plan_items_follow_the_documented_order():
    ep = episode()
    plan = episode_plans(0, ep, PlanConfig(context_frames=2, horizon=2))[0]
    got = [(i.kind, i.role, i.frame, i.text, i.loss, i.cfg) for i in plan.items]
    assert got == [
        ("text", "instruction", None, "goal", False, True),
        ("vae", "context", 0, None, False, True),
        ("vit", "context", 0, None, False, True),
        ("text", "question", None, "q0?", False, False),
        ("text", "answer", None, "ans", True, False),
        ("text", "thought", None, "th0", True, False),
        ("text", "action", None, "act0", False, True),
        ("vae", "context", 1, None, False, True),
        ("vit", "context", 1, None, False, True),
        ("text", "thought", None, "th1", True, False),
        ("text", "action", None, "act1", False, True),
        ("vae", "target", 2, None, True, False),  # noised target first ...
        ("vae", "copy", 2, None, False, True),  # ... then its clean VAE + ViT copies
        ("vit", "copy", 2, None, False, True),
        ("text", "thought", None, "th2", True, False),
        ("text", "action", None, "act2", False, True),
        ("vae", "target", 3, None, True, False),
    ]
    assert [i.group for i in plan.items if i.loss and i.kind == "vae"] == [0, 1]
    skip = make_plan(0, [0], [2], ep.action_texts, PlanConfig(frame_skip=2, vit=False, text_targets=False))
    assert [i.text for i in skip.items if i.role == "action"] == ["act0, act1"]


def test_a_think_mode_pair_puts_its_system_text_before_the_question():
    ep = episode(steps=2, annotate=False)
    ep.annotations[0]["qa"] = [
        {"q": "where?", "a": "here"},
        {"q": "next?", "a": "<think> t </think> a", "system": "S"},
    ]
    plan = episode_plans(0, ep, PlanConfig(context_frames=1, vit=False))[0]
    got = [(i.role, i.text, i.loss) for i in plan.items if i.kind == "text"]
    assert got[:5] == [
        ("question", "where?", False),
        ("answer", "here", True),
        ("system", "S", False),  # as WorldModel.reason(think=True) puts the think prompt first
        ("question", "next?", False),
        ("answer", "<think> t </think> a", True),
    ]


def test_think_samples_take_think_questions_out_of_the_windows():
    ep = episode(steps=3, annotate=False)
    ep.annotations[0]["instruction"] = "go"
    ep.annotations[1]["qa"] = [
        {"q": "where?", "a": "here"},
        {"q": "next?", "a": "<think> t </think> a", "system": "S"},
    ]
    cfg = PlanConfig(context_frames=1, think_samples=True)
    plans = episode_plans(0, ep, cfg)
    windows_, think = plans[:3], plans[3:]
    assert [p.targets for p in windows_] == [[1], [2], [3]]
    texts = [(i.role, i.text) for i in windows_[1].items if i.kind == "text"]
    assert ("question", "where?") in texts and ("answer", "here") in texts  # plain Q&A stay
    assert not any(t in ("S", "next?", "<think> t </think> a") for _, t in texts)
    assert len(think) == 1 and think[0].targets == [] and think[0].context == [1]
    got = [(i.kind, i.role, i.frame, i.text, i.loss, i.cfg) for i in think[0].items]
    assert got == [
        ("text", "instruction", None, "go", False, True),
        ("vae", "context", 1, None, False, False),  # never dropped: the walk is read from this frame
        ("vit", "context", 1, None, False, False),
        ("text", "system", None, "S", False, False),
        ("text", "question", None, "next?", False, False),
        ("text", "answer", None, "<think> t </think> a", True, False),
    ]
    # annotation dropout drops a window's notes, never a think sample's (its texts are all it has)
    drop = DropoutConfig(text=0.0, vit=0.0, vae=0.0, annotations=1.0)
    assert not any(draw_dropout(think[0], drop, np.random.default_rng(0)))
    assert any(draw_dropout(windows_[1], drop, np.random.default_rng(0)))
    # the plan packs and trains like any other: CE on the answer only, no noisy rows
    batch = build([think[0]])
    assert batch.num_mse == 0 and batch.num_ce == len(encode("<think> t </think> a")) + 1
    # without the option the think triple stays in its window, system text first
    inline = episode_plans(0, ep, PlanConfig(context_frames=1))
    assert len(inline) == 3 and ("system", "S") in [(i.role, i.text) for i in inline[1].items]


def test_outcomes_sit_between_the_action_and_the_frame_they_describe():
    ep = episode(steps=4, annotate=False)
    for t, ann in enumerate(ep.annotations):
        ann["outcome"] = f"out{t + 1}"  # step t's outcome describes frame t + 1
    plan = episode_plans(0, ep, PlanConfig(context_frames=2, horizon=2, vit=False))[0]
    got = [(i.kind, i.role, i.frame, i.text, i.loss, i.cfg) for i in plan.items]
    assert got == [
        ("vae", "context", 0, None, False, True),
        ("text", "action", None, "act0", False, True),
        ("text", "outcome", None, "out1", True, False),  # a later context frame: after its action too
        ("vae", "context", 1, None, False, True),
        ("text", "action", None, "act1", False, True),
        ("text", "outcome", None, "out2", True, False),
        ("vae", "target", 2, None, True, False),
        ("vae", "copy", 2, None, False, True),
        ("text", "action", None, "act2", False, True),
        ("text", "outcome", None, "out3", True, False),
        ("vae", "target", 3, None, True, False),
    ]
    # annotation dropout never drops an outcome (a world model always says it before drawing)
    cfg = DropoutConfig(text=0.0, vit=0.0, vae=0.0, annotations=1.0)
    dropped = draw_dropout(plan, cfg, np.random.default_rng(0))
    assert not any(d for d, item in zip(dropped, plan.items) if item.role == "outcome")
    # off, and in group mode (one joint noisy group: no frame-by-frame text), there is none
    for off in (PlanConfig(horizon=2, outcomes=False), PlanConfig(horizon=2, target_mode="group")):
        assert not any(i.role == "outcome" for i in episode_plans(0, ep, off)[0].items)
    # its tokens are CE rows of the packed batch
    with_out = build([plan])
    off = PlanConfig(context_frames=2, horizon=2, vit=False, outcomes=False)
    without = build([episode_plans(0, ep, off)[0]])
    assert with_out.num_ce - without.num_ce == sum(len(encode(t)) + 1 for t in ("out1", "out2", "out3"))


def test_packed_sample_splits_positions_and_loss_rows():
    plan = episode_plans(0, episode(), PlanConfig(context_frames=2, horizon=2))[0]
    feats = features()
    b = build([plan], feats=[feats])
    seq = b.seq
    modes = [s.mode for s in seq.layouts[0].splits]
    expected_modes = []
    for item in plan.items:
        expected_modes.append("causal" if item.kind == "text" else ("noise" if item.loss else "full"))
    assert modes == expected_modes
    lengths = [s.length for s in seq.layouts[0].splits]
    starts = np.cumsum([0, *lengths])[:-1]
    pos = seq.position_ids.tolist()
    # instruction "goal": <bos> g o a l <eos> at 0..5; first VAE image (markers + 4 tokens) all at 6; ViT at 7
    assert pos[: lengths[0]] == list(range(6))
    assert set(pos[starts[1] : starts[1] + lengths[1]]) == {6}
    assert set(pos[starts[2] : starts[2] + lengths[2]]) == {7}
    # noisy target f2 (item 11) does not advance: its clean copy (item 12) shares its position, ViT copy +1
    p_target = pos[starts[11]]
    assert set(pos[starts[11] : starts[11] + lengths[11]]) == {p_target}
    assert set(pos[starts[12] : starts[12] + lengths[12]]) == {p_target}
    assert pos[starts[13]] == p_target + 1
    assert p_target == pos[starts[10] + lengths[10] - 1] + 1  # right after the last action text
    # CE rows: answer, thoughts -> labels are the next tokens (text ids then <eos>), in order
    want = []
    for item in plan.items:
        if item.kind == "text" and item.loss:
            want += [*encode(item.text), SPECIAL.eos]
    assert seq.ce_labels.tolist() == want
    assert all(seq.gen_mask[seq.ce_idx].logical_not().tolist())
    # MSE rows: exactly the latent tokens of frames 2 and 3, in noise group 0 then 1
    assert b.num_mse == 2 * T and b.num_groups == 2
    assert torch.equal(seq.vae_tokens[b.noisy_rows], torch.cat([feats.latents[2], feats.latents[3]]))
    assert b.noise_group.tolist() == [0] * T + [1] * T
    assert torch.equal(seq.vae_idx[b.noisy_rows], seq.noisy_vae_idx)


def test_mask_hides_noisy_targets_from_everything_else():
    plan = episode_plans(0, episode(annotate=False), PlanConfig(context_frames=1, horizon=2, vit=False))[0]
    seq = build([plan]).seq
    lay = seq.layouts[0]
    mask = lay.mask()
    lengths = [s.length for s in lay.splits]
    starts = np.cumsum([0, *lengths])[:-1]
    kinds = [(i.kind, i.loss) for i in plan.items]
    first_noise = kinds.index(("vae", True))
    second_noise = len(kinds) - 1
    n0 = slice(starts[first_noise], starts[first_noise] + lengths[first_noise])
    n1 = slice(starts[second_noise], starts[second_noise] + lengths[second_noise])
    after = slice(n0.stop, n1.start)  # clean copy + action text after the first target
    assert not mask[after, n0].any()  # later clean tokens never see the noisy split
    assert not mask[n1, n0].any()  # nor does the next noisy target
    assert mask[n0, n0].all() and mask[n1, n1].all()  # bidirectional inside a noisy split
    assert mask[n0, : n0.start].all()  # noisy tokens see all earlier context
    assert mask[n1, after].all()


def test_samples_in_a_pack_never_see_each_other():
    from worldbagel.model.bagel import Bagel
    from worldbagel.model.configuration import BagelConfig, LLMConfig, ViTConfig

    cfg = BagelConfig(
        llm=LLMConfig(
            vocab_size=256,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        ),
        vit=ViTConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=2,
        ),
        vit_max_num_patch_per_side=14,
        max_latent_size=8,
    )
    cfg.vae.z_channels = 2  # Z = 2*2*2 = 8
    torch.manual_seed(0)
    model = Bagel(cfg).eval()
    model.init_weights()
    torch.nn.init.normal_(model.llm2vae.weight)
    plans = episode_plans(0, episode(), PlanConfig(context_frames=1))[:2]
    f0, f1 = features(seed=0), features(seed=1)
    sides = {"vit_max_side": 14, "latent_max_side": 8}
    a = build(plans, feats=[f0, f1], **sides)
    b = build(plans, feats=[f0, features(seed=2)], **sides)
    n0 = a.seq.sample_lengths[0]
    with torch.no_grad():
        ha, hb = model(a.seq), model(b.seq)
    assert torch.equal(ha[:n0], hb[:n0])  # sample 0 unaffected by sample 1's content
    assert not torch.allclose(ha[n0:], hb[n0:])


# ------------------------------------------------------------------------------------------------ dropout
def test_dropped_text_adds_nothing_and_dropped_images_keep_their_rope_slot():
    plan = episode_plans(0, episode(), PlanConfig(context_frames=2))[0]
    full = build([plan], dropout=DropoutConfig(1.0, 1.0, 1.0))
    kept_texts = [i for i in plan.items if i.kind == "text" and not i.cfg]
    assert all(d == (i.cfg and not i.loss) for d, i in zip(full.dropped[0], plan.items)), (
        "every droppable item is dropped at p=1, targets and annotations never"
    )
    seq = full.seq
    n_text = sum(len(encode(i.text)) + 2 for i in kept_texts)
    assert seq.num_tokens == n_text + (T + 2)  # kept texts + the target image only
    # rope: 4 dropped images (+1 each) + kept texts before the target (answers/thoughts at f0 and f1)
    target_pos = seq.position_ids[seq.noisy_vae_idx[0]].item()
    assert target_pos == 4 + n_text
    none = build([plan])
    assert none.seq.num_tokens == plan_tokens(plan, TextIds(encode), T, NP)


def test_dropout_rates_match_the_configuration():
    plan = episode_plans(0, episode(), PlanConfig(context_frames=4))[0]
    cfg = DropoutConfig(text=0.1, vit=0.5, vae=0.1)
    rng = np.random.default_rng(0)
    counts = {"text": [0, 0], "vit": [0, 0], "vae": [0, 0]}
    for _ in range(1500):
        for item, d in zip(plan.items, draw_dropout(plan, cfg, rng)):
            if item.cfg:
                counts[item.kind][0] += d
                counts[item.kind][1] += 1
            else:
                assert not d
    rates = {k: c[0] / c[1] for k, c in counts.items()}
    assert (
        abs(rates["text"] - 0.1) < 0.02 and abs(rates["vae"] - 0.1) < 0.02 and abs(rates["vit"] - 0.5) < 0.03
    )


def test_keep_one_vit_and_seeded_batches():
    plans = episode_plans(0, episode(), PlanConfig(context_frames=1))[:2]
    b = build_batch(
        plans,
        [features(), features()],
        TextIds(encode),
        SPECIAL,
        DropoutConfig(0, 1.0, 0),
        [0, 1],
        keep_one_vit=True,
    )
    vit_drops = [d for plan, ds in zip(plans, b.dropped) for i, d in zip(plan.items, ds) if i.kind == "vit"]
    assert vit_drops.count(False) == 1 and b.seq.vit_idx.numel() == NP
    again = build(plans, dropout=DropoutConfig(), seeds=[5, 6])
    other = build(plans, dropout=DropoutConfig(), seeds=[5, 6])
    assert again.dropped == other.dropped and torch.equal(again.seq.position_ids, other.seq.position_ids)


# ------------------------------------------------------------------------------------------------ groups
def test_multi_frame_group_is_one_full_split_with_frame_delta_rope():
    plan = episode_plans(
        0,
        episode(steps=7, annotate=False),
        PlanConfig(horizon=3, frame_skip=2, target_mode="group", vit=False),
    )[0]
    assert [i.role for i in plan.items] == [
        "context",
        "action",
        "action",
        "action",
        "target",
        "target",
        "target",
    ]
    b = build([plan])
    lay = b.seq.layouts[0]
    assert lay.splits[-1].mode == "full" and lay.splits[-1].length == 3 * (T + 2)
    assert [s.mode for s in lay.splits[:-1]] == ["full", "causal", "causal", "causal"]
    rows = b.seq.noisy_vae_idx
    frame_pos = b.seq.position_ids[rows].view(3, T)[:, 0].tolist()
    assert frame_pos[1] - frame_pos[0] == 2 and frame_pos[2] - frame_pos[1] == 2
    assert b.num_groups == 1 and b.noise_group.tolist() == [0] * (3 * T)
    mask = lay.mask()
    group = slice(lay.length - 3 * (T + 2), lay.length)
    assert mask[group, group].all()  # the frames are denoised jointly


# ------------------------------------------------------------------------------------------------ budgets
def test_pack_by_budget():
    cfg = PackingConfig(expected_tokens=10, max_tokens=12, max_tokens_per_sample=12)
    assert pack_by_budget([5, 5, 5, 20, 5, 3], cfg) == [[0, 1], [2, 4], [5]]
    assert pack_by_budget([8, 8], cfg) == [[0], [1]]
    with pytest.raises(ConfigError, match="expected_tokens"):
        PackingConfig(expected_tokens=20, max_tokens=10)


def test_annotation_dropout_removes_all_notes_of_a_sample_together():
    plan = episode_plans(0, episode(), PlanConfig(context_frames=2))[0]
    notes = [i for i, item in enumerate(plan.items) if item.kind == "text" and item.role in ANNOTATION_ROLES]
    assert notes and any(plan.items[i].loss for i in notes)  # answers and thoughts carry CE
    cfg = DropoutConfig(text=0.0, vit=0.0, vae=0.0, annotations=0.3)
    rng = np.random.default_rng(0)
    dropped_samples = 0
    for _ in range(1000):
        d = draw_dropout(plan, cfg, rng)
        assert len({d[i] for i in notes}) == 1  # all or none
        assert not any(d[i] for i in range(len(d)) if i not in notes)  # nothing else at these rates
        dropped_samples += d[notes[0]]
    assert abs(dropped_samples / 1000 - 0.3) < 0.05
    # disabled (the default): the same draws as before the option existed, and notes are never dropped
    a = draw_dropout(plan, DropoutConfig(), np.random.default_rng(5))
    b = draw_dropout(plan, DropoutConfig(annotations=0.0), np.random.default_rng(5))
    assert a == b and not any(a[i] for i in notes)
    with pytest.raises(ConfigError, match="annotations"):
        DropoutConfig(annotations=1.5)
