"""Reliability suite: hostile or careless input gives one clear error (a WorldBagelError naming the argument,
file or tensor) instead of a traceback, a silent NaN or a machine out of memory.

Covered here: bounded contexts (position limit, `max_context_tokens`, blocked CPU attention), weights and
config files checked at load, NaN/inf arguments, and action text checked by the codec.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from worldbagel.actions import ContinuousActionCodec, DiscreteActionCodec
from worldbagel.cli import main
from worldbagel.errors import CheckpointError, ConfigError, InvalidAction
from worldbagel.inference.context_limit import (
    ContextLimit,
    ContextTooLong,
    default_max_context_tokens,
    token_bytes,
)
from worldbagel.inference.generate import (
    ImageRequest,
    generate_images,
    generate_text,
    score_text_batch,
)
from worldbagel.inference.pipeline import BagelPipeline
from worldbagel.inference.sampler import SamplerConfig, cfg_combine, flow_schedule
from worldbagel.model import attention
from worldbagel.model.attention import SampleLayout, Split, build_mask
from worldbagel.model.bagel_folder import load_bagel
from worldbagel.model.weights_file import load_file, write_file
from worldbagel.world_model import WorldModel, WorldModelConfig

CODEC = DiscreteActionCodec(["move up", "move right", "move down", "move left"])
LONG_PROMPT = "move forward and look left. " * 3572  # 100,016 characters
NAN = float("nan")


def _limited(pipe: BagelPipeline, max_context_tokens: int) -> BagelPipeline:
    """The same model and transforms with another `max_context_tokens`."""
    return BagelPipeline(
        pipe.model,
        pipe.vae,
        pipe.tokenizer,
        pipe.vae_transform,
        pipe.vit_transform,
        max_context_tokens=max_context_tokens,
    )


# Run in a fresh process, so its peak RSS (`ru_maxrss`) is its own. A regression must not take the machine down:
# the child's address space is capped 3 GiB above what it holds after loading, so dense length x length
# attention fails there with an allocation error instead.
_CHILD = """
import json, resource, sys, time
import numpy as np
import torch
torch.set_num_threads(1)
from worldbagel.inference.pipeline import BagelPipeline
from worldbagel.model.transforms import ImageTransform
from worldbagel.world_model import WorldModel

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def measure(call):
    before, start = peak_mb(), time.perf_counter()
    try:
        result, error = call(), None
    except Exception as exc:  # report whatever happens; the test judges it
        result, error = None, f"{type(exc).__name__}: {exc}"
    return result, {"error": error, "seconds": time.perf_counter() - start, "rss_growth_mb": peak_mb() - before}

pipe = BagelPipeline.from_pretrained(
    sys.argv[1], vae_transform=ImageTransform(64, 32, 16), vit_transform=ImageTransform(56, 28, 14)
)
wm = WorldModel(pipe).reset(np.zeros((64, 64, 3), np.uint8))
prompt = "move forward and look left. " * 3572
ids = [int(i) for i in np.random.RandomState(0).randint(10, 300, size=3998)]
vm = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize:")][0] * 1024
hard = resource.getrlimit(resource.RLIMIT_AS)[1]
cap = vm + 3 * 2**30 if hard == resource.RLIM_INFINITY else min(vm + 3 * 2**30, hard)
resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
out = {}
ctx, out["long_context"] = measure(lambda: pipe.new_context().add_text(ids))  # first: ru_maxrss is a peak
out["long_context"]["tokens"] = ctx.num_tokens if ctx is not None else None
del ctx
_, out["generate"] = measure(lambda: pipe.interleave_contexts([prompt]))
_, out["reason"] = measure(lambda: wm.reason(prompt))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def isolated(tiny_dir) -> dict:
    """What `_CHILD` measured on the tiny fixture: a 4,000-token context (allowed, just under the 4,096
    positions), then a 100k-character prompt through `generate`'s and `reason`'s API."""
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tiny_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ============================================================================================ bounded contexts
@pytest.mark.parametrize("entry", ["generate", "reason"])
def test_a_100k_character_prompt_fails_at_once_in_little_memory(isolated, entry):
    r = isolated[entry]
    assert r["error"] is not None and r["error"].startswith("ContextTooLong"), r["error"]
    assert re.search(r"plus [\d,]{6} new ones would reach rope position [\d,]{6} but", r["error"])
    assert "max_position_embeddings is 4,096" in r["error"] and "shorten" in r["error"]
    assert r["seconds"] < 1.0, r
    assert r["rss_growth_mb"] < 1024, r


def test_a_long_allowed_context_attends_in_bounded_memory(isolated):
    # one dense block would hold 4 heads x 4000^2 scores, their softmax and a 2 x 4000^2 additive mask (about
    # 690 MB measured); blocks of query rows (BLOCK_SCORES) about 220 MB in all
    r = isolated["long_context"]
    assert r["error"] is None and r["tokens"] == 4000, r
    assert r["rss_growth_mb"] < 350, r


def test_long_prompt_on_the_command_line_is_one_error(tiny_dir, tmp_path, capsys, frame):
    Image.fromarray(frame).save(tmp_path / "in.png")
    model = ["model=tiny", f"model.path={tiny_dir}"]
    rc = main(["generate", *model, f"prompt={LONG_PROMPT}", "output=text", f"out={tmp_path / 'a.txt'}"])
    out = capsys.readouterr().out
    assert rc == 1 and "context too long" in out and "Traceback" not in out
    assert not (tmp_path / "a.txt").exists()
    rc = main(["reason", *model, f"image={tmp_path / 'in.png'}", f"question={LONG_PROMPT}"])
    out = capsys.readouterr().out
    assert rc == 1 and "context too long" in out and "Traceback" not in out


def test_every_append_checks_max_context_tokens_and_leaves_the_context_unchanged(tiny_pipe, frame):
    pipe = _limited(tiny_pipe, 60)
    ctx = pipe.new_context().add_image(frame)  # 18 VAE + 18 ViT tokens, 2 positions
    before = (ctx.num_tokens, ctx.rope, ctx.segments)
    with pytest.raises(ContextTooLong, match=r"68 tokens but max_context_tokens is 60") as err:
        ctx.add_text(list(range(10, 40)))  # 30 ids + 2 markers
    assert "max_context_tokens" in str(err.value) and "shorten" in str(err.value)
    with pytest.raises(ContextTooLong, match="72 tokens"):
        ctx.add_image(frame)
    assert (ctx.num_tokens, ctx.rope, ctx.segments) == before
    ctx.add_text(list(range(10, 30)))  # 22 tokens: 58 in all, fits
    assert ctx.num_tokens == 58


def test_a_window_re_prefill_that_would_not_fit_leaves_the_context_unchanged(tiny_pipe, frame):
    from worldbagel.inference.context import Segment

    pipe = _limited(tiny_pipe, 120)
    ctx = pipe.new_context().add_image(frame).add_image(frame).add_image(frame)  # 108 tokens, 3 groups
    big = Segment("text", torch.arange(10, 100), group=99)  # 92 tokens
    before = (ctx.cache, ctx.rope, ctx.segments)
    with pytest.raises(ContextTooLong, match="window re-prefill of 128 tokens"):
        ctx.drop_groups(2, incoming=[big])  # keeps one image (36) + the text (92)
    assert (ctx.cache, ctx.rope, ctx.segments) == before


def test_position_limit_is_checked_separately_from_the_token_budget(tiny_pipe, frame):
    pipe = _limited(tiny_pipe, 10_000)
    pipe.context_limit = ContextLimit(max_positions=12, max_tokens=10_000)
    ctx = pipe.new_context().add_image(frame).add_image(frame)  # 72 tokens but only 4 positions
    assert (ctx.num_tokens, ctx.rope) == (72, 4)
    with pytest.raises(ContextTooLong, match=r"rope position 13 .* max_position_embeddings is 12"):
        ctx.add_text(list(range(10, 17)))  # 9 positions more


def test_image_and_scoring_queries_are_checked_before_any_forward(tiny_pipe, frame, monkeypatch):
    pipe = _limited(tiny_pipe, 46)
    ctx = pipe.new_context().add_image(frame)  # 36 tokens
    calls = []
    monkeypatch.setattr(pipe.model, "forward_packed", lambda *a, **k: calls.append(1))
    with pytest.raises(ContextTooLong, match="54 tokens"):  # + 16 noisy latents + 2 markers
        generate_images([ImageRequest(ctx)], (4, 4), SamplerConfig(num_steps=3, cfg_text_scale=1.0))
    with pytest.raises(ContextTooLong):
        score_text_batch([ctx], ["x" * 20])
    assert calls == []


def test_text_generation_stops_at_the_limit_with_the_same_tokens(tiny_pipe, frame):
    full = generate_text(tiny_pipe.new_context().add_image(frame), max_new_tokens=20)
    limited = generate_text(_limited(tiny_pipe, 36 + 5).new_context().add_image(frame), max_new_tokens=20)
    assert 1 <= len(limited.ids) <= 5
    assert limited.ids == full.ids[: len(limited.ids)]
    assert limited.stopped or len(limited.ids) == 5


def test_max_context_tokens_comes_from_the_model_config_and_defaults_to_free_memory(tiny_dir, tiny_pipe):
    from worldbagel.world_model_loader import load_pipeline

    pipe = load_pipeline({"name": "tiny", "path": str(tiny_dir), "max_context_tokens": 500})
    assert pipe.context_limit.max_tokens == 500 and pipe.context_limit.max_positions == 4096
    assert tiny_pipe.context_limit.tokens_from_memory and tiny_pipe.context_limit.max_tokens > 4096
    config = tiny_pipe.model.config
    per_token = token_bytes(config, torch.float32)
    assert per_token == 2 * (2 * 2 * 2 * 16 * 4) + (3 * 64 + 2 * 4 * 16 + 3 * 160) * 4
    assert default_max_context_tokens(config, torch.float32, 2 * 1000 * per_token) == 1000
    assert default_max_context_tokens(config, torch.float32, None) == 4096
    with pytest.raises(ConfigError, match="max_context_tokens"):
        _limited(tiny_pipe, 0)


def test_blocked_attention_equals_one_block_forward_and_backward(monkeypatch):
    torch.manual_seed(0)
    splits = [Split(5, "causal"), Split(7, "full"), Split(3, "causal"), Split(6, "noise"), Split(2, "causal")]
    past = 4
    lay = SampleLayout(splits, past)
    dense = build_mask(splits, past)
    for start in range(lay.length):
        for stop in range(start + 1, lay.length + 1):
            rows = lay.mask_rows(start, stop)
            assert torch.equal(rows, dense[start:stop, : rows.shape[1]])
            assert not dense[start:stop, rows.shape[1] :].any()  # the keys left out are never visible

    def run(layouts):
        q = torch.randn(23, 4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        k, v = (
            torch.randn(23, 2, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(s))
            for s in (2, 3)
        )
        pk, pv = (
            torch.randn(past, 2, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(s))
            for s in (4, 5)
        )
        q.requires_grad_(True)
        out = attention.attend_packed_sdpa(q, k, v, layouts, [(pk, pv)])
        out.square().sum().backward()
        return out.detach(), q.grad

    ref_out, ref_grad = run([SampleLayout(splits, past)])
    used = []
    real = attention._blocked_attention
    monkeypatch.setattr(attention, "_blocked_attention", lambda *a: used.append(a[4]) or real(*a))
    for budget in (1, 4 * 27 * 3, 4 * 27 * 10):  # 1, 3 and 10 query rows per block
        monkeypatch.setattr(attention, "BLOCK_SCORES", budget)
        out, grad = run([SampleLayout(splits, past)])
        torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)
    assert used == [1, 3, 10]


def test_blocked_attention_keeps_model_outputs(tiny_pipe, frame, monkeypatch):
    def logits():
        ctx = tiny_pipe.new_context().add_image(frame).add_text("where is the goal?")
        return generate_text(ctx, max_new_tokens=3, return_logits=True).logits

    ref = logits()
    monkeypatch.setattr(attention, "BLOCK_SCORES", 4 * 64 * 5)  # a few query rows per block
    for a, b in zip(logits(), ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ============================================================================================ weights at load
@pytest.fixture
def folder_copy(tiny_dir, tmp_path):
    """A writable copy of the tiny fixture folder."""
    return Path(shutil.copytree(tiny_dir, tmp_path / "model"))


def _edit_weights(folder: Path, file: str, edit) -> None:
    tensors = load_file(folder / file)
    edit(tensors)
    write_file(folder / file, tensors)


@pytest.mark.parametrize(
    ("file", "name", "value", "expected"),
    [
        ("ema.safetensors", "language_model.lm_head.weight", NAN, "NaN"),
        ("ema.safetensors", "connector.fc1.bias", math.inf, "inf"),
        ("ae.safetensors", "decoder.conv_out.bias", NAN, "NaN"),
    ],
)
def test_non_finite_weights_are_rejected_naming_the_tensor(folder_copy, file, name, value, expected):
    _edit_weights(folder_copy, file, lambda t: t[name].view(-1).__setitem__(0, value))
    with pytest.raises(CheckpointError, match=f"tensor '{name}' holds") as err:
        load_bagel(folder_copy)
    assert file in str(err.value) and expected in str(err.value)


def test_integer_weights_are_rejected_naming_the_tensor(folder_copy):
    name = "connector.fc1.bias"
    _edit_weights(folder_copy, "ema.safetensors", lambda t: t.__setitem__(name, t[name].to(torch.int32)))
    with pytest.raises(CheckpointError, match=f"tensor '{name}' is stored as I32"):
        load_bagel(folder_copy)


def test_a_cast_that_overflows_is_rejected(folder_copy):
    name = "connector.fc1.bias"
    _edit_weights(folder_copy, "ema.safetensors", lambda t: t[name].view(-1).__setitem__(0, 1e6))
    with pytest.raises(CheckpointError, match=f"'{name}' overflows torch.float16"):
        load_bagel(folder_copy, dtype="float16")
    assert load_bagel(folder_copy).model.connector.fc1.bias[0] == 1e6  # finite in float32: loads


# ============================================================================================ config JSON
@pytest.mark.parametrize(
    ("file", "content", "expected"),
    [
        ("llm_config.json", [1, 2], "holds a JSON list"),
        (
            "llm_config.json",
            {"hidden_size": "128"},
            "field 'hidden_size' is '128' (str) but must be an integer",
        ),
        ("llm_config.json", {"rope_theta": None}, "field 'rope_theta'"),
        ("llm_config.json", {"num_attention_heads": 0}, "field 'num_attention_heads'"),
        ("vit_config.json", {"num_hidden_layers": "3"}, "field 'num_hidden_layers'"),
        ("vae_config.json", {"ch_mult": "1,2"}, "field 'ch_mult'"),
    ],
)
def test_config_files_with_wrong_types_are_one_error_in_info(folder_copy, capsys, file, content, expected):
    path = folder_copy / file
    if isinstance(content, dict):
        content = {**json.loads(path.read_text()), **content}
    path.write_text(json.dumps(content))
    rc = main(["info", str(folder_copy)])
    out = "".join(capsys.readouterr().out.split())  # the console wraps long paths
    assert rc != 0 and "Traceback" not in out
    assert file in out and "".join(expected.split()) in out
    with pytest.raises(CheckpointError, match=file):
        load_bagel(folder_copy)


# ============================================================================================ NaN / inf arguments
def test_nan_sampler_shift_on_the_command_line_writes_nothing(tiny_dir, tmp_path, capsys, frame):
    Image.fromarray(frame).save(tmp_path / "in.png")
    args = ["generate", "model=tiny", f"model.path={tiny_dir}", "sampler=fast", "prompt=move up"]
    args += [f"image={tmp_path / 'in.png'}", f"out={tmp_path / 'out.png'}"]
    for bad in ("sampler.shift=nan", "sampler.cfg_text_scale=nan", "sampler.cfg_img_scale=inf"):
        rc = main([*args, bad])
        out = capsys.readouterr().out
        assert rc != 0 and "Traceback" not in out, out
        assert f"{bad.split('=')[0].split('.')[1]}=" in out
        assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("shift", NAN),
        ("shift", math.inf),
        ("cfg_text_scale", NAN),
        ("cfg_img_scale", -math.inf),
        ("cfg_renorm_min", NAN),
        ("cfg_interval", (NAN, 1.0)),
        ("num_steps", 2.5),
    ],
)
def test_sampler_config_rejects_non_finite_knobs(field, value):
    with pytest.raises(ConfigError, match=f"invalid {field}="):
        SamplerConfig(**{field: value}).check()


def test_sampler_functions_reject_non_finite_settings():
    with pytest.raises(ConfigError, match="shift"):
        flow_schedule(4, NAN)
    v = torch.zeros(4, 8)
    with pytest.raises(ConfigError, match="cfg_text_scale"):
        cfg_combine(v, v, v, NAN, 2.0)
    with pytest.raises(ConfigError, match="cfg_img_scale"):
        cfg_combine(v, v, v, 4.0, NAN)


def test_non_finite_latents_and_frames_name_the_argument(tiny_pipe, frame):
    ctx = tiny_pipe.new_context().add_image(frame)
    noise = torch.randn(16, tiny_pipe.model.config.patch_latent_dim)
    noise[3, 5] = NAN
    with pytest.raises(ConfigError, match="invalid latents=.*1 NaN/inf"):
        generate_images(
            [ImageRequest(ctx, latents=noise)], (4, 4), SamplerConfig(num_steps=3, cfg_text_scale=1)
        )
    with pytest.raises(ConfigError, match="invalid latents="):
        ctx.add_latents(noise, (4, 4))
    bad_frame = frame.astype(np.float32) / 255
    bad_frame[0, 0, 0] = NAN
    with pytest.raises(ConfigError, match="invalid image="):
        ctx.add_image(bad_frame)
    with pytest.raises(ConfigError, match=r"invalid inputs\[0\]="):
        tiny_pipe.interleave_contexts([torch.from_numpy(bad_frame), "move up"])
    wm = WorldModel(tiny_pipe, CODEC).reset(frame)
    with pytest.raises(ConfigError, match="invalid obs="):
        wm.observe(bad_frame)
    with pytest.raises(ConfigError, match="invalid first_obs="):
        wm.reset(bad_frame)
    with pytest.raises(ConfigError, match="invalid temperature="):
        generate_text(ctx, max_new_tokens=2, do_sample=True, temperature=NAN)


# ============================================================================================ actions and counts
def _world(pipe, frame, codec=CODEC) -> WorldModel:
    sampler = SamplerConfig(num_steps=3, cfg_text_scale=1.0)
    return WorldModel(pipe, codec, WorldModelConfig(sampler=sampler)).reset(frame)


def test_action_text_is_checked_by_the_codec_in_act_and_predict(tiny_pipe, frame):
    wm = _world(tiny_pipe, frame)
    before = (wm.context.num_tokens, wm.frames_seen)
    for bad in ("fly to the moon", "", "   "):
        with pytest.raises(InvalidAction, match="invalid action text"):
            wm.act(bad)
    with pytest.raises(InvalidAction, match="fly to the moon"):
        wm.predict(2, actions=["move up", "fly to the moon"])  # checked before the first frame
    with pytest.raises(InvalidAction):
        wm.imagine(["fly to the moon"])
    assert (wm.context.num_tokens, wm.frames_seen) == before
    wm.act("Move Up.")  # a codec spelling: enters the history as the canonical text
    texts = [tiny_pipe.tokenizer.decode(s.data.tolist()) for s in wm.context.segments if s.kind == "text"]
    assert texts[-1] == "move up"
    moving = _world(tiny_pipe, frame, codec=ContinuousActionCodec())
    moving.act("dx 0 dy 0 dyaw 180")  # the bound itself: decode's float32 radians encode again
    with pytest.raises(InvalidAction, match="out of bounds"):
        moving.act("dx 0 dy 0 dyaw 181")


def test_empty_action_question_and_negative_counts_are_refused(tiny_pipe, frame):
    bare = _world(tiny_pipe, frame, codec=None)
    with pytest.raises(ConfigError, match="invalid action=''"):
        bare.act("")
    bare.act("fly to the moon")  # no codec: any non-empty text
    wm = _world(tiny_pipe, frame)
    for n in (-1, 0, 1.5, True):
        with pytest.raises(ConfigError, match="invalid n_frames="):
            wm.predict(n)
    with pytest.raises(ConfigError, match="invalid action_sequence="):
        wm.imagine([])
    for q in ("", "  \n", None):
        with pytest.raises(ConfigError, match="invalid question="):
            wm.reason(q)
    with pytest.raises(ConfigError, match="invalid max_new_tokens="):
        wm.reason("where?", max_new_tokens=-1)


def test_predict_command_checks_action_text_against_the_models_actions(tmp_path, capsys, frame):
    from worldbagel.world_model_loader import model_config

    assert model_config("gridworld").actions == list(CODEC.vocabulary)
    Image.fromarray(frame).save(tmp_path / "clip.png")
    rc = main(
        ["predict", f"video={tmp_path / 'clip.png'}", "actions=[fly to the moon]", f"out={tmp_path / 'o'}"]
    )
    out = capsys.readouterr().out
    assert rc == 1 and "invalid action text 'fly to the moon'" in out and "'move up'" in out
    assert "Traceback" not in out and not (tmp_path / "o").exists()


def test_predict_command_without_model_actions_accepts_any_text(tiny_dir, tmp_path, capsys, frame):
    Image.fromarray(frame).save(tmp_path / "clip.png")
    common = ["predict", "model=tiny", f"model.path={tiny_dir}", "sampler=fast", "sampler.num_steps=2"]
    common += [f"video={tmp_path / 'clip.png'}", "mp4=false", "gif=false"]
    assert main([*common, "actions=[fly to the moon]", f"out={tmp_path / 'a'}"]) == 0
    listed = [*common, "model.actions=[move up,move down]", f"out={tmp_path / 'b'}"]
    assert main([*listed, "actions=[fly to the moon]"]) == 1
    assert "invalid action text" in capsys.readouterr().out
    assert main([*listed, "actions=[Move Down]"]) == 0
