"""A student rank's forward and backward passes through Megatron's pipeline schedules (`get_forward_backward_func`).

Without pipeline parallelism the no-pipelining schedule runs a step's micro-batches one after another (gradient
accumulation); with system.student_pp > 1 the 1F1B schedule runs them through the stages. Either way the schedule's
micro-batches are the step's grad_accum micro-batches and it divides each micro-batch's loss by their number. Input
ids enter on the first stage; the loss (the teacher's targets from the stream, the labels and the mask) exists only
on the last stage, which alone holds a `StudentReceiver`. Held-out evaluation runs the forward-only schedule, one call
per held-out batch (their widths differ).
"""

from __future__ import annotations

from functools import partial

import torch

from rad_megatron.distill.losses import LossWeights, distill_loss
from rad_megatron.distributed.cpu import megatron_cuda_on_cpu
from rad_megatron.model.forward import position_ids_for


class StudentStep:
    """Runs micro-batches through this rank's stage of the student; the last stage returns one dict per micro-batch
    (loss, its terms, masked tokens, the teacher's NLL sum and token count)."""

    def __init__(self, role, receiver, vocab: int, vocab_start: int, tp_group):
        self.role, self.receiver = role, receiver
        self.vocab, self.vocab_start, self.tp_group = vocab, vocab_start, tp_group

    def run(self, module, micro_batches, count: int, shape: tuple[int, int], weights: LossWeights,
            forward_only: bool = False) -> list[dict]:
        """`micro_batches` yields `count` dicts of tensors of `shape` [batch, seq] plus their stream position
        ("step", "micro"); it is read lazily, one micro-batch as the schedule needs it."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        # megatron_cuda_on_cpu: the schedules count tokens in a device="cuda" tensor (a no-op on a GPU)
        with megatron_cuda_on_cpu():
            return get_forward_backward_func()(
                forward_step_func=partial(self._forward, weights), data_iterator=iter(micro_batches),
                model=[module], num_microbatches=count, seq_length=shape[1], micro_batch_size=shape[0],
                forward_only=forward_only)

    def _forward(self, weights, data_iterator, module):
        b = next(data_iterator)
        out = stage_forward(module, b)
        if not self.role.is_last_stage:
            if not out.requires_grad and torch.is_grad_enabled():
                # every layer up to here is frozen: nothing to backpropagate into, but the schedule's backward
                # pass starts from this output, so hand it a leaf
                out = out.detach().requires_grad_()
            return out, None
        return out, partial(self._loss, b, weights)

    def _loss(self, b, weights, logits):
        vals, idx, t_nll, t_tok = self.receiver.receive(b["step"], b["micro"], b["input_ids"])
        vals = vals.float()  # a bf16 stream (stream.dtype); the loss is fp32
        if idx is None:  # the whole vocabulary was sent: index it like a top-k with k = V
            idx = torch.arange(vals.shape[-1], device=vals.device).expand(vals.shape)
        loss, terms = distill_loss(logits, vals, idx, b["labels"], b["loss_mask"], weights, self.tp_group,
                                   self.vocab_start, self.vocab)
        return loss, {"loss": loss.item(), **terms, "tokens": b["loss_mask"].sum().item(), "teacher_nll": t_nll,
                      "teacher_tokens": t_tok}


def stage_forward(model, b: dict) -> torch.Tensor:
    """One pipeline stage's (or the whole model's) forward of micro-batch `b`, vocab-parallel logits on the last
    stage: packed documents (`seq_idx`, data.loader) each seen alone."""
    if b.get("seq_idx") is not None:
        from rad_megatron.model.documents import packed_forward

        return packed_forward(model, b["input_ids"], b["seq_idx"])
    return model(input_ids=b["input_ids"], position_ids=position_ids_for(b["input_ids"]), attention_mask=None)


def carry_grad_into_recompute(model) -> None:
    """Under full activation recompute Megatron runs each layer inside a reentrant checkpoint function, whose
    output requires grad only if one of its *inputs* does: with the embedding and the first layers frozen (targeted
    distillation) no input does, and the trainable layers silently get no gradient at all. Make the decoder's input
    a leaf that requires grad (only when nothing upstream already does), so every checkpointed layer is on the
    autograd path. The frozen layers before the first trainable one then compute input gradients they pass on to
    nothing (a backward pass of those layers, no weight gradients)."""

    def hook(module, args, kwargs):
        h = kwargs.get("hidden_states")
        if module.training and torch.is_grad_enabled() and torch.is_tensor(h) and not h.requires_grad:
            kwargs["hidden_states"] = h.detach().requires_grad_()
        return args, kwargs

    if model.config.recompute_granularity == "full" and not getattr(model, "rad_recompute_hook", False):
        model.decoder.register_forward_pre_hook(hook, with_kwargs=True)
        model.rad_recompute_hook = True


def mean_terms(outputs: list[dict]) -> dict:
    """The step's loss and terms: the mean over its micro-batches (what the schedule's backward pass sees)."""
    keys = [k for k in outputs[0] if k not in ("tokens", "teacher_nll", "teacher_tokens")]
    return {k: sum(o[k] for o in outputs) / len(outputs) for k in keys}
