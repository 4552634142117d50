"""torchrun worker: run_probe at TP = argv[3] (the other ranks data-parallel) on the model/prompts in argv[2];
rank 0 writes the report to argv[1]."""

import json
import sys

import torch

from rad_megatron.checkpoint.shard import load_full_state_dict
from rad_megatron.config import ModelConfig
from rad_megatron.distributed import ParallelConfig, destroy_distributed, init_distributed
from rad_megatron.model import build_model
from rad_megatron.probe.run import run_probe
from rad_megatron.probe.score import ProbeSettings
from rad_megatron.probe.search import Replicas

if __name__ == "__main__":
    ctx = init_distributed(ParallelConfig(tp=int(sys.argv[3])))
    case = torch.load(sys.argv[2], weights_only=False)
    model = build_model(ModelConfig.from_dict(case["config"]), tp=ctx.tp).eval()
    load_full_state_dict(model, case["state"], ctx.tp, ctx.tp_rank)
    report = run_probe(model, case["prompts"], k=case["k"], trials=case["trials"],
                       settings=ProbeSettings(**case["settings"]),
                       replicas=Replicas(dp=ctx.dp, dp_rank=ctx.dp_rank, is_main=ctx.is_main), seed=0)
    if ctx.is_main:
        with open(sys.argv[1], "w") as f:
            json.dump(report, f)
    destroy_distributed()
