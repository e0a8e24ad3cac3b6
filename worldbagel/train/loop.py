"""The fine-tuning loop: staged / LoRA training of a Bagel on packed trajectory batches.

One optimizer step consumes `world_size * grad_accum` consecutive packs of the data stream (rank r takes
packs r*accum .. r*accum+accum-1 of the step). Loss normalisers are CE / MSE token counts over all ranks:
per micro-batch, as the official loop (`train.loss_reduction=per_microbatch`, the default: the step loss is the
mean of the micro-batches' token means), or of the whole step (`pooled`: a step's gradient then does not depend
on how its packs are split between ranks and accumulation, 2 ranks x 1 pack == 1 rank x 2 packs); the two are
the same with grad_accum=1. Before every step the global RNGs are re-seeded from
(seed, step, rank), and the data stream is a pure function of its cursor, so a resumed run reproduces the
uninterrupted one exactly.

Outputs in `out_dir`:
    metrics.jsonl            one line per `log_every` steps: step, loss, loss_ce, loss_mse, lr, grad_norm,
                             tokens, tokens_per_s, epoch, time
    checkpoints/step-*/      resumable training state (worldbagel.train.state)
    llm_config.json ... ema.safetensors, model.safetensors, ae.safetensors, tokenizer files
                             the exported BAGEL folder (EMA weights in ema.safetensors, raw weights in
                             model.safetensors; LoRA merged when merge_on_save), loadable with
                             `Bagel.from_pretrained(out_dir)`
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from worldbagel.errors import WorldBagelError, bad_argument
from worldbagel.folder_lock import exclusive_folder
from worldbagel.model import parallelize as par
from worldbagel.tracking import NullTracker, Tracker, TrackerConfig, open_tracker
from worldbagel.train.data_stream import TrainingData, derive_seed
from worldbagel.train.ema import EMA
from worldbagel.train.export import ExportWeights, export_folder
from worldbagel.train.lora import base_dtype, cast_lora_model, inject_lora
from worldbagel.train.objective import LossWeights, compute_losses, step_losses, step_normalisers
from worldbagel.train.options import TrainConfig, checkpointing_mode
from worldbagel.train.sharded_checkpoint import (
    load_sharded_checkpoint,
    read_on_every_rank,
    save_sharded_checkpoint,
    warn_if_resharded,
    with_kernel_flags,
)
from worldbagel.train.stages import apply_stage
from worldbagel.train.state import (
    LoadedCheckpoint,
    TrainState,
    latest_checkpoint,
    load_latest_checkpoint,
    remove_partial_checkpoints,
    save_checkpoint,
    set_rng_state,
)

if TYPE_CHECKING:
    from worldbagel.train.preview import FramePreview
    from worldbagel.train.validation import Validation

logger = logging.getLogger(__name__)

METRICS = "metrics.jsonl"


class TrainingDiverged(WorldBagelError):
    """The loss or the gradient norm became NaN/inf."""


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then constant or cosine to min_lr."""
    o = cfg.optim
    if o.warmup_steps and step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return o.lr
    span = max(cfg.steps - o.warmup_steps, 1)
    progress = min((step - o.warmup_steps) / span, 1.0)
    return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1.0 + math.cos(math.pi * progress))


@dataclass
class TrainResult:
    steps: int
    """Step reached."""
    out_dir: Path
    last_metrics: dict
    checkpoint: Path | None


class Trainer:
    """Trains `model` (a Bagel, already on its device; under torchrun on `env.device`) on `data`.

    `vae` / `tokenizer` go into the exported folder; `env` is the process's place in a torchrun job
    (`parallelize.init_distributed`), a single process by default. `tracking` says where scalars and predicted
    frames go (worldbagel.tracking, opened by the main rank); `validation` (worldbagel.train.validation) adds
    val_loss every `cfg.val_every` steps; `preview` (worldbagel.train.preview, single process only) draws the
    predicted frames logged every `tracking.media_every` steps.
    """

    def __init__(
        self,
        model: nn.Module,
        data: TrainingData,
        cfg: TrainConfig,
        out_dir: str | Path,
        vae=None,
        tokenizer=None,
        env: par.DistEnv | None = None,
        config_snapshot: dict | None = None,
        tracking: TrackerConfig | None = None,
        validation: Validation | None = None,
        preview: FramePreview | None = None,
    ):
        self.cfg = cfg
        self.data = data
        self.out_dir = Path(out_dir)
        self.env = env or par.DistEnv(device=next(model.parameters()).device)
        self.vae, self.tokenizer = vae, tokenizer
        self.snapshot = config_snapshot if config_snapshot is not None else asdict(cfg)
        self.bagel_config = model.config
        self.model = model
        self.device = self.env.device
        self._check_out_dir()

        apply_stage(model, cfg)
        self.amp = cfg.amp == "bf16" or (cfg.amp == "auto" and self.device.type == "cuda")
        if cfg.lora.enabled:
            inject_lora(model, cfg.lora)
            frozen_dtype = base_dtype(cfg.lora.base_dtype, self.device)
            if frozen_dtype != torch.float32:
                if cfg.amp == "none":
                    raise bad_argument(
                        "train.amp",
                        cfg.amp,
                        f"a {frozen_dtype} LoRA base (train.lora.base_dtype={cfg.lora.base_dtype}) computes "
                        "under bf16 autocast: use train.amp=auto or bf16, or train.lora.base_dtype=float32",
                    )
                self.amp = True
            cast_lora_model(model, frozen_dtype)
        self.trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        self.checkpointing = checkpointing_mode(
            cfg.activation_checkpointing, sum(p.numel() for p in model.parameters())
        )
        if self.checkpointing != "off":
            par.apply_activation_checkpointing(model, self.checkpointing)
        if self.env.distributed:
            par.apply_fsdp(model, param_dtype=torch.bfloat16 if self.amp else None)
        self.model = model.train()
        self.params = [p for _, p in self._named_trainable()]
        o = cfg.optim
        # one fused kernel for all parameters (~2x faster than foreach on CPU); FSDP's DTensors keep foreach
        kernel = {"foreach": True} if self.env.distributed else {"fused": True}
        self.optimizer = torch.optim.AdamW(
            self.params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay, **kernel
        )
        self.ema = EMA(self._named_trainable(), cfg.ema_decay) if cfg.ema_decay > 0 else None
        if self.ema is not None and cfg.steps * (1.0 - cfg.ema_decay) < 3.0:
            # After n steps the initial weights still hold decay**n of the EMA (0.9999 over 2,500 steps: 78 %).
            logger.warning(
                "train.ema_decay=%s over train.steps=%d leaves %.0f%% of the initial weights in the exported "
                "EMA (ema.safetensors); use a smaller decay (e.g. %.4f) or 0 for short runs",
                cfg.ema_decay,
                cfg.steps,
                100 * cfg.ema_decay**cfg.steps,
                max(0.0, 1.0 - 10.0 / cfg.steps),
            )
        self.state = TrainState()
        self.weights = LossWeights(cfg.ce_weight, cfg.mse_weight, cfg.mse_change_weight)
        self.tracking = tracking or TrackerConfig()
        self.tracker: Tracker = NullTracker()
        self.validation = validation
        if preview is not None and self.env.distributed:
            logger.warning("predicted-frame previews need a single process; this run logs none")
            preview = None
        self.preview = preview

    # ------------------------------------------------------------------ setup helpers
    def _named_trainable(self) -> list[tuple[str, torch.Tensor]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def _check_out_dir(self) -> None:
        last = latest_checkpoint(self.out_dir)
        if last is not None and not self.cfg.resume:
            raise bad_argument(
                "out",
                str(self.out_dir),
                f"already holds a training run ({last.name}); pass train.resume=true to continue it or "
                "choose another output folder",
            )

    def _resume(self) -> None:
        if self.env.is_main:
            remove_partial_checkpoints(self.out_dir)
        ck = load_latest_checkpoint(self.out_dir, read=self._read_checkpoint)
        if ck is None:
            logger.info("resume requested but %s has no checkpoint: starting from step 0", self.out_dir)
            return
        if not ck.sharded:
            self._load_whole(ck)
        else:
            warn_if_resharded(ck, self.env.world_size, self.cfg.grad_accum)
        set_rng_state(ck.rng_json, ck.rng_tensors)
        self.state = ck.state
        self._truncate_metrics(ck.state.step)
        logger.info("resumed from %s (step %d, data cursor %d)", ck.path, ck.state.step, ck.state.cursor)

    def _read_checkpoint(self, path: Path) -> LoadedCheckpoint:
        """Read one checkpoint on all ranks together; a sharded one is loaded into the model, optimizer and
        EMA here, so that a shard that fails to load makes `load_latest_checkpoint` fall back too."""
        ck = read_on_every_rank(path, self.env.rank)
        if ck.sharded:
            load_sharded_checkpoint(ck, self.model, self.optimizer, self.ema)
        return ck

    def _load_whole(self, ck: LoadedCheckpoint) -> None:
        """Load a whole-tensor checkpoint (every rank reads all of it; FSDP then keeps each rank's shards)."""
        par.load_full_state_dict(self.model, ck.model_state)
        named = dict(self._named_trainable())
        par.load_optimizer_state(
            self.model, self.optimizer, with_kernel_flags(ck.optim_state, self.optimizer)
        )
        if self.ema is not None:
            if ck.ema_state is None:
                raise WorldBagelError(f"checkpoint {ck.path} has no EMA but train.ema_decay > 0")
            self.ema.load_state_dict({n: par.shard_like(named[n], t) for n, t in ck.ema_state.items()})

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric lines written after the checkpoint (a killed run may have logged further, or torn
        its last line)."""
        path = self.out_dir / METRICS
        if not self.env.is_main or not path.is_file():
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    keep.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(ln + "\n" for ln in keep))
        os.replace(tmp, path)

    # ------------------------------------------------------------------ one step
    def _seed_step(self, step: int) -> None:
        s = derive_seed(self.cfg.seed, step, self.env.rank)
        random.seed(s)
        np.random.seed(s % 2**32)
        torch.manual_seed(s)

    def _step(self) -> dict:
        cfg, env = self.cfg, self.env
        accum = cfg.grad_accum
        first = self.state.cursor + env.rank * accum
        cursors = list(range(first, first + accum))
        batches = [self.data.batch(c, self.device) for c in cursors]
        # [accum, 3]: CE, MSE and all tokens of micro-batch k, summed over the ranks
        counts = par.all_reduce_sum(
            torch.tensor([[b.num_ce, b.num_mse, b.num_tokens] for b in batches], dtype=torch.float64)
        )
        norms = step_normalisers(counts[:, :2], env.world_size, cfg.loss_reduction)
        sums = torch.zeros(accum, 2, dtype=torch.float64)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else nullcontext()
        for k, (cursor, batch) in enumerate(zip(cursors, batches)):
            with autocast:
                parts = compute_losses(
                    self.model,
                    batch,
                    self.data.noise_generator(cursor),
                    cfg.timestep_shift,
                    self.weights,
                    ce_norm=norms[k][0],
                    mse_norm=norms[k][1],
                )
            parts["loss"].backward()
            sums[k] = torch.tensor([float(parts["ce_sum"]), float(parts["mse_sum"])], dtype=torch.float64)
        loss_ce, loss_mse = step_losses(par.all_reduce_sum(sums), counts[:, :2], cfg.loss_reduction)
        loss = self.weights.ce * loss_ce + self.weights.mse * loss_mse
        grad_norm = par.clip_grad_norm(self.params, cfg.optim.grad_clip)
        return {
            "loss": loss,
            "loss_ce": loss_ce,
            "loss_mse": loss_mse,
            "grad_norm": grad_norm,
            "tokens": int(counts[:, 2].sum()),
        }

    # ------------------------------------------------------------------ run
    def train(self, on_step: Callable[[dict], None] | None = None) -> TrainResult:
        """Run until `cfg.steps`; `on_step(metrics)` is called on the main rank after every step.

        The main rank holds the output folder's writer lock for the whole run (worldbagel.folder_lock): a
        second run into the same `out` fails at once instead of interleaving checkpoints and metrics.
        """
        with ExitStack() as held:
            failure = None
            if self.env.is_main:
                try:
                    held.enter_context(exclusive_folder(self.out_dir, "finetune"))
                except Exception as exc:  # noqa: BLE001 - re-raised below, after telling the other ranks
                    failure = exc
            if par.broadcast_flag(failure is not None):  # every rank stops, none waits in a collective
                raise failure or WorldBagelError(
                    f"rank 0 could not take the writer lock of {self.out_dir}: see its error"
                )
            held.callback(lambda: self.tracker.close())  # opened in _train; closed before the lock goes
            return self._train(on_step)

    def _train(self, on_step: Callable[[dict], None] | None) -> TrainResult:
        cfg, env = self.cfg, self.env
        if cfg.resume:
            self._resume()
        if env.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._open_tracker()
        metrics: dict = {}
        last_ckpt = latest_checkpoint(self.out_dir)
        world_packs = env.world_size * cfg.grad_accum
        while self.state.step < cfg.steps:
            step = self.state.step
            lr = lr_at(step, cfg)
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            self._seed_step(step)
            t0 = time.perf_counter()
            out = self._step()
            if not (math.isfinite(out["loss"]) and math.isfinite(out["grad_norm"])):
                self.optimizer.zero_grad(set_to_none=True)
                where = (
                    f"the last good checkpoint is {last_ckpt}"
                    if last_ckpt
                    else "no checkpoint was written yet"
                )
                raise TrainingDiverged(
                    f"loss became non-finite at step {step + 1} (loss={out['loss']}, loss_ce={out['loss_ce']}, "
                    f"loss_mse={out['loss_mse']}, grad_norm={out['grad_norm']}); training stopped without "
                    f"updating the weights; {where}. Lower train.optim.lr, raise warmup_steps or check the data."
                )
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update(self._named_trainable())
            dt = time.perf_counter() - t0
            self.state.step += 1
            self.state.cursor += world_packs
            self.state.tokens += out["tokens"]
            epoch, _ = self.data.locate(self.state.cursor)
            metrics = {
                "step": self.state.step,
                **{k: out[k] for k in ("loss", "loss_ce", "loss_mse", "grad_norm", "tokens")},
                "lr": lr,
                "tokens_per_s": out["tokens"] / max(dt, 1e-9),
                "epoch": epoch,
                "time": dt,
            }
            metrics.update(self._validate())  # every rank: the forward may be collective
            logged = self.state.step % cfg.log_every == 0 or self.state.step == cfg.steps
            if env.is_main and (logged or "val_loss" in metrics):
                self._log(metrics)
            if env.is_main:
                self._track(metrics)
            if self.state.step % cfg.save_every == 0 or self.state.step == cfg.steps:
                last_ckpt = self.save_checkpoint()
            if env.is_main and on_step is not None:
                on_step(metrics)
        self.export()
        par.barrier()
        return TrainResult(self.state.step, self.out_dir, metrics, last_ckpt)

    # ------------------------------------------------------------------ outputs
    def _open_tracker(self) -> None:
        """The main rank's tracker, with the run's config; a resumed run continues the tracked one."""
        resumed = self.state.step + 1 if self.cfg.resume and self.state.step > 0 else None
        self.tracker = open_tracker(
            self.tracking, self.out_dir, "finetune", self.snapshot, resume_step=resumed
        )

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else nullcontext()

    def _validate(self) -> dict:
        """val_loss / val_loss_ce / val_loss_mse at every `val_every`-th step and the last one, else {}."""
        step = self.state.step
        if self.validation is None or not (step % self.cfg.val_every == 0 or step == self.cfg.steps):
            return {}
        return self.validation.evaluate(
            self.model, self.weights, self.cfg.timestep_shift, self.device, self._autocast()
        )

    def _track(self, metrics: dict) -> None:
        """Send the step's scalars (every `tracker.every` steps, the last and every validated one) and predicted
        frames (every `tracker.media_every` steps and the last) to the tracker; main rank."""
        t, step = self.tracking, self.state.step
        last = step == self.cfg.steps
        if step % t.every == 0 or last or "val_loss" in metrics:  # a no-op with tracker.backend=none
            scalars = {f"train/{k}": v for k, v in metrics.items() if k != "step" and k[:4] != "val_"}
            scalars.update({f"val/{k[4:]}": v for k, v in metrics.items() if k[:4] == "val_"})
            self.tracker.log_scalars(step, scalars)
        media = t.backend != "none" and t.media_every and (step % t.media_every == 0 or last)
        if media and self.preview is not None:  # sampling costs time: only when something records it
            images, video = self.preview.render(self.model, self.vae, self.tokenizer, self._autocast())
            if images:
                self.tracker.log_images(step, "predicted/next_frame", images)
            if video is not None:
                self.tracker.log_video(step, "predicted/open_loop", video, fps=4.0)

    def _log(self, metrics: dict) -> None:
        with open(self.out_dir / METRICS, "a") as f:
            f.write(json.dumps(metrics) + "\n")
        every = max(1, self.cfg.steps // 20)  # about 20 INFO lines per run, every step at DEBUG
        logger.log(
            logging.INFO if metrics["step"] % every == 0 else logging.DEBUG,
            "step %d loss %.4f (ce %.4f, mse %.4f) lr %.2e grad %.3f %.0f tok/s",
            metrics["step"],
            metrics["loss"],
            metrics["loss_ce"],
            metrics["loss_mse"],
            metrics["lr"],
            metrics["grad_norm"],
            metrics["tokens_per_s"],
        )

    def save_checkpoint(self) -> Path | None:
        """Write a resumable checkpoint (worldbagel.train.state): whole tensors from a single process, each
        rank's shards under FSDP (collective), so no rank gathers the model, optimizer or EMA."""
        if not self.env.distributed:
            return self._save_whole()
        return save_sharded_checkpoint(
            self.out_dir,
            self.state,
            self.model,
            self.optimizer,
            self.ema,
            self.env,
            self.snapshot,
            self.cfg.keep_checkpoints,
        )

    def _save_whole(self) -> Path | None:
        """Whole tensors, written by the main rank. Under FSDP this gathers model, optimizer and EMA (every
        rank holds the whole EMA for a moment): scripts/bench_checkpoint.py measures it against the shards."""
        model_state = par.full_state_dict(self.model)
        optim_state = par.optimizer_state(self.model, self.optimizer)
        ema_state = None
        if self.ema is not None:
            ema_state = {n: par.full_tensor(t).detach().cpu() for n, t in self.ema.state_dict().items()}
        path = None
        if self.env.is_main:
            path = save_checkpoint(
                self.out_dir,
                self.state,
                model_state,
                optim_state,
                ema_state,
                self.snapshot,
                self.cfg.keep_checkpoints,
            )
        par.barrier()
        return path

    def export(self) -> None:
        """Write the BAGEL folder (EMA -> ema.safetensors, raw -> model.safetensors) into out_dir.

        One tensor at a time: under FSDP each parameter (and its EMA shadow) is gathered alone, written by
        the main rank and dropped, so no rank ever holds the whole model or EMA.
        """
        export_folder(
            self.out_dir,
            self.bagel_config,
            ExportWeights.from_model(self.model, self.ema.state_dict() if self.ema is not None else None),
            self.cfg.lora,
            self.vae,
            self.tokenizer,
            source=getattr(self.model, "pretrained_dir", None),
            write=self.env.is_main,
        )
