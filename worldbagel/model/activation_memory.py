"""Bytes of activations: one denoising step of inference, and what one training step saves for backward.

Shape legend
    N    packed rows of a forward       H   LLM hidden        F   SwiGLU inner width
    Hq   query heads   Hkv  key/value heads   D   head dim    Qw  (Hq + 2 Hkv) D, the fused q/k/v width
    Lq   query rows of one sample       Lk  keys it sees (its cache plus its new rows)
    E    ViT hidden    I    ViT MLP width     V   vocabulary

These are models of *this* code (`qwen2_mot.py`, `attention.py`, `flex_backend.py`), tensor by tensor, so that
the memory plan (`worldbagel.model.memory_plan`) follows what actually runs:

* Inference (no autograd) holds one layer's intermediates at a time: the packed input and the expert-order
  residual for the whole step, then per layer either the attention phase (fused q/k/v rows in expert and
  packed order, roped q/k, contiguous v, and the kernel's own buffers; a denoising query is one noise split
  that sees all its keys, so no mask is built) or the MLP phase (residual, attention output, the fused
  gate/up weight copy [2F, H], gate/up rows [N, 2F], silu and product [N, F]), whichever is larger.
* Training saves, per decoder layer and token, the tensors autograd keeps for backward (listed in
  `_llm_layer_terms`), the fused projections' concatenated weights (`fused_linear` saves its [Qw, H] and
  [2F, H] copies for the input gradient), and per sample the attention probabilities on the CPU (`sdpa`)
  path. With (full) activation checkpointing each layer keeps only its input and one layer is recomputed at a
  time; the trainer's `selective` mode is not modelled.

Attention backends: `flex` (CUDA: FlexAttention never materialises scores; the keys and values of the whole
pack are concatenated per layer) and `sdpa` (CPU: batched matmuls per sample, in blocks of `BLOCK_SCORES`
scores).
"""

from __future__ import annotations

from dataclasses import dataclass

from worldbagel.model.attention import BLOCK_SCORES
from worldbagel.model.configuration import BagelConfig

ATTENTION_BACKENDS = ("flex", "sdpa")


@dataclass(frozen=True)
class Shapes:
    """The sizes the activation models need, read from a BagelConfig."""

    hidden: int
    inner: int
    layers: int
    q_heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    vit_hidden: int
    vit_inner: int
    vit_layers: int
    vit_heads: int
    vit_patch: int
    split_attention: bool
    """Both experts have their own q/k/v/o (MoT); False: shared attention weights (MoE / dense)."""

    @classmethod
    def of(cls, config: BagelConfig) -> Shapes:
        llm, vit = config.llm, config.vit
        return cls(
            hidden=llm.hidden_size,
            inner=llm.intermediate_size,
            layers=llm.num_hidden_layers,
            q_heads=llm.num_attention_heads,
            kv_heads=llm.num_key_value_heads,
            head_dim=llm.head_dim,
            vocab=llm.vocab_size,
            vit_hidden=vit.hidden_size,
            vit_inner=vit.intermediate_size,
            vit_layers=vit.num_hidden_layers,
            vit_heads=vit.num_attention_heads,
            vit_patch=vit.patch_size,
            split_attention=llm.layer_module == "Qwen2MoTDecoderLayer",
        )

    @property
    def q_width(self) -> int:
        return self.q_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def qkv_width(self) -> int:
        return self.q_width + 2 * self.kv_width


def _check_backend(attention: str) -> None:
    if attention not in ATTENTION_BACKENDS:
        raise ValueError(f"invalid attention={attention!r}; expected one of {ATTENTION_BACKENDS}")


# ============================================================================================ inference
def _sdpa_sample_bytes(s: Shapes, lq: int, lp: int, b: int) -> int:
    """Bytes CPU attention holds while one denoising query of `lq` rows attends to `lp` cached keys: the cache
    concatenated with the new keys and values, the grouped query copy, and the scores and probabilities of
    one block of query rows. A denoising query is one noise split that sees every key: no mask is built."""
    lk = lp + lq
    rows = min(lq, max(1, BLOCK_SCORES // max(1, s.q_heads * lk)))
    kv_cat = 2 * lk * s.kv_width * b if lp else 0
    return kv_cat + lq * s.q_width * b + 2 * s.q_heads * rows * lk * b


def denoise_step_bytes(
    s: Shapes,
    queries: list[int],
    pasts: list[int],
    act_bytes: int,
    weight_bytes: int,
    attention: str = "flex",
) -> int:
    """Peak activation bytes of one packed forward over the noisy queries of every CFG branch (no autograd).

    `queries[i]` new rows of branch i (its noisy image and two markers), `pasts[i]` the tokens in its cache;
    `act_bytes` the compute dtype's size, `weight_bytes` the dense weights' (the fused weight copies).
    """
    _check_backend(attention)
    b = act_bytes
    n = sum(queries)
    h, f = s.hidden, s.inner
    # the packed input, the expert-order residual and the rope tables stay for the whole forward
    kept = 2 * n * h * b + 2 * n * s.head_dim * b
    if attention == "sdpa":
        work = max(_sdpa_sample_bytes(s, q, p, b) for q, p in zip(queries, pasts))
        kernel = work + n * s.q_width * b  # the outputs of the samples before, concatenated after
    else:
        keys = sum(queries) + sum(pasts)
        kernel = 2 * keys * s.kv_width * b + n * s.q_width * b  # K/V of the pack, the output
    attention_phase = (
        2 * n * s.qkv_width * b  # q/k/v rows in expert order and in packed order
        + n * (s.q_width + 2 * s.kv_width) * b  # roped q, roped k, contiguous v
        + kernel
    )
    mlp_phase = (
        n * s.q_width * b  # attention output in expert order
        + 2 * n * h * b  # residual after attention, its post-attention norm
        + 4 * n * f * b  # gate/up rows [N, 2F], silu(gate) and the product [N, F]
        + 2 * f * h * weight_bytes  # fused gate/up weight copy
    )
    return kept + max(attention_phase, mlp_phase)


# ============================================================================================ training
@dataclass(frozen=True)
class TrainingTokens:
    """How a packed training batch splits into rows."""

    tokens: int
    """LLM rows of the pack (text + ViT + VAE, markers included)."""
    sample_tokens: int
    """Rows of one sample (samples never attend to each other; attention memory grows with its square)."""
    vit_tokens: int
    """ViT patches among the rows (they also pass through the ViT)."""
    vit_image_tokens: int
    """Patches of one ViT image (ViT attention is per image)."""
    ce_tokens: int
    """Rows with a next-token label (their logits [Nce, V] are computed in fp32)."""


def _llm_layer_terms(s: Shapes, b: int, lora: bool) -> int:
    """Bytes autograd saves per token in one decoder layer (the token's expert; see the module docstring).

    RMSNorm saves its fp32 input (the input itself in fp32, a copy in bf16) and, when its weight trains, the
    normalised rows; linears
    save their input when their weight trains (LoRA: the adapters' `lora_A` saves it too); q/k-norm save the
    fp32 q and k rows (rope saves only its cos/sin tables, which need no gradient); attention saves roped k,
    contiguous v and (sdpa) the grouped query copy; o_proj saves the expert-order attention output; the MLP
    saves its gate/up rows, silu output and (when the MLP trains) the product.
    """
    h, f, qw, kw = s.hidden, s.inner, s.q_width, s.kv_width
    fp32 = 4
    norm_input = 2 * h * fp32  # fp32 input of both layer norms (x and the post-attention residual)
    normed = 0 if lora else 2 * h * b  # normalised rows of both norms (saved for their weights' gradient)
    norm1_out = h * b  # input of q/k/v (saved by the weight's or the adapters' gradient)
    qk_rows = (qw + kw) * fp32 if b != fp32 else s.qkv_width * b  # fp32 q/k (bf16: copies; fp32: the rows)
    qk_normed = 0 if lora else (qw + kw) * b
    attn_kv = 2 * kw * b  # roped k, contiguous v
    attn_out = qw * b  # o_proj input
    mlp = 2 * f * b + f * b  # gate/up rows, silu(gate)
    mlp_inputs = 0 if lora else h * b + f * b  # post-attention norm output and the product (frozen MLP: none)
    return norm_input + normed + norm1_out + qk_rows + qk_normed + attn_kv + attn_out + mlp + mlp_inputs


def _sample_lengths(t: TrainingTokens) -> list[int]:
    samples, rest = divmod(t.tokens, t.sample_tokens)
    return [t.sample_tokens] * samples + ([rest] if rest else [])


def _attention_saved(s: Shapes, t: TrainingTokens, b: int, attention: str) -> int:
    """Bytes one decoder layer's attention kernel saves for the whole pack."""
    n = t.tokens
    if attention == "flex":  # q, the concatenated k and v, the output, fp32 log-sum-exp
        return n * (2 * s.q_width + 2 * s.kv_width) * b + n * s.q_heads * 4
    probs = sum(s.q_heads * L * L for L in _sample_lengths(t)) * b
    return n * s.q_width * b + probs  # grouped query copy, probabilities


def _sdpa_masks(s: Shapes, t: TrainingTokens, b: int) -> int:
    """CPU attention: a sample whose scores fit one block keeps its boolean mask and additive bias (one row
    per query head of a key/value group) for the whole step."""
    groups = s.q_heads // s.kv_heads
    return sum(groups * L * L * b + L * L for L in _sample_lengths(t) if s.q_heads * L * L <= BLOCK_SCORES)


def _backward_working_set(s: Shapes, t: TrainingTokens, b: int, attention: str, lora: bool) -> int:
    """Bytes backward allocates on top of the saved tensors at its peak: one layer's MLP row gradients, or
    (sdpa) one sample's probability and score gradients, less the layer's MLP tensors, which backward has
    freed by the time it reaches the attention."""
    mlp = t.tokens * (3 * s.inner + 2 * s.hidden) * b
    if attention == "flex":
        return mlp
    mlp_saved = t.tokens * (3 * s.inner + (0 if lora else s.hidden + s.inner)) * b
    return max(mlp, 2 * s.q_heads * max(_sample_lengths(t)) ** 2 * b - mlp_saved)


def llm_layer_saved_bytes(
    s: Shapes,
    t: TrainingTokens,
    act_bytes: int,
    weight_bytes: int,
    lora: bool,
    lora_rank: int,
    attention: str,
) -> int:
    """Bytes one decoder layer saves for backward over a whole pack (both experts' rows)."""
    _check_backend(attention)
    b = act_bytes
    per_token = _llm_layer_terms(s, b, lora)
    experts = 2
    # fused_linear keeps its concatenated weights for the input gradient: gate/up always (frozen or not),
    # q/k/v only when the projections are plain Linears (LoRA wraps them; one matmul each, no copy)
    weights = experts * 2 * s.inner * s.hidden * weight_bytes
    if not lora:
        weights += (experts if s.split_attention else 1) * s.qkv_width * s.hidden * weight_bytes
    adapters = 4 * lora_rank * b if lora else 0  # lora_A outputs of q, k, v, o
    return t.tokens * (per_token + adapters) + weights + _attention_saved(s, t, b, attention)


def vit_layer_saved_bytes(
    s: Shapes, t: TrainingTokens, act_bytes: int, lora: bool, lora_rank: int = 16
) -> int:
    """Bytes one ViT layer saves per patch, and its probabilities per image. Trained: input, norm outputs,
    k, v, grouped q copy, attention output, residual, fc1 and gelu outputs. LoRA (the trainer's default
    targets match the ViT's q/k/v_proj): the frozen layer still passes gradients to the adapters of the
    layers before, so it keeps the norm inputs, the adapters' input, k, v, the q copy, fc1's output and the
    adapters' rank-r rows."""
    b, e = act_bytes, s.vit_hidden
    per_token = (6 * e + s.vit_inner + 3 * lora_rank) * b if lora else (8 * e + 2 * s.vit_inner) * b
    probs = s.vit_heads * t.vit_tokens * t.vit_image_tokens * b
    return t.vit_tokens * per_token + probs


def training_activation_bytes(
    s: Shapes,
    t: TrainingTokens,
    act_bytes: int,
    weight_bytes: int,
    lora: bool,
    lora_rank: int = 16,
    checkpointing: bool = False,
    attention: str = "flex",
) -> int:
    """Peak activation bytes of one training forward + backward over a pack.

    Without checkpointing every layer's saved tensors are alive when backward starts. With per-layer
    checkpointing (decoder and ViT layers) each layer keeps its input [N, H] and backward recomputes one layer
    at a time. On top come the CPU path's kept masks and
    the larger of the output heads' forward (logits of the CE rows and their fp32 log-softmax, the final
    norm) and backward's working set.
    """
    b = act_bytes
    n = t.tokens
    layer = llm_layer_saved_bytes(s, t, b, weight_bytes, lora, lora_rank, attention)
    vit_layer = vit_layer_saved_bytes(s, t, b, lora, lora_rank)
    if checkpointing:  # layer inputs, then one recomputed layer at a time (the LLM's before the ViT's)
        body = (
            s.layers * n * s.hidden * b
            + s.vit_layers * t.vit_tokens * s.vit_hidden * b
            + max(layer, vit_layer)
        )
    else:
        body = s.layers * layer + s.vit_layers * vit_layer
    if not lora:  # a trained ViT's patch embedding keeps its input patches, its final norm its input
        body += t.vit_tokens * (3 * s.vit_patch**2 + s.vit_hidden) * b
    heads = t.ce_tokens * s.vocab * (b + 4 + (4 if b != 4 else 0)) + 2 * n * s.hidden * b
    masks = _sdpa_masks(s, t, b) if attention == "sdpa" else 0
    return body + masks + max(heads, _backward_working_set(s, t, b, attention, lora))
