"""FSDP2 on CPU/gloo: sharded training, its sharded checkpoints (DCP) and the streamed export.

The tests launch this file as the 2 ranks of a job (gloo on 127.0.0.1, torchrun's environment variables).
An uninterrupted 2-rank run is compared with: a single process accumulating 2 packs per step (same losses and
weights up to rounding); a 2-rank run killed with SIGKILL after a checkpoint and resumed from its shards
(bit-identical); a single process resuming the 2-rank shards (DCP reshards) and exporting (bit-identical
weights).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

STEPS = 4  # checkpoints at steps 2 and 4


def run(out: str, grad_accum: int, steps: int = STEPS, resume: bool = False) -> None:
    """Train a tiny Bagel on toy episodes (single process, or one rank of a torchrun job)."""
    import torch

    from worldbagel.data.sequence_plan import DropoutConfig, PackingConfig, PlanConfig
    from worldbagel.model import parallelize as par
    from worldbagel.model.bagel import Bagel
    from worldbagel.model.configuration import BagelConfig, LLMConfig, VAEConfig, ViTConfig
    from worldbagel.model.sequence import SpecialIds
    from worldbagel.model.transforms import ImageTransform
    from worldbagel.model.vae import FluxVAE
    from worldbagel.train.data_stream import TrainingData
    from worldbagel.train.latent_cache import FrameEncoder
    from worldbagel.train.loop import Trainer
    from worldbagel.train.options import OptimConfig, TrainConfig
    from worldbagel.train.toy_episodes import toy_episodes

    env = par.init_distributed("cpu")
    try:
        cfg = BagelConfig(
            llm=LLMConfig(
                vocab_size=320,
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
            ),
            vit=ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
            vae=VAEConfig(ch=32, ch_mult=[1, 1, 1, 1], num_res_blocks=1),
        )
        torch.manual_seed(0)
        model = Bagel(cfg)
        model.init_weights()
        torch.nn.init.normal_(model.llm2vae.weight, std=0.02)  # so the MSE reaches every layer at step 1
        vae = FluxVAE.from_config(cfg.vae)
        encoder = FrameEncoder(vae, ImageTransform(64, 32, 16), ImageTransform(56, 28, 14))
        data = TrainingData(
            toy_episodes(2, steps=4, annotate=True),
            encoder,
            lambda text: list(text.encode()),  # byte ids; 256..259 are the special tokens
            SpecialIds(256, 257, 258, 259),
            PlanConfig(context_frames=2),
            DropoutConfig(),
            PackingConfig(192, 256, 256),
        )
        train = TrainConfig(
            steps=steps,
            grad_accum=grad_accum,
            save_every=2,
            ema_decay=0.9,
            resume=resume,
            loss_reduction="pooled",  # 2 ranks x 1 pack == 1 process x 2 packs only with pooled token means
            optim=OptimConfig(lr=1e-3),
        )
        Trainer(model, data, train, out, env=env).train()
    finally:
        par.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: Path, steps: int, resume: bool) -> list[subprocess.Popen]:
    """Start the 2 ranks of a job as torchrun would (RANK, WORLD_SIZE, MASTER_* in the environment), each
    logging to `<out>.rank<r>.log`; the test holds both pids, so it can kill exactly them."""
    out.parent.mkdir(parents=True, exist_ok=True)
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        with open(f"{out}.rank{rank}.log", "w") as log:
            cmd = [sys.executable, __file__, str(out), str(steps), str(int(resume))]
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def two_ranks_run(out: Path, steps: int, resume: bool) -> None:
    procs = launch(out, steps, resume)
    try:
        for p in procs:
            p.wait(timeout=600)
    finally:
        for p in procs:
            if p.poll() is None:  # a rank waits in a collective for one that failed
                p.kill()
                p.wait()
    logs = [Path(f"{out}.rank{r}.log").read_text()[-3000:] for r in range(2)]
    assert [p.returncode for p in procs] == [0, 0], logs


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def curve(lines: list[dict]) -> list[dict]:
    """Metric lines without the wall-clock fields."""
    return [{k: v for k, v in m.items() if k not in ("time", "tokens_per_s")} for m in lines]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """An uninterrupted 2-rank run of STEPS steps (sharded checkpoints at steps 2 and 4)."""
    out = tmp_path_factory.mktemp("fsdp") / "run"
    two_ranks_run(out, STEPS, resume=False)
    return out


@pytest.mark.slow
def test_fsdp_two_ranks_match_one_process_with_accumulation(two_ranks, tmp_path):
    single_out = tmp_path / "single"
    run(str(single_out), grad_accum=2)

    a, b = metrics(single_out), metrics(two_ranks)
    assert [m["step"] for m in b] == list(range(1, STEPS + 1))
    for x, y in zip(a, b):
        assert y["tokens"] == x["tokens"]
        for key in ("loss", "loss_ce", "loss_mse", "grad_norm"):
            assert y[key] == pytest.approx(x[key], rel=1e-4), (x["step"], key)

    import torch

    from worldbagel.model.weights_file import load_file

    for name in ("model.safetensors", "ema.safetensors"):
        x, y = load_file(single_out / name), load_file(two_ranks / name)
        assert x.keys() == y.keys()
        rel = {k: float((x[k] - y[k]).norm() / (x[k].norm() + 1e-12)) for k in x}
        bad = {k: r for k, r in rel.items() if r > 1e-3 and not ("vit_model" in k and "k_proj.bias" in k)}
        assert not bad, (name, bad)
        assert torch.equal(x["vit_pos_embed.pos_embed"], y["vit_pos_embed.pos_embed"])


@pytest.mark.slow
def test_sigkill_then_sharded_resume_is_bit_identical(two_ranks, tmp_path):
    """Kill both ranks with SIGKILL once the step-2 checkpoint exists, resume from its
    shards: the loss curve and the exported raw and EMA weights equal the uninterrupted run's exactly."""
    import torch

    from worldbagel.model.weights_file import load_file
    from worldbagel.train.state import list_checkpoints, load_checkpoint

    out = tmp_path / "killed"
    procs = launch(out, STEPS, resume=False)
    marker = out / "checkpoints" / "step-00000002" / "state.json"
    deadline = time.time() + 300
    try:
        while not marker.exists():
            if any(p.poll() is not None for p in procs):
                pytest.fail(f"a rank exited early: {Path(f'{out}.rank0.log').read_text()[-3000:]}")
            if time.time() > deadline:
                pytest.fail("no checkpoint after 300 s")
            time.sleep(0.01)
        for p in procs:
            os.kill(p.pid, signal.SIGKILL)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    assert [p.returncode for p in procs] == [-signal.SIGKILL] * 2
    assert max(m["step"] for m in metrics(out)) < STEPS  # really interrupted mid-way
    ck = load_checkpoint(list_checkpoints(out)[-1])
    assert ck.path.name == "step-00000002" and ck.sharded and ck.world_size == 2 and ck.has_ema
    assert (
        not list((ck.path / "shards").glob("*.metadata")) and not (ck.path / "shards" / ".metadata").exists()
    )

    two_ranks_run(out, STEPS, resume=True)

    assert curve(metrics(out)) == curve(metrics(two_ranks))  # == : bit-identical floats
    for name in ("model.safetensors", "ema.safetensors"):
        x, y = load_file(two_ranks / name), load_file(out / name)
        assert x.keys() == y.keys()
        assert all(torch.equal(x[k], y[k]) for k in x), [k for k in x if not torch.equal(x[k], y[k])]


@pytest.mark.slow  # a 2-rank job: 20-45 s on 2 shared cores
def test_single_process_resumes_a_two_rank_checkpoint(two_ranks, tmp_path):
    """DCP reshards: one process reads the 2-rank shards of the last step and exports exactly what the
    2-rank run exported."""
    import shutil

    import torch

    from worldbagel.model.weights_file import load_file

    out = tmp_path / "one"
    shutil.copytree(two_ranks / "checkpoints", out / "checkpoints")
    shutil.copy(two_ranks / "metrics.jsonl", out / "metrics.jsonl")
    run(str(out), grad_accum=2, resume=True)  # at step STEPS already: load, then export
    for name in ("model.safetensors", "ema.safetensors"):
        x, y = load_file(two_ranks / name), load_file(out / name)
        assert x.keys() == y.keys()
        assert all(torch.equal(x[k], y[k]) for k in x), [k for k in x if not torch.equal(x[k], y[k])]


@pytest.mark.slow  # a 2-rank job: 20-45 s on 2 shared cores
def test_a_locked_output_folder_stops_every_rank(tmp_path):
    """Rank 0 takes the folder's writer lock; when another run holds it, every rank stops at once with an
    error that says why (else the other ranks die, or wait, in their next collective with a rank gone)."""
    from worldbagel.folder_lock import exclusive_folder

    out = tmp_path / "locked"
    with exclusive_folder(out, "another finetune"):
        procs = launch(out, STEPS, resume=False)
        try:
            codes = [p.wait(timeout=300) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    logs = [Path(f"{out}.rank{r}.log").read_text() for r in range(2)]
    assert codes[0] != 0 and codes[1] != 0, logs
    assert "FolderLocked" in logs[0] and "being written by" in logs[0]
    assert "rank 0 could not take the writer lock" in logs[1]
    assert not (out / "checkpoints").exists()


if __name__ == "__main__":  # one rank of a 2-rank job launched by the tests
    run(sys.argv[1], grad_accum=1, steps=int(sys.argv[2]), resume=bool(int(sys.argv[3])))
