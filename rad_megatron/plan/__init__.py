"""`rad plan`: per-rank memory, FLOPs and step time of a distillation job on a GPU allocation, without a GPU.

job.py resolves a run config against the allocation (refusing impossible layouts), params.py counts parameters,
activations.py and memory.py size each rank, flops.py the step, report.py prints the table.
"""

from rad_megatron.plan.activations import CPU, GPU, KERNELS, Kernels
from rad_megatron.plan.job import Job, build_job
from rad_megatron.plan.report import Plan, check_fits, format_plan, make_plan, plan_json

__all__ = ["CPU", "GPU", "KERNELS", "Kernels", "Job", "build_job", "Plan", "check_fits", "format_plan", "make_plan",
           "plan_json"]
