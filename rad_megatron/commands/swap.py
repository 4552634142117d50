"""`rad swap`: replace attention layers of a checkpoint (or an HF Llama) with Mamba-2 layers, written atomically."""

from __future__ import annotations

from pathlib import Path

from rad_megatron.commands.common import resolve_on_main_first, start
from rad_megatron.errors import RadError


def parse_layers(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise RadError(f"--layers '{text}' must be comma-separated layer indices, e.g. 3,7,12") from None


def load_source(args, ctx):
    """The model to start from: a rad checkpoint (--ckpt) or an HF Llama / MIL folder or GGUF (--hf)."""
    if bool(args.ckpt) == bool(args.hf):
        raise RadError("give exactly one of --ckpt (a rad_megatron checkpoint) or --hf (an HF folder or .gguf)")
    if args.ckpt:
        from rad_megatron.checkpoint.store import load_model, read_meta

        model = load_model(args.ckpt, tp=ctx.tp)
        model.rad_swaps = read_meta(args.ckpt).get("swaps", [])
        return model, {"source": str(args.ckpt)}
    from rad_megatron.checkpoint.hf_import import model_from_hf

    source = resolve_on_main_first(args.hf)
    return model_from_hf(source, tp=ctx.tp, tp_rank=ctx.tp_rank)[0], {"source": str(source.folder)}


def run(args) -> int:
    from rad_megatron.checkpoint.store import check_writable, save_model
    from rad_megatron.swap import swap_attention_to_mamba

    layers = parse_layers(args.layers)
    out = Path(args.out)
    check_writable(out, args.force)  # before any work: nothing is written on bad input
    ctx = start(args.tp, seed=args.seed)
    model, meta = load_source(args, ctx)
    swapped = swap_attention_to_mamba(model, layers, init=args.init, seed=args.seed)
    mamba_init = dict(getattr(model, "rad_meta", {}).get("mamba_init", {}))
    mamba_init.update({str(b): args.init for b in layers})
    save_model(swapped, out, force=args.force,
               metadata={**meta, "swaps": swapped.rad_swaps, "mamba_init": mamba_init})
    if ctx.is_main:
        print(f"wrote {out}: layout {''.join('M' if k == 'mamba' else '*' for k in swapped.rad_config.layout)} "
              f"(init {args.init} for layers {layers})")
    return 0
