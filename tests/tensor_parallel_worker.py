"""One rank of the tensor-parallel test (tests/test_tensor_parallel.py), launched by torchrun:

    torchrun --nproc_per_node 2 tests/tensor_parallel_worker.py OUT.safetensors

Loads the tiny fixture split over the ranks (`model.tensor_parallel`), runs the same generations as the test's
single process (greedy text after an image and a text, a guided 4-step image) and, on rank 0, writes the text
ids and the image latents to OUT (safetensors), plus what a rank holds: its share of q_proj and of the cache.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def generations(pipe) -> dict[str, torch.Tensor]:
    """What the test compares: greedy text ids and guided image latents of fixed inputs."""
    from worldbagel.inference.generate import generate_text
    from worldbagel.inference.sampler import SamplerConfig

    frame = (np.random.RandomState(0).rand(64, 64, 3) * 255).astype("uint8")
    ic = pipe.interleave_contexts([frame, "move forward"])
    text = generate_text(ic.context.fork(), max_new_tokens=12, draft=0)
    drafted = generate_text(ic.context.fork(), max_new_tokens=12)
    out = pipe.generate_image(
        ic, config=SamplerConfig(num_steps=5), generator=torch.Generator().manual_seed(0), decode=False
    )
    k, _ = ic.context.cache.layers[0]
    return {
        "ids": torch.tensor(text.ids),
        "drafted_ids": torch.tensor(drafted.ids),
        "latents": out.latents.float().contiguous(),
        "cache_heads": torch.tensor(k.shape[1]),
    }


def main(out: str) -> None:
    from safetensors.torch import save_file

    from worldbagel.inference.pipeline import BagelPipeline
    from worldbagel.model.tensor_parallel import is_rank_zero
    from worldbagel.model.transforms import ImageTransform

    torch.set_num_threads(1)
    pipe = BagelPipeline.from_pretrained(
        ROOT / "tests" / "fixtures" / "bagel-tiny",
        tensor_parallel=2,
        vae_transform=ImageTransform(64, 32, 16),
        vit_transform=ImageTransform(56, 28, 14),
    )
    result = generations(pipe)
    q = pipe.model.language_model.model.layers[0].self_attn.q_proj.weight
    result["q_proj_local_rows"] = torch.tensor(q.to_local().shape[0])
    if is_rank_zero():
        save_file(result, out)


if __name__ == "__main__":
    main(sys.argv[1])
