"""`worldbagel info MODEL_DIR`: the model's config, parameters per expert, stored dtypes and files."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table

from worldbagel.config import InfoConfig
from worldbagel.model.folder_info import PARTS, inspect_folder
from worldbagel.model.hub import resolve_model_folder
from worldbagel.model.memory_plan import GPU_SIZES_GB, MemoryPlan, memory_plan


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def _count(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.3f} B"
    if n >= 1e6:
        return f"{n / 1e6:.2f} M"
    return f"{n:,}"


def run(cfg: InfoConfig, console: Console) -> int:
    info = inspect_folder(resolve_model_folder(cfg.model_dir, "model_dir"), read_weights=cfg.weights)
    c = info.config
    llm, vit, vae = c.llm, c.vit, c.vae

    conf = Table(title=f"BAGEL model {info.path}", show_header=True)
    conf.add_column("part")
    conf.add_column("setting")
    conf.add_column("value", justify="right")
    rows = [
        ("LLM", "layer module", llm.layer_module),
        ("LLM", "hidden / intermediate", f"{llm.hidden_size} / {llm.intermediate_size}"),
        ("LLM", "layers", str(llm.num_hidden_layers)),
        (
            "LLM",
            "heads q / kv (head dim)",
            f"{llm.num_attention_heads} / {llm.num_key_value_heads} ({llm.head_dim})",
        ),
        ("LLM", "vocab", f"{llm.vocab_size:,}"),
        ("LLM", "rope theta", f"{llm.rope_theta:g}"),
        ("ViT", "hidden / intermediate", f"{vit.hidden_size} / {vit.intermediate_size}"),
        ("ViT", "layers used / heads", f"{vit.num_hidden_layers} / {vit.num_attention_heads}"),
        ("ViT", "patch / positions", f"{vit.patch_size} / {vit.num_positions}"),
        ("VAE", "ch x mult / res blocks", f"{vae.ch} x {list(vae.ch_mult)} / {vae.num_res_blocks}"),
        ("VAE", "z channels / downsample", f"{vae.z_channels} / {vae.downsample}"),
        ("VAE", "scale / shift", f"{vae.scale_factor} / {vae.shift_factor}"),
        ("Bagel", "latent patch / max latent side", f"{c.latent_patch_size} / {c.max_latent_size}"),
        ("Bagel", "ViT max patches per side", str(c.vit_max_num_patch_per_side)),
    ]
    for r in rows:
        conf.add_row(*r)
    console.print(conf)

    params = Table(title=f"Parameters (from {info.source})")
    params.add_column("group")
    params.add_column("parameters", justify="right")
    params.add_column("exact", justify="right")
    for key, label in PARTS.items():
        params.add_row(label, _count(info.parts[key]), f"{info.parts[key]:,}")
    params.add_row(
        "[bold]Bagel total[/bold] (ema.safetensors)", _count(info.bagel_params), f"{info.bagel_params:,}"
    )
    params.add_row("FLUX VAE (ae.safetensors)", _count(info.vae_params), f"{info.vae_params:,}")
    total = info.bagel_params + info.vae_params
    params.add_row("[bold]all[/bold]", _count(total), f"{total:,}")
    console.print(params)

    files = Table(title="Files")
    files.add_column("file")
    files.add_column("size", justify="right")
    files.add_column("stored dtypes")
    for f in info.files:
        dtypes = ", ".join(f"{d} ({_count(n)})" for d, n in sorted(f.dtypes.items()))
        files.add_row(f.name, _size(f.size), dtypes)
    console.print(files)
    if cfg.plan:
        print_plan(memory_plan(c, cfg.memory), console)
    return 0


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f}"


_SHORT = {
    "autoencoder": "AE",
    "KV cache": "KV",
    "activations": "act",
    "gradients": "grad",
    "optimizer": "optim",
}


def print_plan(plan: MemoryPlan, console: Console) -> None:
    """The memory plan as three tables: tokens, inference settings, training settings (GiB per GPU; a card
    column says whether the setting fits a card of that many GB)."""
    o, f = plan.options, plan.frame
    act = "bf16" if o.act_bytes == 2 else "fp32"
    head = Table(
        title=f"Memory plan: {o.height}x{o.width} frames, {act} activations, {o.attention} attention"
    )
    head.add_column("quantity")
    head.add_column("value", justify="right")
    rows = [
        ("Bagel parameters / tensors", f"{plan.params.total:,} / {plan.params.tensors:,}"),
        ("quantised by int8 / nf4 (decoder linears)", f"{plan.params.quant_weights:,}"),
        ("tokens per frame: VAE / ViT / text", f"{f.vae:,} / {f.vit:,} / {f.text:,}"),
        ("KV cache per token / per frame", f"{plan.kv_per_token:,} B / {plan.kv_per_frame / 2**20:,.1f} MiB"),
        ("context frames / tokens (main context)", f"{o.context_frames} / {plan.context_tokens:,}"),
        ("training pack / sample tokens", f"{o.token_budget:,} / {o.sample_tokens or o.token_budget:,}"),
    ]
    for r in rows:
        head.add_row(*r)
    console.print(head)
    for kind, caption in (
        ("inference", f"AE autoencoder, {o.cfg_branches} CFG branches batched, TP tensor parallel"),
        ("training", f"per rank, FSDP over {o.gpus}, LoRA rank {o.lora_rank}, AC act. checkpointing"),
    ):
        settings = [s for s in plan.settings if s.kind == kind]
        parts = list(dict.fromkeys(p.name for s in settings for p in s.parts))
        table = Table(
            title=f"{kind.capitalize()} (GiB per GPU; {caption})",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            collapse_padding=True,
        )
        table.add_column("setting", no_wrap=True)
        for name in [*parts, "total"]:
            table.add_column(_SHORT.get(name, name), justify="right")
        for gb in GPU_SIZES_GB:
            table.add_column(f"{gb}G", justify="center")
        for s in settings:
            fits = ["[green]yes[/green]" if s.fits(gb) else "[red]no[/red]" for gb in GPU_SIZES_GB]
            table.add_row(s.name, *[_gib(s.part(n)) for n in parts], f"[bold]{_gib(s.total)}[/bold]", *fits)
        console.print(table)
