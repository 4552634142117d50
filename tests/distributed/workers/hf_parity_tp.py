"""torchrun worker: every folder in argv[2:] imported at TP=world size; rank 0 compares with transformers.

Writes {folder_name: max_abs_logit_diff} as JSON to argv[1].
"""

import json
import sys
from pathlib import Path

import torch

from rad_megatron.checkpoint.hf_import import model_from_hf
from rad_megatron.checkpoint.hf_source import HFSource
from rad_megatron.distributed import ParallelConfig, destroy_distributed, init_distributed
from rad_megatron.distributed.init import launched_world_size
from rad_megatron.model import forward_logits
from tests.helpers import hf_logits

if __name__ == "__main__":
    out, folders = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
    ctx = init_distributed(ParallelConfig(tp=launched_world_size()))
    ids = torch.randint(0, 128, (2, 48), generator=torch.Generator().manual_seed(1))
    result = {}
    for folder in folders:
        model, _ = model_from_hf(HFSource(folder), tp=ctx.tp, tp_rank=ctx.tp_rank)
        with torch.no_grad():
            ours = forward_logits(model, ids)
        if ctx.is_main:
            result[folder.name] = (ours - hf_logits(folder, ids)).abs().max().item()
    if ctx.is_main:
        out.write_text(json.dumps(result))
    destroy_distributed()
