"""`rad convert`: between Hugging Face folders and rad_megatron checkpoints, in three directions.

  import   --hf PATH --out C [--tp N] [--pp M]   HF Llama / MIL / GraniteMoeHybrid folder or GGUF -> checkpoint
  export   --ckpt C --to hf|mil|hf-hybrid --out DIR   checkpoint (any saved TP/PP) -> standard Llama, MIL hybrid or
                                                transformers-native GraniteMoeHybrid folder (checkpoint/hf_hybrid.py)
  reshard  --ckpt C --out C2 [--tp N] [--pp M]  re-save a checkpoint at another TP/PP (metadata and tokenizer kept)

TP defaults to the launched world size / PP. Every refusal happens before anything is written; outputs are written
atomically and a non-empty --out is only replaced with --force. tools/convert_hf_to_mcore.py,
tools/convert_mcore_to_hf.py and tools/reshard.py are this command pinned to one direction.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rad_megatron.commands.common import resolve_on_main_first
from rad_megatron.errors import RadError

MODES = ("import", "export", "reshard")
USAGE = {"import": "--hf PATH --out CKPT [--tp N] [--pp M]",
         "export": "--ckpt CKPT --to hf|mil|hf-hybrid --out DIR [--tp N]",
         "reshard": "--ckpt CKPT --out CKPT2 [--tp N] [--pp M]"}
# Keys of rad_meta.json that describe the saved copy itself; a reshard writes new ones.
OWN_META = ("format_version", "model", "saved_tp", "saved_pp")


def add_parser(sub):
    p = sub.add_parser("convert", help="HF/MIL/GGUF -> checkpoint, checkpoint -> HF/MIL folder, or re-save at "
                                       "another TP/PP")
    p.add_argument("--hf", default=None, help="import: HF Llama / MIL / GraniteMoeHybrid folder or .gguf (default: "
                                              "SmolLM2-135M-Instruct)")
    p.add_argument("--ckpt", default=None, help="export (with --to) or reshard: a rad_megatron checkpoint")
    p.add_argument("--to", default=None, choices=["hf", "mil", "hf-hybrid"],
                   help="export --ckpt as a standard Llama folder (hf), a MambaInLlama hybrid folder (mil) or "
                        "transformers' native GraniteMoeHybrid (hf-hybrid: no trust_remote_code, served by vLLM)")
    p.add_argument("--out", required=True, help="output folder (must be new or empty)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.add_argument("--tp", type=int, default=None,
                   help="TP size to save at (import, reshard) or to load and gather at (export); default: the "
                        "launched world size / --pp")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size to save at (import, reshard); "
                                                     "launch tp x pp ranks")
    p.add_argument("--mode", default=None, choices=MODES, help=argparse.SUPPRESS)  # pinned by the tools/ scripts
    p.set_defaults(run="rad_megatron.commands.convert:run")


def direction(args) -> str:
    """import / export / reshard from the flags given; refuses contradictory flags."""
    if args.hf and args.ckpt:
        raise RadError("give either --hf (import) or --ckpt (export with --to, or reshard), not both")
    if args.to and not args.ckpt:
        raise RadError("--to exports a rad_megatron checkpoint: give it with --ckpt")
    mode = "export" if args.to else "reshard" if args.ckpt else "import"
    if args.mode and args.mode != mode:
        raise RadError(f"this converts in the '{args.mode}' direction: {USAGE[args.mode]}")
    if mode == "export" and args.pp != 1:
        raise RadError("--pp applies to import and reshard; export gathers the whole model, drop --pp")
    if args.pp < 1 or (args.tp is not None and args.tp < 1):
        raise RadError("--tp and --pp must be >= 1")
    return mode


def _start(tp: int | None, pp: int):
    from rad_megatron.distributed import ParallelConfig, init_distributed
    from rad_megatron.distributed.init import launched_world_size

    return init_distributed(ParallelConfig(tp=tp or max(1, launched_world_size() // pp), pp=pp))


def run(args) -> int:
    from rad_megatron.checkpoint.export import check_export
    from rad_megatron.checkpoint.store import check_complete, check_writable, model_config

    mode = direction(args)
    out = Path(args.out)
    check_writable(out, args.force)  # every check before any work: nothing is written on bad input
    if args.ckpt:
        cfg = model_config(args.ckpt)
        check_complete(args.ckpt)
        if mode == "export":
            check_export(cfg, args.to)
    ctx = _start(args.tp, args.pp)
    return {"import": _import, "export": _export, "reshard": _reshard}[mode](args, ctx, out)


def _import(args, ctx, out) -> int:
    from rad_megatron.checkpoint.hf_import import model_from_hf
    from rad_megatron.checkpoint.hf_source import load_hf_tokenizer
    from rad_megatron.checkpoint.store import save_model

    source = resolve_on_main_first(args.hf)
    tokenizer = load_hf_tokenizer(source.folder)  # None for a weights-only folder: the checkpoint has no tokenizer/
    model, cfg = model_from_hf(source, tp=ctx.tp, tp_rank=ctx.tp_rank, pp=ctx.pp)
    save_model(model, out, force=args.force, tokenizer=tokenizer,
               metadata={"source": str(source.folder), "mamba_init": {str(b): "imported" for b in cfg.mamba_layers}})
    if ctx.is_main:
        note = "" if tokenizer is not None else (f"; {source.folder} has no tokenizer files, so neither has the "
                                                 f"checkpoint (commands that tokenize text will ask for one)")
        print(f"wrote {out} ({cfg.num_layers} layers, saved at TP={ctx.tp} PP={ctx.pp}){note}")
    return 0


def _tokenizer(ckpt):
    from rad_megatron.checkpoint.store import load_tokenizer

    return load_tokenizer(ckpt) if (Path(ckpt) / "tokenizer").is_dir() else None


def _export(args, ctx, out) -> int:
    import torch

    from rad_megatron.checkpoint.export import gather_full_state_dict, write_hf_folder
    from rad_megatron.checkpoint.store import load_model

    model = load_model(args.ckpt, tp=ctx.tp)
    full = gather_full_state_dict(model)
    if ctx.is_main:
        summary = write_hf_folder(full, model.rad_config, out, args.to, tokenizer=_tokenizer(args.ckpt),
                                  force=args.force)
        print(f"wrote {out} ({args.to}: {summary['tensors']} tensors in {len(summary['files'])} file(s), "
              f"{summary['dtype']}, gathered from TP={ctx.tp}, Mamba layers {summary['mamba_layers']})")
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return 0


def _reshard(args, ctx, out) -> int:
    from rad_megatron.checkpoint.store import load_model, read_meta, save_model

    meta = read_meta(args.ckpt)
    model = load_model(args.ckpt, tp=ctx.tp, pp=ctx.pp)
    kept = {k: v for k, v in meta.items() if k not in OWN_META}
    kept["resharded_from"] = {"path": str(args.ckpt), "tp": meta.get("saved_tp"), "pp": meta.get("saved_pp", 1)}
    save_model(model, out, force=args.force, tokenizer=_tokenizer(args.ckpt), metadata=kept)
    if ctx.is_main:
        print(f"wrote {out} (resharded from TP={meta.get('saved_tp')} PP={meta.get('saved_pp', 1)} "
              f"to TP={ctx.tp} PP={ctx.pp})")
    return 0
