"""Tensor-parallel inference (worldbagel/model/tensor_parallel.py): two gloo ranks on the CPU give the text ids and
image latents of one process, each rank holding half of the decoder linears and of the KV cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from worldbagel.errors import ConfigError
from worldbagel.model.bagel import Bagel
from worldbagel.model.configuration import BagelConfig
from worldbagel.model.quantize import quantizable_linears
from worldbagel.model.tensor_parallel import check_divisible, load_tensor_parallel, parallel_plan

WORKER = Path(__file__).with_name("tensor_parallel_worker.py")


def test_two_gloo_ranks_equal_one_process(tmp_path, tiny_pipe):
    from safetensors.torch import load_file

    sys.path.insert(0, str(WORKER.parent))
    from tensor_parallel_worker import generations

    out = tmp_path / "rank0.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    run = subprocess.run([*cmd, str(WORKER), str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    split = load_file(out)
    one = generations(tiny_pipe)
    # each rank computes its own heads (4 -> 2 query heads, 2 -> 1 key/value head) and caches only those
    assert (
        int(split["q_proj_local_rows"]) == 32
        and int(split["cache_heads"]) == 1 == int(one["cache_heads"]) // 2
    )
    assert (
        split["ids"].tolist() == one["ids"].tolist() and split["drafted_ids"].tolist() == one["ids"].tolist()
    )
    # Latents: the row-parallel projections add two fp32 partial sums where one process adds one long sum,
    # so each o_proj / down_proj output differs by a few ulps (~1e-7 relative); over 2 layers x 4 flow steps,
    # amplified by CFG's extrapolation (scales 4 and 2), that stays far below 1e-4 of the latents' size.
    diff = (split["latents"] - one["latents"]).abs().max()
    assert diff <= 1e-4 * one["latents"].abs().max(), float(diff)


def test_plan_splits_every_decoder_linear_of_both_experts(tiny_dir):
    with torch.device("meta"):
        model = Bagel(BagelConfig.from_folder(tiny_dir))
    plan = parallel_plan(model)
    names = {f"layers.{n}" for n in quantizable_linears(model)}
    assert set(plan) == names and any("_moe_gen" in n for n in names)
    styles = {n.rsplit(".", 1)[-1]: type(s).__name__ for n, s in plan.items()}
    assert styles["o_proj_moe_gen"] == styles["down_proj"] == "RowwiseParallel"
    assert styles["q_proj_moe_gen"] == styles["gate_proj"] == "ColwiseParallel"


def test_bad_settings_fail_before_loading(tiny_dir):
    with pytest.raises(ConfigError, match=r"model.tensor_parallel=3.*use one of \[1, 2\]"):
        check_divisible(BagelConfig.from_folder(tiny_dir), 3)
    with pytest.raises(ConfigError, match="do not combine"):
        load_tensor_parallel(tiny_dir, 2, quantize="int8")
    with pytest.raises(ConfigError, match="torchrun --nproc_per_node 2"):
        load_tensor_parallel(tiny_dir, 2)  # one process, no torchrun
