"""`rad swap`: replace attention layers of a checkpoint (or an HF Llama) with Mamba-2 layers, written atomically."""

from __future__ import annotations

from pathlib import Path

from rad_megatron.commands.common import load_model_and_tokenizer, start
from rad_megatron.errors import RadError


def parse_layers(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise RadError(f"--layers '{text}' must be comma-separated layer indices, e.g. 3,7,12") from None


def _strategy_evidence(args):
    """The probe evidence --strategy needs (None for uniform / random); checked before any model is loaded."""
    from rad_megatron.files import read_json
    from rad_megatron.study.strategies import NEEDS_PROBE, ProbeEvidence

    if bool(getattr(args, "layers", None)) == bool(getattr(args, "strategy", None)):
        raise RadError("give exactly one of --layers (explicit indices) or --strategy (with --k)")
    if args.strategy is None:
        return None
    if args.k is None:
        raise RadError(f"--strategy {args.strategy} needs --k (how many attention layers to replace)")
    if args.strategy not in NEEDS_PROBE:
        return None
    if not args.probe or not Path(args.probe).is_file():
        raise RadError(f"--strategy {args.strategy} needs --probe PROBE.json (the {NEEDS_PROBE[args.strategy]}); "
                       f"got {args.probe!r}")
    report = read_json(args.probe, "--probe", "give the probe.json `rad probe` wrote")
    if not isinstance(report, dict) or not report.get("per_layer"):
        raise RadError(f"--probe '{args.probe}' is not a `rad probe` report (no per-layer scores); give the probe.json "
                       f"`rad probe` wrote")
    return ProbeEvidence.from_reports([report])


def run(args) -> int:
    from rad_megatron.checkpoint.store import check_writable, save_model
    from rad_megatron.study.strategies import select_layers
    from rad_megatron.swap import swap_attention_to_mamba

    evidence = _strategy_evidence(args)
    layers = parse_layers(args.layers) if args.layers else None
    out = Path(args.out)
    check_writable(out, args.force)  # before any work: nothing is written on bad input
    ctx = start(args.tp, seed=args.seed)
    if bool(args.ckpt) == bool(args.hf):
        raise RadError("give exactly one of --ckpt (a rad_megatron checkpoint) or --hf (an HF folder or .gguf)")
    model, tokenizer = load_model_and_tokenizer(args, ctx)
    if layers is None:
        layers = select_layers(args.strategy, args.k, model.rad_config.attention_layers, evidence, seed=args.seed)
    model.rad_swaps = model.rad_meta.get("swaps", [])
    meta = {"source": str(args.ckpt or model.rad_meta["source"])}
    swapped = swap_attention_to_mamba(model, layers, init=args.init, seed=args.seed)
    mamba_init = dict(getattr(model, "rad_meta", {}).get("mamba_init", {}))
    mamba_init.update({str(b): args.init for b in layers})
    save_model(swapped, out, force=args.force, tokenizer=tokenizer,
               metadata={**meta, "swaps": swapped.rad_swaps, "mamba_init": mamba_init})
    if ctx.is_main:
        picked = f" picked by strategy {args.strategy}" if args.strategy else ""
        print(f"wrote {out}: layout {''.join('M' if k == 'mamba' else '*' for k in swapped.rad_config.layout)} "
              f"(init {args.init} for layers {layers}{picked})")
    return 0
