"""The teacher ranks of a distillation: walk the students' schedule and serve each micro-batch's targets.

Without pipeline parallelism each teacher rank runs the whole model (`stream.teacher_targets`). With
system.teacher_pp > 1 a step's micro-batches run through the stages with Megatron's forward-only 1F1B schedule over
the teacher's own pipeline group (HyperCommGrid, distill.roles), and the last stage turns the logits into targets and
sends them (TP rank 0). Teachers also join the students' collective checkpoint saves.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from rad_megatron.distill.schedule import eval_rows, events, num_eval_batches, replica_slice, take
from rad_megatron.distill.peers import meet_before_save
from rad_megatron.distill.step import stage_forward
from rad_megatron.distill.stream import EVAL_MICRO, TeacherSender, targets_from_logits, teacher_targets
from rad_megatron.model.forward import gathered_vocab


def save_steps(cfg, stop_after: int | None) -> set[int]:
    steps = {cfg.total_steps} | ({stop_after} if stop_after else set())
    if cfg.save_every:
        steps |= set(range(cfg.save_every, cfg.total_steps + 1, cfg.save_every))
    return steps


def sampler_position(sampler, consumed: int):
    """(position, epoch) after `consumed` indices, without drawing them."""
    return consumed % sampler.size, consumed // sampler.size


def _groups(evs):
    """Consecutive events of one kind and step that run as one schedule call: a training step's micro-batches, or
    a single held-out batch (their widths differ)."""
    group = []
    for ev in evs:
        if group and (ev.kind != group[0].kind or ev.step != group[0].step or ev.kind == "eval"):
            yield group
            group = []
        group.append(ev)
    if group:
        yield group


class TeacherServer:
    """One teacher rank: forward passes (whole model or one pipeline stage) and the sends of its last stage."""

    def __init__(self, role, model, cfg):
        self.role, self.model, self.cfg = role, model, cfg
        self.sender = TeacherSender(cfg.stream)

    def serve(self, step: int, items, count: int, shape: tuple[int, int]):
        """Targets for the `count` items = (replica, stream micro tag, batch of `shape`), sent in that order."""
        if count == 0:
            return
        if self.role.pp == 1:
            for replica, micro, b in items:
                self._send(replica, step, micro, b, teacher_targets(self.model, b["input_ids"], b["labels"],
                                                                    b["loss_mask"], self.cfg.stream,
                                                                    seq_idx=b.get("seq_idx")))
            return
        from megatron.core.pipeline_parallel import get_forward_backward_func
        from megatron.core.pipeline_parallel.p2p_communication import P2PCommunicator

        from rad_megatron.distributed.cpu import megatron_cuda_on_cpu

        pgc = self.role.pg_collection
        with megatron_cuda_on_cpu():  # the schedules count tokens in a device="cuda" tensor (a no-op on a GPU)
            get_forward_backward_func(pp_size=self.role.pp)(
                forward_step_func=partial(self._forward, step), data_iterator=iter(items), model=[self.model],
                num_microbatches=count, seq_length=shape[1], micro_batch_size=shape[0], forward_only=True,
                p2p_communicator=P2PCommunicator(pp_group=pgc.pp, config=self.model.config), pg_collection=pgc)

    def _send(self, replica, step, micro, b, targets):
        vals, idx, nll, tok = targets
        if self.role.tp_rank == 0:
            self.sender.send(self.role.student_replica_ranks(replica), step, micro, b["input_ids"], vals, idx, nll,
                             tok)

    def _forward(self, step, data_iterator, model):
        replica, micro, b = next(data_iterator)
        out = stage_forward(model, b)
        if not self.role.is_last_stage:
            return out, None

        def send(logits):
            full = gathered_vocab(self.model, logits)
            self._send(replica, step, micro, b, targets_from_logits(full, b["labels"], b["loss_mask"],
                                                                    self.cfg.stream))
            return torch.zeros((), device=logits.device), {}

        return out, send


@torch.no_grad()
def run_teacher(role, model, cfg, train, held, out: Path, start_step: int = 0, stop_after: int | None = None):
    """Serve every micro-batch of the schedule to the student replicas this teacher replica teaches, and join the
    students' (collective) checkpoint saves. `train` and `held` stay on the host; each micro-batch moves to the
    device when the forward pass takes it."""
    from rad_megatron.checkpoint.store import save_model

    server = TeacherServer(role, model, cfg)
    sampler = train.sampler()
    per_step = role.student_dp * cfg.grad_accum * cfg.micro_batch_size
    sampler.position, sampler.epoch = sampler_position(sampler, start_step * per_step)
    saves = save_steps(cfg, stop_after)
    keys = None if role.is_last_stage else ("input_ids", "seq_idx")
    replicas = role.served_replicas()
    groups = list(_groups(events(cfg.total_steps, cfg.grad_accum, cfg.eval_every,
                                 num_eval_batches(held, cfg.eval_batch_size), start_step)))
    for n, group in enumerate(groups):
        step = group[0].step
        if group[0].kind == "train":
            indices = sampler.take(per_step)
            items = ((r, ev.micro, take(train, replica_slice(indices, r, ev.micro, role.student_dp,
                                                             cfg.micro_batch_size), role.device, keys))
                     for ev in group for r in replicas)
            shape = (cfg.micro_batch_size, train.seq_len)
        else:
            rows = eval_rows(group[0].micro, cfg.eval_batch_size)
            items = ((r, EVAL_MICRO + group[0].micro, take(held, rows, role.device, keys)) for r in replicas)
            shape = tuple(held["input_ids"][rows].shape)
        server.serve(step, items, len(group) * len(replicas), shape)
        last_of_step = n + 1 == len(groups) or groups[n + 1][0].step != step
        if last_of_step and step in saves and step > start_step:
            meet_before_save(role, step, cfg.stream.timeout_s)
            save_model(None, Path(out) / "checkpoints" / f"step_{step:06d}", force=True)
        if last_of_step and stop_after is not None and step >= stop_after:
            break
    server.sender.flush()
    return {"teacher_wait_s": server.sender.wait_s, "bytes_sent": server.sender.bytes_sent}
