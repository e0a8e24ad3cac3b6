"""How long a context may grow: the model's position limit and a token budget that fits in memory.

Every append to a context (`Context.extend`, `extend_batch`, a window's re-prefill) and every query run after
one (text decoding, likelihood scoring, image denoising) is checked against two limits before any tensor of it
is built, so a too-long input fails at once with one clear error instead of exhausting memory:

- positions: the rope positions of the context stay below the model's `max_position_embeddings`
  (llm_config.json), the longest context it was trained for. Text takes one position per token, an image one.
- tokens: the cached plus new tokens stay within `max_context_tokens` (`ModelConfig.max_context_tokens`,
  `BagelPipeline(max_context_tokens=...)`). An image takes one position but h*w+2 tokens, so this bound and
  the position bound differ.

The default `max_context_tokens` is what fits in half the memory free on the model's device when the pipeline
is built (`default_max_context_tokens`): each context token costs its keys and values in every layer, twice
(a cache append copies the old cache into the new one), plus one layer's activations while it is prefilled
(residual stream, q/k/v/o and the MLP). Attention itself adds a constant (`model.attention.BLOCK_SCORES`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from worldbagel.errors import WorldBagelError, bad_argument

logger = logging.getLogger(__name__)

MEMORY_FRACTION = 0.5
"""Share of the device's free memory a default `max_context_tokens` may fill."""


class ContextTooLong(WorldBagelError, ValueError):
    """A context (or a query run after it) would exceed the model's position limit or `max_context_tokens`."""


@dataclass(frozen=True)
class ContextLimit:
    """The two limits of one pipeline's contexts."""

    max_positions: int
    """`max_position_embeddings` of the model: rope positions stay below it."""
    max_tokens: int
    """`max_context_tokens`: cached plus new tokens stay within it."""
    tokens_from_memory: bool = False
    """True when `max_tokens` is the memory-derived default (the error then says how to raise it)."""

    def check(self, what: str, tokens: int, positions: int) -> None:
        """Raise ContextTooLong when `tokens` (cached + new) or `positions` (one past the last rope position
        used) exceed the limits; `what` names the input (e.g. "text of 100,002 tokens")."""
        if positions > self.max_positions:
            raise ContextTooLong(
                f"context too long: {what} would reach rope position {positions:,} but the model's "
                f"max_position_embeddings is {self.max_positions:,} (llm_config.json: the longest context it "
                "was trained for); shorten the prompt / question / instruction or keep fewer frames "
                "(max_history_frames)"
            )
        if tokens > self.max_tokens:
            raise_it = (
                f"set model.max_context_tokens (BagelPipeline(max_context_tokens=...)) higher if the machine "
                f"has the memory ({self.max_tokens:,} is what fits in {MEMORY_FRACTION:.0%} of the free memory)"
                if self.tokens_from_memory
                else "raise model.max_context_tokens"
            )
            raise ContextTooLong(
                f"context too long: {what} would hold {tokens:,} tokens but max_context_tokens is "
                f"{self.max_tokens:,}; shorten the input or keep fewer frames (max_history_frames), or "
                f"{raise_it}"
            )

    def room(self, tokens: int, positions: int) -> int:
        """How many more text tokens fit after a context of `tokens` tokens whose next position is `positions`."""
        return min(self.max_tokens - tokens, self.max_positions - positions)


def limit_for(model, max_context_tokens: int | None = None) -> ContextLimit:
    """The ContextLimit of a Bagel model: its position limit, and `max_context_tokens` (None: the memory
    default of the module docstring)."""
    positions = int(model.config.llm.max_position_embeddings)
    if max_context_tokens is not None:
        if (
            isinstance(max_context_tokens, bool)
            or not isinstance(max_context_tokens, int)
            or max_context_tokens < 1
        ):
            raise bad_argument(
                "max_context_tokens",
                max_context_tokens,
                "use a positive number of tokens, or None (what fits)",
            )
        return ContextLimit(positions, max_context_tokens)
    tokens = default_max_context_tokens(model.config, model.dtype, free_memory(model.device))
    logger.debug("max_context_tokens defaults to %d on %s", tokens, model.device)
    return ContextLimit(positions, tokens, tokens_from_memory=True)


def token_bytes(config, dtype: torch.dtype) -> int:
    """Memory one context token costs (bytes): its keys and values in every layer twice (a cache append copies
    the old cache), plus one layer's prefill activations (residual, normed input, q/k/v/o, MLP gate/up/out)."""
    llm = config.llm
    item = torch.empty(0, dtype=dtype).element_size()
    kv = 2 * llm.num_hidden_layers * llm.num_key_value_heads * llm.head_dim * item
    q_o = 2 * llm.num_attention_heads * llm.head_dim
    activations = (3 * llm.hidden_size + q_o + 3 * llm.intermediate_size) * item
    return 2 * kv + activations


def default_max_context_tokens(config, dtype: torch.dtype, free_bytes: int | None) -> int:
    """Tokens whose `token_bytes` fill `MEMORY_FRACTION` of `free_bytes`; with the free memory unknown, the
    position limit (`max_position_embeddings`)."""
    if free_bytes is None:
        return int(config.llm.max_position_embeddings)
    return max(1, int(free_bytes * MEMORY_FRACTION) // token_bytes(config, dtype))


def free_memory(device: torch.device) -> int | None:
    """Free memory of a device in bytes: available host RAM for CPU (Linux /proc/meminfo, else the free
    physical pages), `torch.cuda.mem_get_info` for CUDA; None when it cannot be told."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def text_extent(num_ids: int, framed: bool) -> int:
    """Tokens (= rope positions) a text segment of `num_ids` ids takes."""
    return num_ids + (2 if framed else 0)


def segments_extent(segments: Iterable) -> tuple[int, int]:
    """(tokens, rope positions) a list of context segments takes: text one position per token, an image
    (VAE or ViT view) one position for all its tokens."""
    tokens = positions = 0
    for seg in segments:
        tokens += seg.num_tokens
        positions += seg.num_tokens if seg.kind == "text" else 1
    return tokens, positions
