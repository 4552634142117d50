"""`rad convert`: HF Llama / MIL hybrid folder or GGUF -> rad_megatron checkpoint (dist_checkpointing)."""

from __future__ import annotations

from pathlib import Path

from rad_megatron.commands.common import resolve_on_main_first, start


def run(args) -> int:
    from rad_megatron.checkpoint.hf_import import model_from_hf
    from rad_megatron.checkpoint.store import check_writable, save_model

    out = Path(args.out)
    check_writable(out, args.force)
    ctx = start(args.tp)
    source = resolve_on_main_first(args.hf)
    model, cfg = model_from_hf(source, tp=ctx.tp, tp_rank=ctx.tp_rank)
    from transformers import AutoTokenizer

    save_model(model, out, force=args.force, tokenizer=AutoTokenizer.from_pretrained(source.folder),
               metadata={"source": str(source.folder), "mamba_init": {str(b): "imported" for b in cfg.mamba_layers}})
    if ctx.is_main:
        print(f"wrote {out} ({cfg.num_layers} layers, saved at TP={ctx.tp})")
    return 0
