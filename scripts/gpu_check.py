"""One-shot GPU check: everything worldbagel has not yet run on CUDA, in one JSON (scripts/gpu_check.sh).

    python scripts/gpu_check.py --out gpu_check.json          # on a CUDA machine (about 8 minutes on one H100)
    python scripts/gpu_check.py --smoke --out smoke.json      # the same parts at tiny shapes on the CPU

Sections, in order, each in a process of its own with its own time budget (a section that fails, crashes or
runs out of time is recorded with its error, and the next one still runs; the JSON is rewritten after each):

    environment     torch, CUDA device and memory
    flex_attention  FlexAttention on CUDA (fp32 and bf16, forward and backward) against the CPU reference path
                    (`attend_packed_sdpa` in fp32) on packed samples with caches and causal / full / noise splits
    bf16_parity     the tiny fixture in bf16 on the device against fp32 on the CPU: image latents and text logits
    bench_scale     worldbagel/bench/bagel_scale.py at the 7B shapes with random weights: seconds per 256^2 and 512^2
                    frame with the release sampler, CFG branches batched and one forward per branch, peak memory
                    against the memory plan, text tokens/s
    lora_step       one LoRA training step (adapters on the trainer's default targets, activation checkpointing)
                    at the 7B shapes: seconds, peak memory against the memory plan
    gpu_tests       the `gpu`-marked tests (pytest -m gpu)

`--smoke` runs every section at tiny shapes on the CPU (the CPU's bf16 stands in for CUDA's, FlexAttention runs
eagerly and forward-only), so the check's code has run before it meets a GPU. `--inline` runs the sections in
this process (faster; no per-section time limit).

Tolerances: FlexAttention differs from the fp32 reference by summation order only (fp32: relative 1e-3, which
also admits TF32 matmuls), or by bf16 rounding of q, k, v, the probabilities and the output (8 significant
bits, 2^-9 relative per rounding: relative 2e-2). bf16 parity: the fixture's ~30 rounded stages in sequence
(2 layers of norms, projections, attention and MLP, 5 flow steps) give ~sqrt(30) x 2^-9 ~ 1 % (measured on the
CPU: 1.9 % for latents, 1.0 % for logits); 5 % is allowed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "bagel-tiny"
SECTIONS: dict[str, int] = {
    "environment": 20,
    "flex_attention": 50,
    "bf16_parity": 30,
    "bench_scale": 140,
    "lora_step": 130,
    "gpu_tests": 90,
}
"""Section -> time budget in seconds on one H100 (460 s in all; gpu_check.sh stops everything at 8 minutes)."""
FLEX_TOLERANCE = {"float32": 1e-3, "bfloat16": 2e-2}
BF16_TOLERANCE = 5e-2


def _device(smoke: bool) -> str:
    import torch

    if smoke:
        return "cpu"
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device: run with --smoke for the CPU rehearsal")
    return "cuda"


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _rel(x, ref) -> float:
    return float((x.float().cpu() - ref.float().cpu()).norm() / ref.float().cpu().norm().clamp_min(1e-30))


# ============================================================================================ sections
def environment(smoke: bool) -> dict:
    import torch

    out = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda_available": torch.cuda.is_available(),
        "cuda": torch.version.cuda,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update(
            device=props.name, memory_gib=props.total_memory / 2**30, capability=[props.major, props.minor]
        )
    return out


def _layouts(heads: tuple[int, int, int], scale: int):
    """Packed samples as a denoising and a training step make them: caches, text, clean and noisy images."""
    import torch

    from worldbagel.model.attention import SampleLayout, Split

    hq, hkv, d = heads
    g = torch.Generator().manual_seed(0)
    layouts = [
        SampleLayout([Split(20 * scale, "causal"), Split(66 * scale, "noise")], past_len=120 * scale),
        SampleLayout(
            [
                Split(9 * scale, "causal"),
                Split(40 * scale, "full"),
                Split(7, "causal"),
                Split(30 * scale, "noise"),
            ]
        ),
        SampleLayout([Split(5, "causal")], past_len=33 * scale),
    ]
    n = sum(lay.length for lay in layouts)
    q = torch.randn(n, hq, d, generator=g)
    k = torch.randn(n, hkv, d, generator=g)
    v = torch.randn(n, hkv, d, generator=g)
    past = [
        (torch.randn(lay.past_len, hkv, d, generator=g), torch.randn(lay.past_len, hkv, d, generator=g))
        if lay.past_len
        else None
        for lay in layouts
    ]
    return layouts, q, k, v, past


def _moved(past, device: str, dtype):
    return [
        (k.to(device, dtype), v.to(device, dtype)) if p is not None else None
        for p in past
        for k, v in [p or (None, None)]
    ]


def flex_attention(smoke: bool) -> dict:
    """FlexAttention on the device against the CPU reference (`attend_packed_sdpa`, fp32)."""
    import warnings

    import torch

    warnings.filterwarnings("ignore", "flex_attention called without torch.compile")  # the CPU rehearsal

    from worldbagel.model.attention import attend_packed_sdpa
    from worldbagel.model.flex_backend import attend_packed_flex

    device = _device(smoke)
    heads, scale = ((4, 2, 16), 1) if smoke else ((28, 4, 128), 4)  # the 7B head shapes on CUDA
    layouts, q, k, v, past = _layouts(heads, scale)
    ref = attend_packed_sdpa(q, k, v, layouts, past)
    out: dict = {"tokens": q.shape[0], "heads": list(heads)}
    for dtype in ("float32", "bfloat16"):
        dt = getattr(torch, dtype)
        moved = [t.to(device, dt) for t in (q, k, v)]
        got = attend_packed_flex(*moved, layouts, _moved(past, device, dt))
        _sync(device)
        rel = _rel(got, ref)
        out[dtype] = {"forward_rel": rel, "ok": rel < FLEX_TOLERANCE[dtype]}
        if device == "cuda":  # compiled FlexAttention has a backward; the eager CPU one does not
            out[dtype].update(_flex_backward(layouts, q, k, v, past, dt, device))
    out["ok"] = all(out[d]["ok"] for d in ("float32", "bfloat16"))
    if not out["ok"]:
        raise AssertionError(f"FlexAttention outside tolerance {FLEX_TOLERANCE}: {out}")
    return out


def _flex_backward(layouts, q, k, v, past, dt, device) -> dict:
    import torch

    from worldbagel.model.attention import attend_packed_sdpa
    from worldbagel.model.flex_backend import attend_packed_flex

    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(1))
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    (attend_packed_sdpa(*leaves, layouts, past) * grad).sum().backward()
    dev = [t.detach().to(device, dt).requires_grad_(True) for t in (q, k, v)]
    (attend_packed_flex(*dev, layouts, _moved(past, device, dt)).float() * grad.to(device)).sum().backward()
    rel = max(_rel(d.grad, r.grad) for d, r in zip(dev, leaves))
    return {"backward_rel": rel, "ok": rel < FLEX_TOLERANCE[str(dt).removeprefix("torch.")] * 3}


def _generations(pipe):
    """Latents of a guided 6-step generation and 8 greedy tokens' logits after a frame and a text."""
    import numpy as np
    import torch

    from worldbagel.inference.generate import generate_text
    from worldbagel.inference.sampler import SamplerConfig

    frame = (np.random.RandomState(0).rand(64, 64, 3) * 255).astype("uint8")
    ic = pipe.interleave_contexts([frame, "move forward"])
    config = SamplerConfig(num_steps=6)
    latents = pipe.generate_image(ic, config=config, generator=torch.Generator().manual_seed(0), decode=False)
    text = generate_text(ic.context.fork(), max_new_tokens=8, return_logits=True, draft=0)
    return latents.latents.float().cpu(), torch.stack(text.logits).float().cpu(), text.ids


def bf16_parity(smoke: bool) -> dict:
    from worldbagel.inference.pipeline import BagelPipeline
    from worldbagel.model.transforms import ImageTransform

    device = _device(smoke)
    kw = {"vae_transform": ImageTransform(64, 32, 16), "vit_transform": ImageTransform(56, 28, 14)}
    ref = _generations(BagelPipeline.from_pretrained(FIXTURE, dtype="float32", device="cpu", **kw))
    got = _generations(BagelPipeline.from_pretrained(FIXTURE, dtype="bfloat16", device=device, **kw))
    out = {
        "device": device,
        "latents_rel": _rel(got[0], ref[0]),
        "logits_rel": _rel(got[1], ref[1]),
        "same_greedy_ids": got[2] == ref[2],
        "tolerance": BF16_TOLERANCE,
    }
    out["ok"] = out["latents_rel"] < BF16_TOLERANCE and out["logits_rel"] < BF16_TOLERANCE
    if not out["ok"]:
        raise AssertionError(f"bf16 differs from fp32 by more than {BF16_TOLERANCE}: {out}")
    return out


def bench_scale(smoke: bool) -> dict:
    from dataclasses import asdict

    from worldbagel.bench.bagel_scale import ScaleOptions, measure_scale

    if smoke:
        options = ScaleOptions(
            tiny=True, device="cpu", sizes=(64,), steps=3, text_tokens=4, context_frames=2, repeats=1
        )
    else:
        _device(smoke)
        options = ScaleOptions(
            device="cuda", sizes=(256, 512), steps=50, text_tokens=32, context_frames=4, repeats=1
        )
    return {"options": asdict(options), "rows": measure_scale(options, FIXTURE)}


def _pack(config, frames: int, side: int, vit_side: int, text: int, device: str):
    """One training sample of `frames` frames (ViT + clean VAE tokens, an action text with CE) and a noisy
    target frame: the shape of a world-model training pack."""
    import torch

    from worldbagel.model.sequence import SequenceBuilder, SpecialIds

    g = torch.Generator().manual_seed(0)
    z, p = config.patch_latent_dim, 3 * config.vit.patch_size**2
    builder = SequenceBuilder(SpecialIds(1, 2, 3, 4))
    for _ in range(frames):
        builder.add_vit_image(torch.randn(vit_side**2, p, generator=g), (vit_side, vit_side))
        builder.add_vae_image(torch.randn(side**2, z, generator=g), (side, side))
        builder.add_text(list(range(5, 5 + text)), loss=True)
    builder.add_vae_image(torch.randn(side**2, z, generator=g), (side, side), t=0.5, noisy=True)
    return builder.build(device)


def lora_step(smoke: bool) -> dict:
    """One LoRA step (AdamW, activation checkpointing) on a random-weight model: seconds and peak memory."""
    import torch
    import torch.nn.functional as F

    from worldbagel.bench.bagel_scale import build_model, tiny_config
    from worldbagel.model.configuration import BagelConfig
    from worldbagel.model.memory_plan import PlanOptions, memory_plan
    from worldbagel.model.parallelize import apply_activation_checkpointing
    from worldbagel.train.lora import inject_lora
    from worldbagel.train.options import LoraConfig

    device = _device(smoke)
    config = tiny_config() if smoke else BagelConfig()
    model = build_model(config, device, torch.bfloat16).train()  # the frozen base in bf16
    rank = 16
    inject_lora(model, LoraConfig(enabled=True, r=rank))
    for p in model.parameters():  # the adapters train in fp32 (peft casts their input)
        if p.requires_grad:
            p.data = p.data.float()
    apply_activation_checkpointing(model)
    frames, side, vit_side, text = (2, 4, 4, 6) if smoke else (6, 16, 18, 10)  # 256^2 frames at 7B
    seq = _pack(config, frames, side, vit_side, text, device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> float:
        _sync(device)
        t = time.perf_counter()
        hidden, _ = model.forward_packed(seq)
        ce = F.cross_entropy(model.logits(hidden[seq.ce_idx]).float(), seq.ce_labels)
        mse = model.velocity(hidden[seq.noisy_vae_idx]).float().pow(2).mean()
        (ce + mse).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        return time.perf_counter() - t

    first = step()  # compiles FlexAttention's forward and backward on CUDA
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = step()
    vit_px = vit_side * config.vit.patch_size
    options = PlanOptions(
        height=side * config.latent_downsample,
        width=side * config.latent_downsample,
        text_tokens=text,
        vit_image_size=[vit_px, vit_px, config.vit.patch_size],
        token_budget=seq.num_tokens,
        gpus=1,
        lora_rank=rank,
        attention="sdpa" if device == "cpu" else "flex",
        act_bytes=2,
    )
    plan = memory_plan(config, options).setting("LoRA + AC")
    out = {
        "device": device,
        "tokens": seq.num_tokens,
        "first_step_s": first,
        "step_s": seconds,
        "tokens_per_s": seq.num_tokens / seconds,
        "plan_gib": plan.total / 2**30,
        "plan_parts_gib": {p.name: p.bytes / 2**30 for p in plan.parts},
    }
    if device == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["peak_over_plan"] = out["peak_memory_gib"] / out["plan_gib"]
    return out


def gpu_tests(smoke: bool) -> dict:
    """pytest -m gpu (smoke: two files, whose gpu tests skip without CUDA), counted from its junit report."""
    import xml.etree.ElementTree as ET

    files = ["tests/test_quantize.py", "tests/test_bench_bagel_scale.py"] if smoke else ["tests"]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *files]
        run = subprocess.run([*cmd, f"--junitxml={report}"], cwd=ROOT, capture_output=True, text=True)
        if not report.exists():
            raise RuntimeError(f"pytest wrote no report (exit {run.returncode}): {run.stdout[-2000:]}")
        suite = ET.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        failed = [
            f"{case.get('classname')}::{case.get('name')}"
            for case in suite.iter("testcase")
            if case.find("failure") is not None or case.find("error") is not None
        ]
    out = {
        "tests": int(suite.get("tests", 0)),
        "failures": int(suite.get("failures", 0)) + int(suite.get("errors", 0)),
        "skipped": int(suite.get("skipped", 0)),
        "failed": failed,
        "exit_code": run.returncode,
        "tail": run.stdout[-1500:],
    }
    if failed or run.returncode not in (0, 5):  # 5: nothing collected
        raise AssertionError(f"gpu tests failed: {failed or run.stdout[-1500:]}")
    return out


RUNNERS = {
    "environment": environment,
    "flex_attention": flex_attention,
    "bf16_parity": bf16_parity,
    "bench_scale": bench_scale,
    "lora_step": lora_step,
    "gpu_tests": gpu_tests,
}


# ============================================================================================ driver
def run_section(name: str, smoke: bool, fail: set[str]) -> dict:
    """Run one section here; its result, or its error with the traceback's end."""
    start = time.perf_counter()
    try:
        if name in fail:
            raise RuntimeError(f"--fail {name}: an injected failure")
        result = RUNNERS[name](smoke)
        return {"ok": True, "seconds": time.perf_counter() - start, "result": result}
    except Exception as exc:  # one failing section must not lose the others' results
        tail = traceback.format_exc()[-2000:]
        return {
            "ok": False,
            "seconds": time.perf_counter() - start,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": tail,
        }


def run_isolated(name: str, smoke: bool, fail: set[str], budget: float) -> dict:
    """Run one section in its own process group, killed (children included) after `budget` seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "section.json"
        cmd = [sys.executable, __file__, "--section", name, "--section-out", str(out)]
        cmd += ["--smoke"] if smoke else []
        cmd += [f"--fail={f}" for f in sorted(fail)]
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        try:
            log, _ = proc.communicate(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            log, _ = proc.communicate()
            return {
                "ok": False,
                "seconds": time.perf_counter() - start,
                "error": f"timed out after {budget:.0f} s",
                "log": log[-2000:],
            }
        if out.exists():
            return json.loads(out.read_text())
        return {
            "ok": False,
            "seconds": time.perf_counter() - start,
            "error": f"the section process exited with {proc.returncode}",
            "log": log[-2000:],
        }


def write_json(path: Path, data: dict) -> None:
    """Write `data` atomically (a temporary file next to `path`, then os.replace)."""
    from worldbagel.file_mode import mkstemp

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON to write")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (a rehearsal)")
    ap.add_argument(
        "--inline", action="store_true", help="run the sections in this process, without time limits"
    )
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset, in this order")
    ap.add_argument("--budget-scale", type=float, default=1.0, help="multiply every section's time budget")
    ap.add_argument(
        "--fail", action="append", default=[], help="make this section fail (tests the recording)"
    )
    ap.add_argument("--section", help=argparse.SUPPRESS)
    ap.add_argument("--section-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    fail = set(args.fail)
    if args.section:  # a child of run_isolated
        write_json(args.section_out, run_section(args.section, args.smoke, fail))
        return {}
    names = [s for s in args.sections.split(",") if s]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        raise SystemExit(f"--sections: unknown {unknown}; choose from {list(SECTIONS)}")
    report = {
        "schema": 1,
        "smoke": args.smoke,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "complete": False,
        "sections": {},
    }
    for name in names:
        budget = SECTIONS[name] * args.budget_scale
        if args.inline:
            result = run_section(name, args.smoke, fail)
        else:
            result = run_isolated(name, args.smoke, fail, budget)
        report["sections"][name] = {"budget_s": budget, **result}
        write_json(args.out, report)  # what has run so far survives a kill of the whole check
        print(
            f"{name}: {'ok' if result['ok'] else 'FAILED ' + result['error']} ({result['seconds']:.1f} s)",
            flush=True,
        )
    report["complete"] = True
    report["ok"] = all(s["ok"] for s in report["sections"].values())
    write_json(args.out, report)
    return report


if __name__ == "__main__":
    sys.exit(0 if main().get("ok", True) else 1)
