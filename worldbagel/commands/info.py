"""`worldbagel info MODEL_DIR`: the model's config, parameters per expert, stored dtypes and files."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from worldbagel.config import InfoConfig
from worldbagel.model.folder_info import PARTS, inspect_folder
from worldbagel.model.hub import resolve_model_folder


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
    return 0
