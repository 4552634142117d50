"""`rad plan CONFIG --nodes N --gpus-per-node G --gpu-mem-gib M`: per-rank memory, FLOPs and step time of a run
config on a GPU allocation; exit 2 when a layout cannot exist or a rank does not fit."""

from __future__ import annotations

import json


class _Intermixed:
    """Lets dotted overrides follow the options too (`rad plan C --nodes 2 a.b=c`); plain argparse stops collecting
    positionals at the first option."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inside:  # parse_known_intermixed_args calls back into parse_known_args
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def add_parser(sub):
    p = sub.add_parser("plan", help="per-rank memory, FLOPs per step and step time of a run config on N GPUs")
    p.__class__ = type("IntermixedParser", (_Intermixed, type(p)), {})  # keeps the CLI's one-line usage errors
    p.add_argument("config", help="YAML run config (configs/experiments/...)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. distill.train.micro_batch_size=1")
    p.add_argument("--nodes", type=int, default=1, help="nodes in the allocation")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node")
    p.add_argument("--gpu-mem-gib", type=float, default=80.0, help="memory of one GPU (GiB)")
    p.add_argument("--reserve-gib", type=float, default=2.0,
                   help="per GPU memory not modelled: CUDA context, NCCL buffers, allocator slack (GiB)")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation assumed for the step time")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="peak dense TFLOP/s per GPU (H100 BF16: 989)")
    p.add_argument("--kernels", choices=("gpu", "cpu"), default="gpu",
                   help="gpu: Transformer Engine, flash attention, mamba_ssm, fused Adam; cpu: rad_megatron's torch "
                        "paths and torch AdamW (both with Megatron DDP's fp32 gradient buffer)")
    p.add_argument("--json", action="store_true", help="also print the plan as one JSON line")
    p.set_defaults(run="rad_megatron.commands.plan:run")


def run(args) -> int:
    from dataclasses import fields

    from rad_megatron.plan import KERNELS, build_job, check_fits, format_plan, make_plan, plan_json
    from rad_megatron.plan.inputs import PlanInputs
    from rad_megatron.settings import load_run_config
    from rad_megatron.validation import from_dict

    hw = from_dict(PlanInputs, {f.name: getattr(args, f.name) for f in fields(PlanInputs)}, "rad plan", flags=True)
    cfg = load_run_config(args.config, args.overrides)
    job = build_job(cfg, hw.nodes, hw.gpus_per_node)
    plan = make_plan(job, KERNELS[hw.kernels], hw.gpu_mem_gib, hw.reserve_gib, hw.mfu, hw.peak_tflops)
    print(format_plan(plan, title=str(args.config)), flush=True)
    if args.json:
        print(json.dumps(plan_json(plan)), flush=True)
    check_fits(plan)
    return 0
