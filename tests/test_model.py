"""The Bagel network: masks, MoT routing, caches, packing, and numerical agreement with reference layers."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from worldbagel.model.attention import Split, build_mask
from worldbagel.model.bagel import Bagel, count_parameters
from worldbagel.model.configuration import BagelConfig
from worldbagel.model.heads import timestep_embedding
from worldbagel.model.sequence import SequenceBuilder, SpecialIds
from worldbagel.model.siglip_navit import flattened_position_ids, patchify

SPECIAL = SpecialIds(bos=389, eos=390, start_of_image=391, end_of_image=392)


@pytest.fixture(scope="module")
def model(tiny_dir) -> Bagel:
    torch.manual_seed(0)
    m = Bagel(BagelConfig.from_folder(tiny_dir))
    m.load_state_dict(load_file(tiny_dir / "ema.safetensors"), strict=True)
    return m.eval()


def _builder(ropes=None, past_lens=None) -> SequenceBuilder:
    return SequenceBuilder(SPECIAL, ropes=ropes, past_lens=past_lens)


def _image_tokens(seed: int, n: int, dim: int) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------- state dict
def test_state_dict_matches_official_keys_and_count(tiny_dir):
    m = Bagel(BagelConfig.from_folder(tiny_dir))
    official = load_file(tiny_dir / "ema.safetensors")
    ours = m.state_dict()
    assert set(ours) == set(official)
    assert all(ours[k].shape == official[k].shape for k in official)
    assert count_parameters(m)["total"] == 1_036_480
    # The sin-cos tables are deterministic: a fresh model reproduces the official ones exactly.
    assert torch.equal(m.latent_pos_embed.pos_embed, official["latent_pos_embed.pos_embed"])
    assert torch.equal(m.vit_pos_embed.pos_embed, official["vit_pos_embed.pos_embed"])


# ---------------------------------------------------------------------------------------------------- masks
def test_mask_table_who_sees_whom():
    # text(2) | full image(2) | noise image(2) | text(2)
    splits = [Split(2, "causal"), Split(2, "full"), Split(2, "noise"), Split(2, "causal")]
    m = build_mask(splits).int()
    expected = torch.tensor(
        [
            # t0 t1 f0 f1 n0 n1 t2 t3
            [1, 0, 0, 0, 0, 0, 0, 0],  # t0: causal
            [1, 1, 0, 0, 0, 0, 0, 0],  # t1
            [1, 1, 1, 1, 0, 0, 0, 0],  # f0: sees earlier + its whole split
            [1, 1, 1, 1, 0, 0, 0, 0],  # f1
            [1, 1, 1, 1, 1, 1, 0, 0],  # n0: everything before + own split
            [1, 1, 1, 1, 1, 1, 0, 0],  # n1
            [1, 1, 1, 1, 0, 0, 1, 0],  # t2: never sees the noise split
            [1, 1, 1, 1, 0, 0, 1, 1],  # t3
        ]
    )
    assert torch.equal(m, expected)


def test_mask_noise_splits_do_not_see_each_other_and_cache_is_visible():
    m = build_mask([Split(2, "noise"), Split(2, "noise"), Split(1, "causal")], past_len=3)
    assert m.shape == (5, 8)
    assert m[:, :3].all()  # every query sees the whole cache (bottom-right alignment)
    assert not m[2, 3:5].any() and m[2, 5:7].all()  # second noise split: not the first, yes itself
    assert not m[4, 3:7].any() and m[4, 7]  # trailing text sees neither noise split


# ---------------------------------------------------------------------------------------------------- forward
def _context_sequence(b: SequenceBuilder, sample: int = 0, seed: int = 0) -> None:
    b.add_text([5, 6, 7, 8], sample=sample)
    b.add_vae_image(_image_tokens(seed, 4, 64), (2, 2), sample=sample)
    b.add_vit_image(_image_tokens(seed + 1, 4, 588), (2, 2), sample=sample)
    b.add_text([9, 10, 11], sample=sample)


def test_rope_positions_follow_the_official_rules():
    b = _builder()
    _context_sequence(b)
    b.add_vae_image(_image_tokens(3, 4, 64), (2, 2), t=0.5, noisy=True)
    seq = b.build()
    # text 0..5 (bos + 4 + eos), VAE image all at 6, ViT image all at 7, text 8..12, noisy image at 13
    expected = list(range(6)) + [6] * 6 + [7] * 6 + list(range(8, 13)) + [13] * 6
    assert seq.position_ids.tolist() == expected
    assert b.rope() == 13  # a noisy image does not advance the counter
    assert seq.gen_mask.sum() == 8  # the latent rows only, markers are text
    assert [s.mode for s in seq.layouts[0].splits] == ["causal", "full", "full", "causal", "noise"]


def test_cached_prefix_equals_uncached_forward(model):
    full = _builder()
    _context_sequence(full)
    full.add_text([12, 13])
    with torch.no_grad():
        h_full, _ = model.forward_packed(full.build())

        # the same sequence in three chunks through a growing cache
        b1 = _builder()
        b1.add_text([5, 6, 7, 8])
        b1.add_vae_image(_image_tokens(0, 4, 64), (2, 2))
        h1, kv1 = model.forward_packed(b1.build(), return_kv=True)
        b2 = _builder(ropes=[b1.rope()], past_lens=[h1.shape[0]])
        b2.add_vit_image(_image_tokens(1, 4, 588), (2, 2))
        b2.add_text([9, 10, 11])
        h2, kv2 = model.forward_packed(b2.build(), past=[kv1], return_kv=True)
        cache = [(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])) for a, b in zip(kv1, kv2)]
        b3 = _builder(ropes=[b2.rope()], past_lens=[cache[0][0].shape[0]])
        b3.add_text([12, 13])
        h3, _ = model.forward_packed(b3.build(), past=[cache])
    torch.testing.assert_close(torch.cat([h1, h2, h3]), h_full, atol=1e-5, rtol=1e-5)


def test_packed_samples_do_not_see_each_other(model):
    with torch.no_grad():
        alone = []
        for seed in (0, 10):
            b = _builder()
            _context_sequence(b, seed=seed)
            alone.append(model.forward_packed(b.build())[0])
        b = _builder(ropes=[0, 0])
        _context_sequence(b, sample=0, seed=0)
        _context_sequence(b, sample=1, seed=10)
        packed = model.forward_packed(b.build())[0]
    torch.testing.assert_close(packed, torch.cat(alone), atol=1e-5, rtol=1e-5)


def test_noisy_tokens_are_invisible_to_later_tokens(model):
    outs = []
    for seed in (1, 2):
        b = _builder()
        b.add_text([5, 6])
        b.add_vae_image(_image_tokens(seed, 4, 64), (2, 2), t=0.7, noisy=True)
        b.add_text([7, 8])
        with torch.no_grad():
            outs.append(model.forward_packed(b.build())[0])
    assert torch.allclose(outs[0][-4:], outs[1][-4:], atol=1e-6)  # later text unaffected
    assert not torch.allclose(outs[0][3:7], outs[1][3:7])  # the noisy rows themselves differ


def test_mot_routing_gen_weights_only_touch_vae_rows(tiny_dir, model):
    b = _builder()
    _context_sequence(b)
    seq = b.build()
    with torch.no_grad():
        base = model.forward_packed(seq)[0]
        changed = Bagel(model.config)
        changed.load_state_dict(model.state_dict())
        changed.eval()
        mlp = changed.language_model.model.layers[1].mlp_moe_gen.down_proj
        mlp.weight.add_(0.5)
        out = changed.forward_packed(seq)[0]
    gen = seq.gen_mask
    # Layer 1 is the last layer: its gen MLP changes VAE rows only (later rows see no layer-2 attention).
    assert not torch.allclose(out[gen], base[gen])
    torch.testing.assert_close(out[~gen], base[~gen])
    with torch.no_grad():
        changed.load_state_dict(model.state_dict())
        changed.language_model.model.layers[0].self_attn.q_proj.weight.add_(0.5)  # und weight
        out = changed.forward_packed(seq)[0]
    text_rows = seq.text_idx
    assert not torch.allclose(out[text_rows], base[text_rows])


def test_freeze_und_gives_und_weights_no_gradient(model):
    m = Bagel(model.config)
    m.load_state_dict(model.state_dict())
    m.config = BagelConfig(**{**m.config.__dict__})
    m.config.llm = type(m.config.llm)(**{**m.config.llm.__dict__, "freeze_und": True})
    m.train()
    b = _builder()
    _context_sequence(b)
    b.add_vae_image(_image_tokens(5, 4, 64), (2, 2), t=0.5, noisy=True)
    seq = b.build()
    h, _ = m.forward_packed(seq)
    m.velocity(h[seq.noisy_vae_idx]).pow(2).mean().backward()
    layer = m.language_model.model.layers[0]
    assert layer.self_attn.q_proj_moe_gen.weight.grad is not None
    assert layer.self_attn.q_proj_moe_gen.weight.grad.abs().sum() > 0
    assert layer.self_attn.q_proj.weight.grad is None or layer.self_attn.q_proj.weight.grad.abs().sum() == 0
    assert m.connector.fc1.weight.grad is None or m.connector.fc1.weight.grad.abs().sum() == 0


# ---------------------------------------------------------------------------------------------------- references
def test_text_path_matches_transformers_qwen3_reference(model):
    """Text-only (all und) tokens: Qwen2 + per-head qk-norm before RoPE == HF Qwen3 with attention biases."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    c = model.config.llm
    ref = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=c.vocab_size,
            hidden_size=c.hidden_size,
            intermediate_size=c.intermediate_size,
            num_hidden_layers=c.num_hidden_layers,
            num_attention_heads=c.num_attention_heads,
            num_key_value_heads=c.num_key_value_heads,
            head_dim=c.head_dim,
            rope_theta=c.rope_theta,
            rms_norm_eps=c.rms_norm_eps,
            attention_bias=True,
            tie_word_embeddings=False,
        )
    ).eval()
    ours = {k.removeprefix("language_model."): v for k, v in model.state_dict().items()}
    sd = {k: ours[k] for k in ref.state_dict() if k in ours}
    for i in range(c.num_hidden_layers):
        sd[f"model.layers.{i}.self_attn.o_proj.bias"] = torch.zeros(c.hidden_size)
    ref.load_state_dict(sd, strict=True)
    ids = [389, 17, 42, 99, 3, 250, 390]
    b = _builder()
    b.add_text(ids[1:-1])
    with torch.no_grad():
        h, _ = model.forward_packed(b.build())
        ours_logits = model.logits(h)
        ref_logits = ref(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(ours_logits, ref_logits, atol=1e-4, rtol=1e-4)


def test_vit_matches_transformers_siglip_reference(model):
    """Our packed ViT on one image == HF SiglipVisionModel (conv patch embedding) minus its last layer."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    v = model.config.vit
    ref = SiglipVisionModel(
        SiglipVisionConfig(
            hidden_size=v.hidden_size,
            intermediate_size=v.intermediate_size,
            num_hidden_layers=v.num_hidden_layers,
            num_attention_heads=v.num_attention_heads,
            image_size=28,
            patch_size=v.patch_size,
            hidden_act=v.hidden_act,
            layer_norm_eps=v.layer_norm_eps,
            vision_use_head=False,
        )
    ).eval()
    ours = {
        k.removeprefix("vit_model."): t for k, t in model.state_dict().items() if k.startswith("vit_model.")
    }
    w = ours["vision_model.embeddings.patch_embedding.weight"]  # [E, p*p*C] in (dy, dx, c) order
    p = v.patch_size
    ours["vision_model.embeddings.patch_embedding.weight"] = (
        w.view(-1, p, p, 3).permute(0, 3, 1, 2).contiguous()
    )
    pos = flattened_position_ids(2, 2, 70)  # a 2x2-patch image uses rows 0, 1, 70, 71 of the 70x70 table
    ours["vision_model.embeddings.position_embedding.weight"] = ours[
        "vision_model.embeddings.position_embedding.weight"
    ][pos]
    # transformers may or may not prefix the tower's keys with `vision_model.`
    ref.load_state_dict(
        {k: ours[k if k.startswith("vision_model.") else "vision_model." + k] for k in ref.state_dict()}
    )
    image = torch.randn(3, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ref(pixel_values=image[None]).last_hidden_state[0]
        got = model.vit_model(patchify(image, p), pos, [4])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_timestep_embedding_is_cos_first_on_raw_time():
    e = timestep_embedding(torch.tensor([0.0, 0.5]), 256)
    assert torch.allclose(e[0, :128], torch.ones(128)) and torch.allclose(e[0, 128:], torch.zeros(128))
    assert torch.isclose(e[1, 0], torch.cos(torch.tensor(0.5)))  # frequency 1 at k = 0, t not scaled by 1000


def test_patchify_order_is_dy_dx_channel():
    img = torch.arange(3 * 28 * 28, dtype=torch.float32).view(3, 28, 28)
    patches = patchify(img, 14)
    assert patches.shape == (4, 588)
    # second patch (row 0, col 1), feature (dy=1, dx=2, c=1) is pixel (1, 14 + 2) of channel 1
    assert patches[1, (1 * 14 + 2) * 3 + 1] == img[1, 1, 16]


def test_flex_backend_matches_sdpa_with_caches_and_packs(model):
    """The FlexAttention path (CUDA default; eager and forward-only on CPU) equals the SDPA path."""
    from worldbagel.model.attention_backend import set_attention_backend

    b1 = _builder()
    _context_sequence(b1)
    with torch.no_grad():
        _, kv = model.forward_packed(b1.build(), return_kv=True)

    def run():
        b = _builder(ropes=[b1.rope(), 0], past_lens=[kv[0][0].shape[0], 0])
        b.add_text([30, 31], sample=0)
        b.add_vae_image(_image_tokens(7, 4, 64), (2, 2), sample=0, t=0.3, noisy=True)
        _context_sequence(b, sample=1, seed=3)
        b.add_vae_image(_image_tokens(8, 4, 64), (2, 2), sample=1, t=0.6, noisy=True)
        b.add_text([12], sample=1)
        with torch.no_grad():
            return model.forward_packed(b.build(), past=[kv, None])[0]

    try:
        set_attention_backend("sdpa")
        ref = run()
        set_attention_backend("flex")
        got = run()
    finally:
        set_attention_backend("auto")
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
