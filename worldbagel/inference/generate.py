"""Text and image generation over contexts (spec 5.4-5.6).

Shape legend
    B   requests (contexts) generated together         V   vocabulary
    T   latent tokens of one image (h*w)               Z   latent token features (p*p*Cz)

Text: greedy or sampled decoding from `<|im_start|>` at the context's rope position; generated tokens live in
a private cache and never enter the context. Images: rectified flow with BAGEL's three-branch CFG; every branch
of every request is packed into ONE forward per step (noisy tokens never enter any cache).

Every query is checked against the pipeline's `context_limit` before its tensors are built: scoring and image
queries that would not fit raise `ContextTooLong`; text generation stops where the limit is reached (as at
`max_new_tokens`, with a warning).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from worldbagel.errors import bad_argument
from worldbagel.inference.context import Context
from worldbagel.inference.sampler import SamplerConfig, cfg_active, cfg_combine, euler_step, flow_schedule
from worldbagel.inference.value_checks import require_finite, require_finite_number, require_int
from worldbagel.model.sequence import PackedSequence

logger = logging.getLogger(__name__)

# ============================================================================================ text


@dataclass
class TextOutput:
    ids: list[int]
    """Generated token ids (without the leading <|im_start|> and the stopping <|im_end|>)."""
    text: str
    logits: list[torch.Tensor] = field(default_factory=list)
    """Next-token logits [V] of every step (the first is the distribution after <|im_start|>)."""
    stopped: bool = False
    """True if generation ended on <|im_end|> (False: max_new_tokens reached)."""


def _pick_token(
    logits: torch.Tensor,
    do_sample: bool,
    temperature: float,
    top_k: int,
    top_p: float,
    gen: torch.Generator | None,
) -> int:
    if not do_sample or temperature <= 0:
        return int(logits.argmax())
    scores = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(scores, min(top_k, scores.numel())).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = scores.sort(descending=True)
        probs = sorted_scores.softmax(-1)
        cut = probs.cumsum(-1) - probs > top_p  # drop tokens once the mass before them exceeds top_p
        sorted_scores[cut] = float("-inf")
        scores = torch.full_like(scores, float("-inf")).scatter(0, order, sorted_scores)
    probs = scores.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=gen))


def _lookup_draft(history: list[int], n: int, max_ngram: int = 3) -> list[int]:
    """Prompt-lookup guess: the (up to) `n` tokens that followed the latest earlier occurrence of the longest
    suffix of `history` (`max_ngram` tokens at most), cut at an image (-1); [] when the suffix is new."""
    for size in range(min(max_ngram, len(history) - 1), 0, -1):
        tail = history[-size:]
        for start in range(len(history) - size - 1, -1, -1):
            if history[start : start + size] == tail:
                guess = history[start + size : start + size + n]
                return guess[: guess.index(-1)] if -1 in guess else guess  # never guess across an image
    return []


def _text_history(context: Context) -> list[int]:
    """The context's text tokens in order (framing included); -1 stands for an image (it matches no token)."""
    pipe, out = context.pipe, []
    for seg in context.segments:
        if seg.kind != "text":
            out.append(-1)
        elif seg.framed:
            out += [pipe.special.bos, *seg.data.tolist(), pipe.special.eos]
        else:
            out += seg.data.tolist()
    return out


def generate_text_batch(
    contexts: list[Context],
    max_new_tokens: int = 500,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    return_logits: bool = False,
    draft: int = 8,
    draft_from: Sequence[Sequence[int]] = (),
) -> list[TextOutput]:
    """Generate text after each context, all contexts decoded together in one packed forward per step.

    Greedy decoding (`do_sample=False`) also feeds, per context and step, up to `draft` guessed tokens (prompt
    lookup: what followed the latest earlier occurrence of the newest n-gram in the context's texts or the
    output so far, e.g. the previous "at 3,5 facing right" while saying the next one) and keeps the longest
    prefix that the model's own argmax reproduces, plus the argmax after it. The output is plain greedy
    decoding's (up to float rounding of the wider forward) in fewer forwards; `draft=0` feeds one token.
    `draft_from`: more token sequences the guesses may be copied from (e.g. texts the caller generated before
    in similar contexts), searched before the context's own texts."""
    require_int("max_new_tokens", max_new_tokens, 1, "use an int >= 1")
    if not 0 < top_p <= 1:
        raise bad_argument("top_p", top_p, "must be in (0, 1]")
    require_int("top_k", top_k, 0, "use an int >= 0 (0: no top-k cut)")
    require_finite_number("temperature", temperature, "use a finite temperature (<= 0: greedy)")
    if draft < 0:
        raise bad_argument("draft", draft, "use 0 (no guessed tokens) or more")
    greedy = not do_sample or temperature <= 0
    pipe = contexts[0].pipe
    limit = pipe.context_limit
    for c in contexts:  # room for the <|im_start|> every answer starts with
        limit.check(c.describe(1), c.num_tokens + 1, c.rope + 1)
    eos, bos = pipe.special.eos, pipe.special.bos
    caches = [c.cache for c in contexts]
    ropes = [c.rope for c in contexts]
    current = [bos] * len(contexts)
    extra = [t for seq in draft_from for t in (*seq, -1)]
    history = [extra + _text_history(c) + [bos] for c in contexts] if greedy and draft else None
    outs = [TextOutput([], "") for _ in contexts]
    active = list(range(len(contexts)))
    while active:
        feeds, fits = [], []
        for i in active:
            if limit.room(caches[i].length, ropes[i]) < 1:  # the context limit ends this answer here
                logger.warning(
                    "text generation stopped after %d tokens: the context reached its limit (%d tokens, "
                    "%d positions)",
                    len(outs[i].ids),
                    limit.max_tokens,
                    limit.max_positions,
                )
                continue
            room = max_new_tokens - len(outs[i].ids) - 1  # guesses beyond the limit are never kept
            room = min(room, limit.room(caches[i].length, ropes[i]) - 1)
            guess = _lookup_draft(history[i], min(draft, room)) if history is not None and room > 0 else []
            feeds.append([current[i], *guess])
            fits.append(i)
        active = fits
        if not active:
            break
        builder = pipe.builder(ropes=[ropes[i] for i in active], past_lens=[caches[i].length for i in active])
        for j, fed in enumerate(feeds):
            builder.add_text(fed, sample=j, framed=False)
        seq = builder.build(pipe.device)
        with torch.no_grad():
            h, kv = pipe.model.forward_packed(seq, past=[caches[i] or None for i in active], return_kv=True)
            logits = pipe.model.logits(h)  # [sum of fed tokens, V]
        still, start = [], 0
        for i, fed in zip(active, feeds):
            keep, done = len(fed), False
            for pos in range(len(fed)):  # row pos predicts the token after fed[pos]
                row = logits[start + pos]
                if return_logits:
                    outs[i].logits.append(row.float().cpu())
                nxt = _pick_token(row, do_sample, temperature, top_k, top_p, generator)
                if nxt == eos:
                    outs[i].stopped = done = True
                else:
                    outs[i].ids.append(nxt)
                    current[i] = nxt
                    if history is not None:
                        history[i].append(nxt)
                    done = len(outs[i].ids) >= max_new_tokens
                if done or pos + 1 == len(fed) or fed[pos + 1] != nxt:
                    keep = pos + 1  # rows after a wrong guess saw a wrong prefix: dropped
                    break
            caches[i] = caches[i].append([(k[start : start + keep], v[start : start + keep]) for k, v in kv])
            ropes[i] += keep
            start += len(fed)
            if not done:
                still.append(i)
        active = still
    for o in outs:
        o.text = pipe.tokenizer.decode(o.ids)
    return outs


def score_text_batch(contexts: list[Context], candidates: list[str]) -> torch.Tensor:
    """Log-likelihood of each candidate answer after each context, as the model would say it
    (`<|im_start|> text <|im_end|>`, the closing token included): [B, C], in ONE packed forward over the
    B x C teacher-forced answers (each reads its context's cache; nothing is appended to it)."""
    if not candidates:
        raise bad_argument("candidates", candidates, "give at least one candidate text")
    pipe = contexts[0].pipe
    eos, bos = pipe.special.eos, pipe.special.bos
    ids = [pipe.tokenizer.encode(c) for c in candidates]
    for ctx in contexts:
        n = max(len(i) for i in ids) + 1  # <|im_start|> and the longest candidate
        pipe.context_limit.check(ctx.describe(n), ctx.num_tokens + n, ctx.rope + n)
    pairs = [(ctx, c) for ctx in contexts for c in range(len(candidates))]
    builder = pipe.builder(
        ropes=[ctx.rope for ctx, _ in pairs], past_lens=[ctx.num_tokens for ctx, _ in pairs]
    )
    for j, (_, c) in enumerate(pairs):
        builder.add_text([bos, *ids[c]], sample=j, framed=False)  # row k predicts token k of ids + [eos]
    seq = builder.build(pipe.device)
    with torch.no_grad():
        h, _ = pipe.model.forward_packed(seq, past=[ctx.cache or None for ctx, _ in pairs])
        logp = pipe.model.logits(h).float().log_softmax(-1)  # [sum of answer rows, V]
    scores, start = [], 0
    for _, c in pairs:
        target = torch.tensor([*ids[c], eos], device=logp.device)
        rows = logp[start : start + len(target)]
        scores.append(rows.gather(1, target[:, None]).sum())
        start += len(target)
    return torch.stack(scores).reshape(len(contexts), len(candidates)).cpu()


def generate_text(context: Context, **kwargs) -> TextOutput:
    """Generate text after one context (see `generate_text_batch` for the options)."""
    return generate_text_batch([context], **kwargs)[0]


# ============================================================================================ images


@dataclass
class ImageRequest:
    """One image to generate: the main context and the optional CFG contexts."""

    context: Context
    cfg_text_context: Context | None = None
    """Context without the latest text (text guidance); None disables text CFG."""
    cfg_img_context: Context | None = None
    """Context without the images (image guidance); None disables image CFG."""
    latents: torch.Tensor | None = None
    """Initial noise, packed [h*w, Z] or latent layout [Cz, H/8, W/8]; drawn from the generator if None."""


@dataclass
class ImageOutput:
    latents: torch.Tensor
    """Final packed latent tokens [h*w, Z]."""
    grid: tuple[int, int]
    """Latent-token grid (h, w); the image is (16 h, 16 w) pixels for the release."""


def _initial_noise(req: ImageRequest, grid: tuple[int, int], z_dim: int, pipe, generator) -> torch.Tensor:
    h, w = grid
    x = req.latents
    if x is None:
        return torch.randn(h * w, z_dim, generator=generator, dtype=torch.float32)
    if x.dim() == 3:  # latent layout [Cz, p*h, p*w]
        x = pipe.vae.patchify(x[None].float())[0]
    if tuple(x.shape) != (h * w, z_dim):
        raise bad_argument(
            "latents.shape",
            tuple(req.latents.shape),
            f"expected [{h * w}, {z_dim}] or [Cz, {h * 2}, {w * 2}]",
        )
    require_finite("latents", x)
    return x.float().clone()


def generate_images(
    requests: list[ImageRequest],
    grid: tuple[int, int],
    config: SamplerConfig | None = None,
    generator: torch.Generator | None = None,
) -> list[ImageOutput]:
    """Denoise one image per request on a latent-token grid (h, w); returns final latent tokens.

    Each step evaluates every branch's velocity, combines them with `cfg_combine` and moves every request's
    state with `euler_step` (the integrator `sample_flow` uses and the sampler tests check)."""
    cfg = config or SamplerConfig()
    cfg.check()
    pipe = requests[0].context.pipe
    n = grid[0] * grid[1] + 2  # the noisy image and its two markers, at the context's next position
    for req in requests:
        for c in (req.context, req.cfg_text_context, req.cfg_img_context):
            if c is not None:
                pipe.context_limit.check(c.describe(n), c.num_tokens + n, c.rope + 1)
    z_dim = pipe.model.config.patch_latent_dim
    xs = [_initial_noise(r, grid, z_dim, pipe, generator) for r in requests]  # fp32 ODE state, [T, Z] each
    ts = flow_schedule(cfg.num_steps, cfg.shift)
    queries: dict[tuple, PackedSequence] = {}
    for i in range(cfg.num_steps - 1):
        t = float(ts[i])
        active = cfg_active(t, cfg.cfg_interval)
        text_scale = cfg.cfg_text_scale if active else 1.0
        img_scale = cfg.cfg_img_scale if active else 1.0
        branches: list[tuple[int, str, Context]] = []  # (request, branch name, context)
        for r, req in enumerate(requests):
            branches.append((r, "cond", req.context))
            if text_scale > 1.0:
                if req.cfg_text_context is None:
                    raise bad_argument(
                        "cfg_text_context", None, "text CFG (cfg_text_scale > 1) needs a text-dropped context"
                    )
                branches.append((r, "text", req.cfg_text_context))
                if img_scale > 1.0:
                    if req.cfg_img_context is None:
                        raise bad_argument(
                            "cfg_img_context",
                            None,
                            "image CFG (cfg_img_scale > 1) needs an image-dropped context",
                        )
                    branches.append((r, "img", req.cfg_img_context))
        groups = [branches] if cfg.batch_cfg else [[b] for b in branches]
        vel: dict[tuple[int, str], torch.Tensor] = {}
        for group in groups:
            key = tuple((b[0], b[1]) for b in group)
            if key not in queries:  # the query layout only depends on which branches run
                queries[key] = _query(pipe, group, grid)
            for (r, name), v in zip(key, _velocities(pipe, group, queries[key], xs, t)):
                vel[(r, name)] = v
        dt = ts[i] - ts[i + 1]
        for r in range(len(requests)):
            v = cfg_combine(
                vel[(r, "cond")],
                vel.get((r, "text")),
                vel.get((r, "img")),
                text_scale,
                img_scale,
                cfg.cfg_renorm_type,  # type: ignore[arg-type]
                cfg.cfg_renorm_min,
            )
            xs[r] = euler_step(xs[r], v.float(), dt)
    return [ImageOutput(x, grid) for x in xs]


def _query(pipe, branches, grid) -> PackedSequence:
    """The packed noisy query of a set of branches (markers + h*w latent rows per branch), built once."""
    builder = pipe.builder(
        ropes=[c.rope for _, _, c in branches], past_lens=[c.num_tokens for _, _, c in branches]
    )
    z_dim = pipe.model.config.patch_latent_dim
    for j in range(len(branches)):
        builder.add_vae_image(torch.zeros(grid[0] * grid[1], z_dim), grid, sample=j, noisy=True)
    return builder.build(pipe.device)


def _velocities(pipe, branches, query: PackedSequence, xs, t: float) -> list[torch.Tensor]:
    """One packed forward over the noisy query of every branch; returns each branch's velocity [T, Z]."""
    tokens = torch.cat([xs[r] for r, _, _ in branches]).to(pipe.device, pipe.dtype)  # [B*T, Z]
    seq = replace(query, vae_tokens=tokens, vae_t=torch.full_like(query.vae_t, t))
    with torch.no_grad():
        h, _ = pipe.model.forward_packed(seq, past=[c.cache or None for _, _, c in branches])
        v = pipe.model.velocity(h[seq.noisy_vae_idx]).float().cpu()
    n = xs[branches[0][0]].shape[0]
    return list(v.split(n))
