"""Pieces shared by commands: distributed start-up sized to the launch, rank-0 printing, the --ckpt / --hf model."""

from __future__ import annotations

import json

from rad_megatron.distributed.init import init_launched as start  # noqa: F401 - the commands' name for it
from rad_megatron.sources import resolve_on_main_first  # noqa: F401 - re-exported for the commands


def print_json_main(ctx, obj) -> None:
    if ctx.is_main:
        print(json.dumps(obj), flush=True)


def load_model_and_tokenizer(args, ctx):
    """The model of --ckpt or --hf on the rank's device, and its tokenizer."""
    from rad_megatron.sources import load_model_and_tokenizer as load

    return load(getattr(args, "ckpt", None), getattr(args, "hf", None), ctx)
