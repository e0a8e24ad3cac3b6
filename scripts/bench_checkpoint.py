"""Per-rank peak host RAM of saving, resuming and exporting an FSDP run: whole-state path vs sharded (DCP).

    python scripts/bench_checkpoint.py                              # preset scratch-small, 2 gloo ranks
    python scripts/bench_checkpoint.py --hidden 768 --layers 6      # the preset scaled up (not a preset)

Each phase runs in fresh processes: the 2 ranks of a gloo job on this machine (CPU, torchrun's environment
variables), a preset model sharded with FSDP2, AdamW and an EMA (decay 0.99) over its trainable parameters,
trained one step on toy episodes so the optimizer state exists. glibc's mmap threshold is fixed at 128 KiB
in the ranks (else it grows with the first large frees and later tensors fragment the heap). Right before
the phase each rank returns freed heap to the system (`malloc_trim`, so memory freed by the training step is
not silently reused), resets its peak resident set (Linux: `echo 5 > /proc/self/clear_refs` resets VmHWM)
and notes its resident set; "extra" is VmHWM after the phase minus that. Phases, per path:

    save     whole: model, optimizer and EMA gathered, rank 0 writes safetensors (what a single process does)
             sharded: each rank writes its shards through torch.distributed.checkpoint
    resume   whole: every rank reads the whole files, then keeps its shards
             sharded: each rank reads only its pieces, in place
    export   whole: raw state and EMA gathered whole (EMA on every rank), then written
             sharded: one parameter gathered, written by rank 0 and dropped at a time (what the trainer does)

Linux only (VmHWM). Prints one JSON line per rank and phase, then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

PHASES = ("save", "resume", "export")
PATHS = ("whole", "sharded")


# ------------------------------------------------------------------------------------------------ one rank
def rss_kib() -> tuple[int, int]:
    """(current resident set, its peak since the last reset) in KiB."""
    status = Path("/proc/self/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def reset_peak() -> None:
    """Give freed heap back to the system (glibc), so the resident set counts live memory only, then reset
    the peak to it."""
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def trainer_for(out: Path, preset: str, hidden: int, layers: int, resume: bool):
    import torch

    from worldbagel.data.sequence_plan import DropoutConfig, PackingConfig, PlanConfig
    from worldbagel.model import parallelize as par
    from worldbagel.model.sequence import SpecialIds
    from worldbagel.model.transforms import ImageTransform
    from worldbagel.train import presets
    from worldbagel.train.data_stream import TrainingData
    from worldbagel.train.latent_cache import FrameEncoder
    from worldbagel.train.loop import Trainer
    from worldbagel.train.options import OptimConfig, TrainConfig
    from worldbagel.train.toy_episodes import toy_episodes

    env = par.init_distributed("cpu")
    if hidden or layers:  # the preset scaled up: same shape rules as presets._config
        base = presets.PRESETS[preset].llm
        h, n = hidden or base.hidden_size, layers or base.num_hidden_layers
        presets.PRESETS[preset] = presets._config(h, n, base.num_attention_heads, base.num_key_value_heads)
    fresh = presets.build_preset(preset, seed=0)
    encoder = FrameEncoder(fresh.vae, ImageTransform(64, 32, 16), ImageTransform(56, 28, 14))
    s = fresh.tokenizer.special
    data = TrainingData(
        toy_episodes(2, steps=3, annotate=True),
        encoder,
        fresh.tokenizer.encode,
        SpecialIds(s.bos_token_id, s.eos_token_id, s.start_of_image, s.end_of_image),
        PlanConfig(context_frames=2),
        DropoutConfig(),
        PackingConfig(256, 320, 256),
    )
    cfg = TrainConfig(steps=1, ema_decay=0.99, resume=resume, optim=OptimConfig(lr=1e-4))
    torch.manual_seed(0)
    return Trainer(fresh.model, data, cfg, out, fresh.vae, fresh.tokenizer, env=env), env


def state_bytes(trainer) -> tuple[int, int]:
    """(bytes of model + optimizer + EMA whole, bytes of this rank's shards of them)."""
    from worldbagel.model import parallelize as par

    tensors = list(par.sharded_model_state(trainer.model).values())
    tensors += [v for s in trainer.optimizer.state.values() for v in s.values() if hasattr(v, "shape")]
    tensors += list(trainer.ema.state_dict().values())
    whole = sum(t.numel() * t.element_size() for t in tensors)
    local = sum((t.to_local() if hasattr(t, "to_local") else t).numel() * t.element_size() for t in tensors)
    return whole, local


def whole_export(trainer) -> None:
    """The export as it was before streaming: raw state and EMA gathered whole, then written."""
    from worldbagel.model import parallelize as par
    from worldbagel.train.export import ExportWeights, export_folder

    raw = par.full_state_dict(trainer.model)
    ema = {n: par.full_tensor(t).detach().cpu() for n, t in trainer.ema.state_dict().items()}
    weights = ExportWeights.from_dicts(raw, ema)
    export_folder(trainer.out_dir, trainer.bagel_config, weights, trainer.cfg.lora, write=trainer.env.is_main)


def child(phase: str, path: str, out: Path, preset: str, hidden: int, layers: int) -> None:
    import gc
    import time

    from worldbagel.model import parallelize as par
    from worldbagel.train.loop import Trainer

    # save writes the checkpoint that resume reads; export trains its own step in a folder of its own
    folder = out.with_name(out.name + "-export") if phase == "export" else out
    trainer, env = trainer_for(folder, preset, hidden, layers, resume=phase == "resume")
    try:
        if phase != "resume":
            trainer.save_checkpoint = lambda: None  # the step's own save and export are not measured
            trainer.export = lambda: None
            trainer.train()
        if path == "whole":
            run = {
                "save": trainer._save_whole,
                "resume": trainer._resume,
                "export": lambda: whole_export(trainer),
            }
        else:
            run = {
                "save": lambda: Trainer.save_checkpoint(trainer),
                "resume": trainer._resume,
                "export": lambda: Trainer.export(trainer),
            }
        gc.collect()
        par.barrier()
        reset_peak()
        before, _ = rss_kib()
        t0 = time.perf_counter()
        run[phase]()
        seconds = time.perf_counter() - t0
        _, peak = rss_kib()
        par.barrier()
        if phase == "resume":
            assert trainer.state.step == 1, "nothing was resumed"
        whole, local = state_bytes(trainer)
        record = dict(
            phase=phase,
            path=path,
            rank=env.rank,
            before_mib=before / 1024,
            extra_mib=(peak - before) / 1024,
            state_mib=whole / 2**20,
            shard_mib=local / 2**20,
            seconds=seconds,
        )
        Path(f"{out}.{phase}.{path}.rank{env.rank}.json").write_text(json.dumps(record))
    finally:
        par.shutdown()


# ------------------------------------------------------------------------------------------------ driver
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job(args: list[str], ranks: int, log: Path) -> None:
    """The ranks of one gloo job on this machine (torchrun's environment variables)."""
    port = str(_free_port())
    procs = []
    for rank in range(ranks):
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "MALLOC_MMAP_THRESHOLD_": "131072",  # fixed: freed tensors leave the resident set at once
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(ranks),
            "LOCAL_WORLD_SIZE": str(ranks),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        with open(f"{log}.rank{rank}.log", "w") as f:
            procs.append(
                subprocess.Popen([sys.executable, __file__, "--child", *args], env=env, stdout=f, stderr=f)
            )
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"a rank failed ({codes}); see {log}.rank*.log")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="scratch-small")
    ap.add_argument("--hidden", type=int, default=0, help="LLM hidden size instead of the preset's")
    ap.add_argument("--layers", type=int, default=0, help="LLM layers instead of the preset's")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--phases", default=",".join(PHASES), help="comma-separated subset of save,resume,export")
    ap.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset of whole,sharded")
    ap.add_argument("--child", nargs=3, metavar=("PHASE", "PATH", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        phase, path, out = a.child
        child(phase, path, Path(out), a.preset, a.hidden, a.layers)
        return
    if not Path("/proc/self/clear_refs").exists():
        raise SystemExit("this benchmark needs Linux (/proc/self/clear_refs resets the peak resident set)")
    shape = ["--preset", a.preset, "--hidden", str(a.hidden), "--layers", str(a.layers)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        phases = [p for p in PHASES if p in a.phases.split(",")]  # resume reads what save wrote
        if "resume" in phases and "save" not in phases:
            phases.insert(0, "save")
        for path in a.paths.split(","):
            out = Path(tmp) / path / "run"
            for phase in phases:
                job([phase, path, str(out), *shape], a.ranks, Path(tmp) / f"{path}-{phase}")
                for r in range(a.ranks):
                    rec = json.loads(Path(f"{out}.{phase}.{path}.rank{r}.json").read_text())
                    print(json.dumps(rec))
                    rows.append(rec)
    state = rows[0]["state_mib"]
    print(f"\n{a.preset}" + (f" (hidden {a.hidden}, layers {a.layers})" if a.hidden or a.layers else ""))
    shard = rows[0]["shard_mib"]
    print(
        f"model + optimizer + EMA: {state:.1f} MiB whole, {shard:.1f} MiB per rank over {a.ranks} gloo ranks\n"
    )
    print("| phase | path | rank | peak extra MiB | extra / whole state | seconds |")
    print("|---|---|---|---|---|---|")
    for phase in phases:
        for rec in (r for r in rows if r["phase"] == phase):
            print(
                f"| {phase} | {rec['path']} | {rec['rank']} | {rec['extra_mib']:.1f} | "
                f"{rec['extra_mib'] / state:.2f} | {rec['seconds']:.2f} |"
            )


if __name__ == "__main__":
    main()
