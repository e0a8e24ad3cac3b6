"""The FlexAttention block mask built from the layout's segments (`flex_backend.packed_block_mask`).

The reference is the dense path: `create_block_mask` evaluating the token-level `mask_mod` over every
(query, key) pair, kept here (and only here) for that purpose; the `mask_mod` itself is checked against the
per-sample `build_mask` of the SDPA path.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from worldbagel.model import flex_backend
from worldbagel.model.attention import SampleLayout, Split, attend_packed_sdpa, build_mask
from worldbagel.model.flex_backend import attend_packed_flex, packed_block_mask, packed_mask_mod

pytestmark = pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile")

MASK_FIELDS = (
    "kv_num_blocks",
    "kv_indices",
    "full_kv_num_blocks",
    "full_kv_indices",
    "q_num_blocks",
    "q_indices",
    "full_q_num_blocks",
    "full_q_indices",
)


def _c(n):
    return Split(n, "causal")


def _f(n):
    return Split(n, "full")


def _z(n):
    return Split(n, "noise")


LAYOUTS = {
    "text_only": [SampleLayout([_c(700)])],
    "interleaved": [SampleLayout([_c(40), _f(258), _c(12), _z(130), _c(7), _f(130), _z(258), _c(90)])],
    "several_documents": [
        SampleLayout([_c(33), _f(200), _z(129)]),
        SampleLayout([_c(128), _z(128)]),
        SampleLayout([_f(5)]),
        SampleLayout([_c(1), _c(300), _z(64), _c(2)]),
    ],
    "cached_prefix_and_queries": [  # inference: a denoising query and a text step after their caches
        SampleLayout([_c(20), _z(260)], past_len=300),
        SampleLayout([_c(1)], past_len=517),
        SampleLayout([_c(9), _f(140), _c(7), _z(90)]),
    ],
    "block_multiples_and_empties": [  # lengths on and around the tile edges, empty splits, a cache only
        SampleLayout([_c(128), _f(0), _z(256)], past_len=128),
        SampleLayout([], past_len=70),
        SampleLayout([_c(127), _f(129)]),
    ],
}


def _random_layouts(seed: int) -> list[SampleLayout]:
    rng = random.Random(seed)
    layouts = []
    for _ in range(rng.randint(1, 5)):
        splits = [
            Split(rng.randint(0, 300), rng.choice(["causal", "full", "noise"]))
            for _ in range(rng.randint(1, 6))
        ]
        layouts.append(SampleLayout(splits, past_len=rng.choice([0, 0, rng.randint(1, 300)])))
    if not any(lay.length for lay in layouts):
        layouts.append(SampleLayout([_c(3)]))
    return layouts


def _sizes(layouts):
    return sum(lay.length for lay in layouts), sum(lay.past_len + lay.length for lay in layouts)


def _dense_block_mask(layouts, block=flex_backend.BLOCK_SIZE):
    """The previous path: `create_block_mask` evaluates `mask_mod` at all N x K pairs."""
    n, kk = _sizes(layouts)
    return create_block_mask(
        packed_mask_mod(layouts, "cpu"), None, None, n, kk, device="cpu", BLOCK_SIZE=block
    )


def _assert_same_block_mask(got, ref):
    assert got.seq_lengths == ref.seq_lengths and got.BLOCK_SIZE == ref.BLOCK_SIZE
    for name in MASK_FIELDS:
        a, b = getattr(got, name), getattr(ref, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert torch.equal(got.to_dense(), ref.to_dense())


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_block_mask_equals_dense_create_block_mask(name):
    layouts = LAYOUTS[name]
    got, ref = packed_block_mask(layouts, "cpu"), _dense_block_mask(layouts)
    _assert_same_block_mask(got, ref)
    assert ref.full_kv_num_blocks.sum() > 0 and ref.kv_num_blocks.sum() > 0  # both tile kinds are exercised


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("block", [128, 32])
def test_block_mask_equals_dense_on_random_packs(seed, block):
    layouts = _random_layouts(seed)
    _assert_same_block_mask(packed_block_mask(layouts, "cpu", block=block), _dense_block_mask(layouts, block))


def test_block_mask_chunks_give_the_same_mask(monkeypatch):
    """Classifying the piece pairs a few at a time (many segments, long packs) changes nothing."""
    layouts = LAYOUTS["several_documents"] + LAYOUTS["interleaved"]
    ref = packed_block_mask(layouts, "cpu", block=16)
    monkeypatch.setattr(flex_backend, "PAIR_CHUNK", 7)
    _assert_same_block_mask(packed_block_mask(layouts, "cpu", block=16), ref)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_mask_mod_equals_per_sample_build_mask(name):
    """The token rule partial tiles apply is the SDPA path's mask: per sample, keys [cache | new]."""
    layouts = LAYOUTS[name]
    n, kk = _sizes(layouts)
    ref = torch.zeros(n, kk, dtype=torch.bool)
    q0 = k0 = 0
    for lay in layouts:
        ref[q0 : q0 + lay.length, k0 : k0 + lay.past_len + lay.length] = build_mask(lay.splits, lay.past_len)
        q0, k0 = q0 + lay.length, k0 + lay.past_len + lay.length
    mask_mod = packed_mask_mod(layouts, "cpu")
    got = mask_mod(0, 0, torch.arange(n)[:, None], torch.arange(kk)[None, :])
    assert torch.equal(got, ref)


def _qkv(layouts, hq=4, hkv=2, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, kk = _sizes(layouts)
    return (torch.randn(1, h, m, d, generator=g) for h, m in ((hq, n), (hkv, kk), (hkv, kk)))


@pytest.mark.parametrize("name", ["interleaved", "cached_prefix_and_queries", "block_multiples_and_empties"])
def test_flex_attention_output_equals_the_dense_block_mask(name):
    layouts = LAYOUTS[name]
    q, k, v = _qkv(layouts)
    got = flex_attention(q, k, v, block_mask=packed_block_mask(layouts, "cpu"), enable_gqa=True)
    ref = flex_attention(q, k, v, block_mask=_dense_block_mask(layouts), enable_gqa=True)
    assert got.isfinite().all()
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)


def test_attend_packed_flex_follows_each_layout_it_is_given():
    """The kept mask serves repeated layouts only: a new layout (another cache length, other splits) gets its
    own mask, and each output equals the SDPA path."""
    g = torch.Generator().manual_seed(1)
    first = [SampleLayout([_c(10), _z(150)], past_len=140), SampleLayout([_c(60), _f(70)])]
    second = [SampleLayout([_c(10), _z(150)], past_len=141), SampleLayout([_c(60), _f(70)])]
    third = [SampleLayout([_c(10), _f(150)], past_len=141), SampleLayout([_c(60), _f(70)])]
    masks = []
    for layouts in (first, first, second, third):
        n = sum(lay.length for lay in layouts)
        q, k, v = (torch.randn(n, h, 16, generator=g) for h in (4, 2, 2))
        past = [
            (torch.randn(lay.past_len, 2, 16, generator=g), torch.randn(lay.past_len, 2, 16, generator=g))
            if lay.past_len
            else None
            for lay in layouts
        ]
        got = attend_packed_flex(q, k, v, layouts, past)
        torch.testing.assert_close(got, attend_packed_sdpa(q, k, v, layouts, past), atol=1e-5, rtol=1e-5)
        masks.append(flex_backend._block_mask(layouts, "cpu"))
    assert masks[0] is masks[1] and len({id(m) for m in masks[1:]}) == 3


_PEAK_SCRIPT = textwrap.dedent(
    """
    import ctypes, json, sys
    import torch
    from torch.nn.attention.flex_attention import BlockMask  # imported before the peak is reset
    from worldbagel.model.attention import SampleLayout, Split
    from worldbagel.model.flex_backend import packed_block_mask

    def rss_kib():
        lines = open("/proc/self/status").read().splitlines()
        fields = dict(line.split(":", 1) for line in lines if ":" in line)
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])

    unit = [Split(64, "causal"), Split(1026, "full"), Split(32, "causal"), Split(1026, "noise")]
    layouts = [SampleLayout(list(unit), past_len=500) for _ in range(17)]  # 17 x (500 + 2148) keys
    layouts.append(SampleLayout([Split(1000, "causal")]))
    packed_block_mask([SampleLayout([Split(300, "causal")])], "cpu")  # warm up torch's lazy paths
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    open("/proc/self/clear_refs", "w").write("5")
    before, _ = rss_kib()
    mask = packed_block_mask(layouts, "cpu")
    _, peak = rss_kib()
    print(json.dumps({"extra_mib": (peak - before) / 1024, "seq_lengths": mask.seq_lengths}))
    """
)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux to reset the peak RSS")
def test_block_mask_of_a_38k_token_pack_never_builds_the_dense_mask():
    """37,516 queries x 46,016 keys: a dense boolean mask alone would be 1.6 GiB (create_block_mask peaks far
    higher); the segment-built mask must stay under 100 MiB of peak RSS growth."""
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["seq_lengths"] == [37516, 46016]
    assert report["extra_mib"] < 100, report
