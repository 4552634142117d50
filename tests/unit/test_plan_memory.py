"""`rad plan`'s memory model against the measured peak of a real student step and teacher forward on CPU.

Method. A tiny hybrid (attention, Mamba-2, attention, attention; the Mamba block is the "new" layer) is built with
`model.build_model` in fp32 and trained the way `distill.trainer.StudentTrainer` trains: `distill.optim.StageOptimizer`
(Megatron DDP with its fp32 gradient buffer + Megatron's Adam), forward through the DDP wrapper, `distill_loss` against
top-k teacher targets taken from stream-sized receive buffers (`lookahead` posted + the one consumed, int64 indices),
backward, optimizer step. torch has no CPU allocator statistics, so the peak is measured with the profiler's memory
events (every CPU tensor allocation and free while profiling): their running sum over one steady-state step (Adam
state already made by a first step) plus the bytes the process already held at its start (parameters, buffers,
gradient buffer, Adam states, receive buffers, batch). The estimate is `plan.memory.student_memory` with the CPU
kernels for the same config, resolved from YAML like `rad plan` does. Same dtype (fp32), no recompute, TP 1.
The issue asks for 25%; the model is within 1% today, so the test holds it to 10% (a change in what the model or the
loss keeps alive should show up here).
"""

import pytest
import torch
import yaml

from rad_megatron.memory import peak_bytes_during, storage_bytes
from rad_megatron.plan import CPU, build_job
from rad_megatron.plan.memory import student_memory, teacher_memory
from rad_megatron.settings import load_run_config

V, BATCH, SEQ, LOOKAHEAD = 512, 2, 128, 2
SHAPE = dict(vocab_size=V, hidden_size=64, intermediate_size=160, num_layers=4, num_attention_heads=4, num_kv_heads=2,
             mamba={"chunk_size": 32})


def _measured_peak(group: str, top_k: int) -> float:
    from rad_megatron.config import ModelConfig
    from rad_megatron.distill.losses import LossWeights, distill_loss
    from rad_megatron.distill.optim import OptimConfig, StageOptimizer
    from rad_megatron.distill.targeting import apply_targeting
    from rad_megatron.model import build_model
    from rad_megatron.model.forward import position_ids_for

    torch.manual_seed(0)
    model = build_model(ModelConfig(**SHAPE, layout=["attention", "mamba", "attention", "attention"]))
    apply_targeting(model, group, [1])
    opt = StageOptimizer(model, OptimConfig(), 1e-3, 10, 1)
    ids, labels, mask = torch.randint(0, V, (BATCH, SEQ)), torch.randint(0, V, (BATCH, SEQ)), torch.ones(BATCH, SEQ)

    def message():  # what StudentReceiver posts: float64 header, fp32 values, int32 indices (none for top_k 0)
        width = top_k or V
        return [torch.zeros(5, dtype=torch.float64), torch.randn(BATCH, SEQ, width).log_softmax(-1)] + (
            [torch.randint(0, V, (BATCH, SEQ, top_k), dtype=torch.int32)] if top_k else [])

    posted = [message() for _ in range(LOOKAHEAD)]

    def step():
        opt.zero_grad()
        logits = opt.ddp(input_ids=ids, position_ids=position_ids_for(ids), attention_mask=None)
        msg = posted.pop(0)
        posted.append(message())
        vals = msg[1]  # as StudentTrainer._loss: int64 indices, or the whole vocabulary as an index view
        idx = msg[2].long() if top_k else torch.arange(V).expand(vals.shape)
        loss, _ = distill_loss(logits, vals, idx, labels, mask, LossWeights(), None, 0, V)
        del logits
        loss.backward()
        opt.step()

    step()  # Adam states exist from here on
    held = [*model.parameters(), *model.buffers(), *(t for m in posted for t in m), ids, labels, mask]
    held += [p.main_grad for p in model.parameters() if getattr(p, "main_grad", None) is not None]
    held += [t for o in opt._inner() for s in o.state.values() for t in s.values() if torch.is_tensor(t)]
    return storage_bytes(held) + peak_bytes_during(step)


def _job(tmp_path, group: str, top_k: int):
    base = dict(SHAPE, layout=["attention"] * 4)  # block 1 becomes Mamba through swap.layers
    cfg = {"model": {"config": base}, "swap": {"layers": [1]}, "data": {"seq_len": SEQ},
           "distill": {"roles": {"teacher_ranks": 1, "teacher_tp": 1, "student_tp": 1},
                       "train": {"stages": [{"trainable": group, "steps": 10}], "micro_batch_size": BATCH,
                                 "eval_batch_size": 1, "stream": {"top_k": top_k, "lookahead": LOOKAHEAD}}}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    return build_job(load_run_config(tmp_path / "tiny.yaml"), nodes=1, gpus_per_node=2)


def _planned_peak(tmp_path, group: str, top_k: int) -> float:
    memory = student_memory(_job(tmp_path, group, top_k), 0, CPU)
    assert memory.phase == "train"
    return memory.peak


@pytest.mark.parametrize("group, top_k", [("all", 8), ("new_mamba", 8), ("new_mamba", 0)])
def test_planned_peak_matches_measured_cpu_step(dist, tmp_path, group, top_k):
    """Every parameter trains / only the new Mamba layer does (no graph before it); top-8 stream / full vocabulary."""
    measured, planned = _measured_peak(group, top_k), _planned_peak(tmp_path, group, top_k)
    print(f"{group}, top_k {top_k}: measured peak {measured / 2**20:.2f} MiB, planned {planned / 2**20:.2f} MiB, "
          f"ratio {planned / measured:.3f}")
    assert abs(planned / measured - 1) < 0.10


def test_planned_teacher_peak_matches_measured(dist, tmp_path):
    """The teacher side of the same job (self-distillation: the all-attention base model), no autograd: `lookahead`
    earlier `teacher_targets` results held as the sender's sends in flight, then one more call, profiled as above."""
    from rad_megatron.config import ModelConfig
    from rad_megatron.distill.stream import StreamConfig, teacher_targets
    from rad_megatron.model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(**SHAPE, layout=["attention"] * 4)).eval()
    ids, labels, mask = torch.randint(0, V, (BATCH, SEQ)), torch.randint(0, V, (BATCH, SEQ)), torch.ones(BATCH, SEQ)
    stream = StreamConfig(top_k=8, lookahead=LOOKAHEAD)
    in_flight = [teacher_targets(model, ids, labels, mask, stream)[:2] for _ in range(LOOKAHEAD)]
    held = [*model.parameters(), *model.buffers(), ids, labels, mask, *(t for m in in_flight for t in m)]
    measured = storage_bytes(held) + peak_bytes_during(lambda: teacher_targets(model, ids, labels, mask, stream))
    planned = teacher_memory(_job(tmp_path, "new_mamba", 8), 0, CPU).peak
    print(f"teacher: measured peak {measured / 2**20:.2f} MiB, planned {planned / 2**20:.2f} MiB, "
          f"ratio {planned / measured:.3f}")
    assert abs(planned / measured - 1) < 0.10
