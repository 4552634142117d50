"""Teacher -> student logit stream over torch.distributed point-to-point, pipelined.

Both sides walk the same deterministic schedule of micro-batches (the `Schedule` below). For each micro-batch of a
student replica, the serving teacher computes log-probabilities at temperature T over the full vocabulary, keeps the
top-k (or all of them), and sends [header, values(, indices)] to every TP rank of that replica. The header carries the
schedule position and a checksum of the input ids the teacher used, and the student refuses a mismatch.

Overlap: the student keeps `lookahead` receives posted ahead of the micro-batch it is computing, and the teacher keeps
at most `lookahead` sends per destination in flight, so the teacher runs up to `lookahead` micro-batches ahead and
neither side waits while the other computes (as long as its own step is the slower one).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from rad_megatron.distill.peers import talking_to, wait_for
from rad_megatron.distill.schedule import EVAL_MICRO
from rad_megatron.errors import RadError
from rad_megatron.model.forward import forward_logits
from rad_megatron.validation import rules

HEADER = 5  # [step, micro, checksum, teacher_nll_sum, teacher_tokens]


def done_before(step: int, micro: int) -> int:
    """The last step both sides finished before the message (step, micro) is due."""
    return step if micro >= EVAL_MICRO else step - 1


@dataclass
class StreamConfig:
    """What the teacher sends, and how long either side waits for the other."""

    top_k: int = field(default=64, metadata=rules(ge=0))
    """Top-k log-probabilities per token; 0 sends the whole vocabulary."""
    lookahead: int = field(default=2, metadata=rules(ge=1))
    """Micro-batches the teacher may run ahead of the student."""
    temperature: float = field(default=1.0, metadata=rules(gt=0))
    """Temperature of the teacher's log-softmax (the student's KL uses the same)."""
    timeout_s: float = field(default=120.0, metadata=rules(gt=0, resume=False))
    """Deadline of every wait on the other side (a student for its teacher's next message, a teacher for its students
    to take one, both for the other at a checkpoint save): past it the rank stops with one line naming the silent
    rank, well before the 10-minute collective timeout."""
    dtype: str = field(default="fp32", metadata=rules(choices=("fp32", "bf16")))
    """Of the log-probabilities sent: fp32 | bf16. fp32 by default: the loss recovers probabilities with exp() and
    the tail bucket as 1 - sum(top-k), where bf16's 8-bit mantissa (0.4% per value) would dominate KLs near 0 (a
    student close to its teacher); bf16 halves the stream's bytes where the link is the bottleneck (whole
    vocabulary, top_k = 0). The loss is computed in fp32 either way."""

    @property
    def torch_dtype(self) -> torch.dtype:
        return STREAM_DTYPES[self.dtype]


STREAM_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def checksum(ids: torch.Tensor) -> float:
    """Order-sensitive fingerprint of a batch of token ids, exact in float64 (< 2^52)."""
    flat = ids.reshape(-1).long()
    pos = torch.arange(1, flat.numel() + 1, device=flat.device)
    return float(((flat * pos).sum().item() * 1000003 + flat.sum().item()) % (1 << 52))


def wire_device(device) -> torch.device:
    """Where a message's tensors travel from: the data's device, except CUDA data over gloo (ranks sharing a GPU,
    distributed/init.select_device), whose point-to-point sends take host tensors only: staged through the host."""
    device = torch.device(device)
    if device.type == "cuda" and dist.is_initialized() and dist.get_backend() == "gloo":
        return torch.device("cpu")
    return device


def message_shapes(batch: int, seq: int, vocab: int, k: int):
    width = k if k else vocab
    return [(HEADER,), (batch, seq, width)] + ([(batch, seq, k)] if k else [])


def message_bytes(batch, seq, vocab, k, value_bytes: int = 4) -> int:
    return HEADER * 8 + batch * seq * (k if k else vocab) * value_bytes + (batch * seq * k * 4 if k else 0)


@torch.no_grad()
def teacher_token_targets(model, ids: torch.Tensor, labels: torch.Tensor, cfg: StreamConfig,
                          seq_idx: torch.Tensor | None = None):
    """(values, indices or None, log-probability of each label at T = 1 [b, s]) of one micro-batch (full-vocabulary
    logits gathered over TP; seq_idx: packed documents, each seen alone)."""
    return token_targets_from_logits(forward_logits(model, ids, seq_idx=seq_idx), labels, cfg)


@torch.no_grad()
def token_targets_from_logits(logits: torch.Tensor, labels: torch.Tensor, cfg: StreamConfig):
    """`teacher_token_targets` from the teacher's full-vocabulary logits [b, s, V] (also a last pipeline stage's
    output); the values in the stream's dtype (stream.dtype)."""
    logits = logits.float()
    # no logits / 1.0: a vocabulary-sized copy for nothing (rad plan's teacher memory counts none at T = 1)
    logp = torch.log_softmax(logits if cfg.temperature == 1.0 else logits / cfg.temperature, -1)
    logp1 = logp if cfg.temperature == 1.0 else torch.log_softmax(logits, -1)
    label_logp = logp1.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    if cfg.top_k:
        vals, idx = logp.topk(cfg.top_k, dim=-1)
        return vals.to(cfg.torch_dtype).contiguous(), idx.int().contiguous(), label_logp
    return logp.to(cfg.torch_dtype).contiguous(), None, label_logp


def target_sums(label_logp: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """(teacher nll sum, token count) over the loss-masked tokens of a micro-batch: what each message's header
    carries (an offline cache recomputes it from stored per-token values with the same reduction)."""
    return -(label_logp * mask).sum().item(), mask.sum().item()


@torch.no_grad()
def teacher_targets(model, ids: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, cfg: StreamConfig,
                    seq_idx: torch.Tensor | None = None):
    """(values, indices or None, nll_sum, tokens) of one micro-batch."""
    return targets_from_logits(forward_logits(model, ids, seq_idx=seq_idx), labels, mask, cfg)


@torch.no_grad()
def targets_from_logits(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, cfg: StreamConfig):
    """`teacher_targets` from the teacher's full-vocabulary logits [b, s, V] (a last pipeline stage's output)."""
    vals, idx, label_logp = token_targets_from_logits(logits, labels, cfg)
    return (vals, idx, *target_sums(label_logp, mask))


class TeacherSender:
    """Teacher TP-rank 0: sends each message to its destinations, with bounded sends in flight."""

    def __init__(self, cfg: StreamConfig):
        self.cfg = cfg
        self.inflight: deque = deque()
        self.wait_s = 0.0
        self.bytes_sent = 0

    def send(self, dests: list[int], step: int, micro: int, ids, vals, idx, nll: float, tokens: float):
        # on the values' device (NCCL sends only GPU tensors), or staged on the host for gloo (wire_device)
        wire = wire_device(vals.device)
        header = torch.tensor([step, micro, checksum(ids), nll, tokens], dtype=torch.float64, device=wire)
        tensors = [header, vals.to(wire)] + ([idx.to(wire)] if idx is not None else [])
        for dst in dests:
            with talking_to(f"student rank {dst}", done_before(step, micro), self.cfg.timeout_s, what="taken"):
                works = [dist.isend(t, dst=dst, tag=j) for j, t in enumerate(tensors)]
            self.inflight.append((works, tensors, dst, done_before(step, micro)))
            self.bytes_sent += sum(t.numel() * t.element_size() for t in tensors)
        limit = self.cfg.lookahead * max(len(dests), 1)
        while len(self.inflight) > limit:
            self._wait_oldest()

    def _wait_oldest(self):
        works, _, dst, after = self.inflight.popleft()
        t0 = time.perf_counter()
        wait_for(works, f"student rank {dst}", after, self.cfg.timeout_s, what="taken")
        self.wait_s += time.perf_counter() - t0

    def flush(self):
        while self.inflight:
            self._wait_oldest()


class StudentReceiver:
    """A student rank: keeps `lookahead` receives posted from its teacher and checks each against its own batch."""

    def __init__(self, src: int, vocab: int, cfg: StreamConfig, expected: list[tuple[int, int, int, int]],
                 device: torch.device | str = "cpu"):
        self.src, self.cfg, self.vocab, self.device = src, cfg, vocab, device
        self.wire = wire_device(device)  # receive buffers live here; values move to `device` once received
        self.expected = deque(expected)  # (step, micro, batch, seq) in the order this rank consumes them
        self.to_post = deque(expected)
        self.posted: deque = deque()
        self.wait_s = 0.0
        self.bytes_received = 0
        for _ in range(cfg.lookahead):
            self._post()

    def _post(self):
        if not self.to_post:
            return
        step, micro, batch, seq = self.to_post.popleft()
        dtypes = [torch.float64, self.cfg.torch_dtype, torch.int32]
        shapes = message_shapes(batch, seq, self.vocab, self.cfg.top_k)
        bufs = [torch.empty(s, dtype=d, device=self.wire) for s, d in zip(shapes, dtypes)]
        with talking_to(f"teacher rank {self.src}", done_before(step, micro), self.cfg.timeout_s):
            works = [dist.irecv(b, src=self.src, tag=j) for j, b in enumerate(bufs)]
        self.posted.append((works, bufs))

    def receive(self, step: int, micro: int, ids: torch.Tensor):
        """(values, int64 indices or None, teacher nll sum, teacher tokens) for this micro-batch."""
        if not self.posted:
            self._post()
        works, bufs = self.posted.popleft()
        t0 = time.perf_counter()
        wait_for(works, f"teacher rank {self.src}", done_before(step, micro), self.cfg.timeout_s)
        self.wait_s += time.perf_counter() - t0
        exp = self.expected.popleft()[:2]
        self._post()
        header = bufs[0]
        got = (int(header[0]), int(header[1]))
        if got != (step, micro) or exp != (step, micro):
            raise RadError(f"teacher stream out of order: got step/micro {got}, expected {(step, micro)}")
        if header[2].item() != checksum(ids):
            raise RadError(f"teacher stream data mismatch at step {step} micro {micro}: the teacher saw different "
                           f"tokens (check that both sides use the same data, seed and batch settings)")
        self.bytes_received += sum(b.numel() * b.element_size() for b in bufs)
        idx = bufs[2].to(self.device).long() if len(bufs) > 2 else None
        return bufs[1].to(self.device), idx, float(header[3]), float(header[4])
