"""One 3-rank world, many `rad distill` runs (the command's own function, in-process) of one tiny student whose
Mamba layers (random init) sit one on each pipeline stage: layouts, precision, recompute, and resumes at another
layout. argv: out_dir hf_dir data.jsonl [run names; default: all but sp_tp2]. Writes out_dir/<run>/ (the run folder)
and out_dir/<run>/probe_rank<r>.json (what this rank saw: the first targets it received, its optimizer's dtypes,
the teacher's parameters).
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist

STEPS = 4
CUT = 2  # resumed runs continue from the step-2 checkpoint of another run
RUNS = [  # name, overrides, run resumed from (its step-CUT checkpoint)
    ("ref", ["distill.roles.teacher_ranks=2"], None),  # student TP1 PP1 DP1; teacher DP 2 (replica 0 serves)
    ("pp2", ["system.student_pp=2"], None),  # student PP 2: Mamba layer 1 on stage 0, layer 2 on stage 1
    ("dp2", ["distill.train.grad_accum=1", "system.recompute=full"], None),  # DP 2, same global batch
    ("teacher_pp2", ["distill.roles.teacher_ranks=2", "system.teacher_pp=2"], None),
    ("bf16", ["distill.roles.teacher_ranks=2", "system.precision=bf16"], None),
    ("same_layout", ["distill.roles.teacher_ranks=2"], "ref"),
    ("tp1_to_tp2", ["distill.roles.student_tp=2"], "ref"),
    ("dp2_to_dp1", ["distill.roles.teacher_ranks=2"], "dp2"),
    ("dp1_to_dp2", ["distill.train.grad_accum=1"], "ref"),  # DP 2 (grad_accum halved: the same global batch)
    ("pp2_to_pp1", ["distill.roles.teacher_ranks=2"], "pp2"),
    # both Mamba layers on stage 1: stage 0 (global rank 0, which writes the checkpoint's unsharded state) trains
    # nothing and holds Megatron's stub optimizer
    ("pp2_stub", ["system.student_pp=2", "model.ckpt={root}/student_late"], None),
    ("pp2_stub_to_pp1", ["distill.roles.teacher_ranks=2", "model.ckpt={root}/student_late"], "pp2_stub"),
    # `rad pipeline` at PP 2 with full recompute: each stage swaps the block it holds (rad_zero: the swapped
    # student equals the original with those attention layers skipped, whatever the stage split)
    ("pipeline_pp2", ["system.student_pp=2", "system.recompute=full", "model.ckpt=null", "model.hf={hf}",
                      "swap.layers=[1,2]", "swap.init=rad_zero"], None),
    # Megatron's sequence parallelism at student TP 2 (teacher TP 1): run only when named (needs #16a's local spec)
    ("sp_tp2", ["distill.roles.student_tp=2", "system.sequence_parallel=true"], None),
]
DEFAULT = [name for name, _, _ in RUNS if name != "sp_tp2"]
PROBE: dict = {}


def instrument():
    """Record what the trainer really runs with, without changing it."""
    from rad_megatron.distill import optim, stream, teacher

    receive, step, serve = stream.StudentReceiver.receive, optim.StageOptimizer.step, teacher.run_teacher

    def recording_receive(self, s, micro, ids):
        out = receive(self, s, micro, ids)
        if len(PROBE.setdefault("received", [])) < 4:
            PROBE["received"].append({"step": s, "micro": micro, "values": out[0].tolist(),
                                      "indices": None if out[1] is None else out[1].tolist()})
        return out

    def recording_step(self):
        module = self.ddp.module
        PROBE["main_params"] = sorted({str(p.dtype) for p in self.main_params()})
        PROBE["trained_params"] = sorted({str(p.dtype) for p in module.parameters() if p.requires_grad})
        PROBE["main_grads"] = sorted({str(p.main_grad.dtype) for p in module.parameters() if hasattr(p, "main_grad")})
        PROBE["recompute"] = module.config.recompute_granularity
        return step(self)

    def recording_serve(role, model, *args, **kwargs):
        out = serve(role, model, *args, **kwargs)
        PROBE["teacher_matrices"] = sorted({str(p.dtype) for p in model.parameters() if p.dim() == 2})
        PROBE["teacher_requires_grad"] = any(p.requires_grad for p in model.parameters())
        PROBE["teacher_grads"] = any(p.grad is not None for p in model.parameters())
        return out

    stream.StudentReceiver.receive, optim.StageOptimizer.step, teacher.run_teacher = (
        recording_receive, recording_step, recording_serve)


def make_students(hf: Path, root: Path):
    """The swapped students (Mamba at blocks 1, 2 and at 2, 3), saved once as rad checkpoints by all ranks (the
    save is collective)."""
    from rad_megatron.checkpoint.hf_import import model_from_hf
    from rad_megatron.checkpoint.hf_source import HFSource
    from rad_megatron.checkpoint.store import save_model
    from rad_megatron.swap import swap_attention_to_mamba

    from transformers import AutoTokenizer

    model, _ = model_from_hf(HFSource(hf))
    for name, blocks in (("student", [1, 2]), ("student_late", [2, 3])):
        student = swap_attention_to_mamba(model, blocks, init="random", seed=7)
        save_model(student, root / name, metadata={"mamba_init": {str(b): "random" for b in blocks}}, force=True,
                   tokenizer=AutoTokenizer.from_pretrained(hf))


def config(root: Path, hf: Path, data: Path) -> Path:
    import yaml

    cfg = {"model": {"ckpt": str(root / "student")}, "data": {"path": str(data), "seq_len": 48, "held_out": 4},
           "distill": {"teacher": {"hf": str(hf)}, "roles": {"teacher_ranks": 1},
                       "train": {"stages": [{"trainable": "new_mamba", "steps": STEPS, "lr": 0.01}],
                                 "micro_batch_size": 2, "grad_accum": 2, "eval_every": CUT, "eval_batch_size": 2,
                                 "save_every": CUT, "stream": {"top_k": 16, "lookahead": 2}}}}
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return root / "cfg.yaml"


def cut(src: Path, dst: Path):
    """A copy of run `src` as if it had stopped after step CUT (its later checkpoints and metrics are dropped)."""
    shutil.copytree(src, dst)
    for ckpt in (dst / "checkpoints").glob("step_*"):
        if int(ckpt.name.split("_")[1]) > CUT:
            shutil.rmtree(ckpt)
    (dst / "checkpoints" / "latest.txt").write_text(f"step_{CUT:06d}")


def main(root, hf, data, *names):
    from megatron.core import parallel_state

    from rad_megatron.commands.distill import distill, pipeline

    from rad_megatron.distributed import ParallelConfig, init_distributed

    root, hf, data = Path(root), Path(hf), Path(data)
    init_distributed(ParallelConfig(tp=1, seed=5))
    if not (root / "student_late").is_dir():
        make_students(hf, root)
    cfg = config(root, hf, data)
    instrument()
    for name, overrides, resumed_from in (r for r in RUNS if r[0] in (names or DEFAULT)):
        out = root / name
        if resumed_from and dist.get_rank() == 0:
            cut(root / resumed_from, out)
        dist.barrier()
        PROBE.clear()
        # every run starts from no Megatron parallel state, as a new `rad` process would (on a teacher rank Megatron's
        # "is initialised" check is False while its groups exist, so a later run would create groups on one side only)
        parallel_state.destroy_model_parallel()
        overrides = [o.format(root=root, hf=hf) for o in overrides]
        command = pipeline if name.startswith("pipeline") else distill
        command(argparse.Namespace(config=str(cfg), overrides=overrides, resume=resumed_from is not None,
                                   stop_after=None, out=str(out), force=False))
        (out / f"probe_rank{dist.get_rank()}.json").write_text(json.dumps(PROBE))
        dist.barrier()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(*sys.argv[1:])
