"""Targeted distillation, the student side of one run (the teacher side: distill/teacher.py).

Student ranks: each step's micro-batches run through Megatron's schedule (distill/step.py: vocab-parallel logits on
the last pipeline stage, the teacher's top-k from the stream, TP-aware loss), then Megatron's DDP gradient reduction
in fp32, clipping and Adam (fp32 main weights under bf16; the distributed optimizer) with warmup + cosine per stage
(distill/optim.py); log, evaluate held-out KL and perplexity, and checkpoint atomically (distill/train_state.py:
model, optimizer, scheduler, sampler through dist_checkpointing, resumable at another layout). The packed data stays
on the host: each rank moves only the micro-batch it is about to use (schedule.take).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from rad_megatron.distill.guard import NonFiniteGuard, nonfinite_quantity
from rad_megatron.distill.losses import LossWeights
from rad_megatron.distill.optim import OptimConfig, StageOptimizer
from rad_megatron.distill.schedule import eval_rows, events, num_eval_batches, replica_slice, take
from rad_megatron.distill.step import StudentStep, carry_grad_into_recompute, mean_terms
from rad_megatron.distill.stream import EVAL_MICRO, StreamConfig, StudentReceiver
from rad_megatron.distill.targeting import Stage, apply_targeting
from rad_megatron.distill.teacher import save_steps
from rad_megatron.errors import RadError, RunStopped
from rad_megatron.validation import resume_view, rules


@dataclass
class TrainConfig:
    """A distillation run."""

    stages: list[Stage] = field(default_factory=lambda: [Stage()], metadata=rules(min_len=1))
    """Progressive schedule; each stage has its trainable group, steps and LR."""
    micro_batch_size: int = field(default=1, metadata=rules(ge=1))
    """Sequences per micro-batch per student replica."""
    grad_accum: int = field(default=1, metadata=rules(ge=1))
    """Micro-batches per optimizer step."""
    loss: LossWeights = field(default_factory=LossWeights)
    """Loss mix and temperature."""
    stream: StreamConfig = field(default_factory=StreamConfig)
    """What the teacher sends and how far ahead it runs."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer settings."""
    eval_every: int = field(default=0, metadata=rules(ge=0))
    """Held-out evaluation every N steps (always at step 0 and at the end)."""
    eval_batch_size: int = field(default=4, metadata=rules(ge=1))
    """Held-out examples per evaluation micro-batch."""
    save_every: int = field(default=0, metadata=rules(ge=0))
    """Checkpoint every N steps (always at the end)."""
    seed: int = field(default=1234, metadata=rules(ge=0))
    """Seed of everything random in training."""
    skip_nonfinite: int = field(default=0, metadata=rules(ge=0, resume=False))
    """Optimizer steps whose loss or gradient norm is not finite that may be skipped (logged, no update) before the
    run stops; 0: the first one stops the run (the last checkpoint is kept, nothing is written after it)."""

    def __post_init__(self):
        self.stages = [Stage(**s) if isinstance(s, dict) else s for s in self.stages]
        for name, cls in (("loss", LossWeights), ("stream", StreamConfig), ("optim", OptimConfig)):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, cls(**getattr(self, name)))
        self.optim.betas = tuple(self.optim.betas)

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def stage_at(self, step: int) -> tuple[int, int]:
        """(stage index, first global step of that stage) for 1-based global `step`."""
        first = 1
        for i, s in enumerate(self.stages):
            if step < first + s.steps:
                return i, first
            first += s.steps
        return len(self.stages) - 1, first - self.stages[-1].steps


def lr_at(stage: Stage, optim: OptimConfig, k: int) -> float:
    """The LR of update k (0-based) within a stage, as StageOptimizer's Megatron scheduler sets it (tested): linear
    warmup reaching the peak at update warmup_steps, then cosine reaching min_lr_ratio * peak at the stage's last
    update."""
    if k < optim.warmup_steps:
        return stage.lr * (k + 1) / optim.warmup_steps
    span = max(stage.steps - optim.warmup_steps, 1)
    frac = min((k + 1 - optim.warmup_steps) / span, 1.0)
    return stage.lr * (optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


class StudentTrainer:
    """`train`: a data.loader.TrainData; `teacher_cache`: a distill.cache_store.TeacherCache to read targets from
    instead of a live teacher."""

    def __init__(self, role, model, cfg: TrainConfig, train, held, new_layers: list[int], out: Path, tokenizer=None,
                 meta: dict | None = None, teacher_cache=None, mixed_precision: bool = False):
        from megatron.core import parallel_state

        from rad_megatron.model.build import padded_vocab_size

        self.role, self.model, self.cfg, self.train_data, self.held = role, model, cfg, train, held
        self.new_layers, self.out, self.tokenizer, self.meta = list(new_layers), Path(out), tokenizer, meta or {}
        self.teacher_cache, self.mixed_precision = teacher_cache, mixed_precision
        self.sampler = train.sampler()
        self.step = 0
        self.stage_idx = -1
        self.optimizer = None
        self.tb = None
        self.guard = NonFiniteGuard(cfg.skip_nonfinite)
        self.vocab = model.rad_config.vocab_size
        self.vocab_start = role.tp_rank * (padded_vocab_size(self.vocab, role.tp) // role.tp)
        self.tp_group = parallel_state.get_tensor_model_parallel_group()
        # the fields this rank's stage reads: ids enter the first stage, the loss needs the rest on the last
        self.keys = None if role.is_last_stage else ("input_ids", "seq_idx")
        carry_grad_into_recompute(model)

    # ---- setup -------------------------------------------------------------------------------------------------
    def _enter_stage(self, idx: int):
        stage = self.cfg.stages[idx]
        if self.optimizer is not None:
            self.optimizer.retire()
        apply_targeting(self.model, stage.trainable, self.new_layers)
        self.optimizer = StageOptimizer(self.model, self.cfg.optim, stage.lr, stage.steps, self.role.dp,
                                        group=self.role.student_group, bf16=self.mixed_precision)
        self.stage_idx = idx

    def _receiver(self, start_step):
        """Where the last stage's teacher targets come from: the live stream, or the offline cache (the same
        contract). The other stages compute no loss."""
        if not self.role.is_last_stage:
            return None
        if self.teacher_cache is not None:
            from rad_megatron.distill.cache_store import CachedTargets

            s = self.sampler
            return CachedTargets(self.teacher_cache, self.role.dp_rank, self.role.dp, self.cfg.grad_accum,
                                 self.cfg.micro_batch_size, start_step + 1, s.epoch * s.size + s.position,
                                 device=self.role.device)
        seq = self.train_data.seq_len
        expected = []
        for e in events(self.cfg.total_steps, self.cfg.grad_accum, self.cfg.eval_every,
                        num_eval_batches(self.held, self.cfg.eval_batch_size), start_step):
            if e.kind == "train":
                expected.append((e.step, e.micro, self.cfg.micro_batch_size, seq))
            else:
                b = self.held["input_ids"][eval_rows(e.micro, self.cfg.eval_batch_size)]
                expected.append((e.step, EVAL_MICRO + e.micro, b.shape[0], b.shape[1]))
        return StudentReceiver(self.role.teacher_for(self.role.dp_rank), self.vocab, self.cfg.stream, expected,
                               device=self.role.device)

    def _micro_batches(self, indices, step):
        """This replica's micro-batches of a step, each moved to the device when the schedule takes it."""
        cfg, role = self.cfg, self.role
        for m in range(cfg.grad_accum):
            rows = replica_slice(indices, role.dp_rank, m, role.dp, cfg.micro_batch_size)
            yield {**take(self.train_data, rows, role.device, self.keys), "step": step, "micro": m}

    # ---- evaluation --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, step):
        """Held-out KL and perplexities (on the last stage; None elsewhere)."""
        weights = LossWeights(fkl=1.0, rkl=0.0, ce=1.0, temperature=self.cfg.stream.temperature)
        outputs = []
        for i in range(num_eval_batches(self.held, self.cfg.eval_batch_size)):
            rows = eval_rows(i, self.cfg.eval_batch_size)
            b = {**take(self.held, rows, self.role.device, self.keys), "step": step, "micro": EVAL_MICRO + i}
            outputs += self.stepper.run(self.model, [b], 1, tuple(self.held["input_ids"][rows].shape), weights,
                                        forward_only=True)
        if not self.role.is_last_stage:
            return None
        n = sum(o["tokens"] for o in outputs)
        kl = sum(o["fkl"] * o["tokens"] for o in outputs)
        nll = sum(o["ce"] * o["tokens"] for o in outputs)
        t_nll, t_tok = sum(o["teacher_nll"] for o in outputs), sum(o["teacher_tokens"] for o in outputs)
        return {"step": step, "heldout_kl": kl / max(n, 1), "heldout_ppl": math.exp(nll / max(n, 1)),
                "teacher_ppl": math.exp(t_nll / max(t_tok, 1)), "heldout_tokens": n}

    # ---- the loop ----------------------------------------------------------------------------------------------
    def run(self, start_step: int = 0, stop_after: int | None = None) -> list[dict]:
        """Train from `start_step` (a resumed run has loaded its state) to the end or to `stop_after`."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        self.receiver = self._receiver(start_step)
        self.stepper = StudentStep(self.role, self.receiver, self.vocab, self.vocab_start, self.tp_group)
        per_step = self.role.dp * cfg.grad_accum * cfg.micro_batch_size
        shape = (cfg.micro_batch_size, self.train_data.seq_len)
        bar = tqdm(total=cfg.total_steps, initial=start_step, desc="distill", disable=not self.role.is_main,
                   dynamic_ncols=True)
        records = []
        self.model.train()
        if start_step == 0:
            records.append(self._log(self.evaluate(0)))
        for step in range(start_step + 1, cfg.total_steps + 1):
            stage_idx, _ = cfg.stage_at(step)
            if stage_idx != self.stage_idx:
                self._enter_stage(stage_idx)
            t0 = time.perf_counter()
            wait0, bytes0 = self._stream_counters()
            self.optimizer.zero_grad()
            indices = self.sampler.take(per_step)
            outputs = self.stepper.run(self.optimizer.ddp, self._micro_batches(indices, step),
                                       cfg.grad_accum, shape, cfg.loss)
            terms = self._global_mean(mean_terms(outputs)) if outputs else {}
            # stages before the last compute no loss: theirs counts as finite, the last stage's reaches them in the
            # guard's all-reduce over the student group
            lr, norm, skipped = self._update(step, terms.get("loss", 0.0), bar)
            dt = time.perf_counter() - t0
            wait1, bytes1 = self._stream_counters()
            rec = {"step": step, "stage": cfg.stages[stage_idx].name, "lr": lr, "grad_norm": norm, **terms, **skipped,
                   "samples": [indices[0], indices[-1] + 1],  # global sample ids [first, end) of this step
                   "tokens_per_s": per_step * shape[1] / dt,
                   "student_wait_s": wait1 - wait0, "bytes_received": bytes1 - bytes0}
            records.append(self._log(rec))
            if step == cfg.total_steps or (cfg.eval_every and step % cfg.eval_every == 0):
                self.model.eval()
                records.append(self._log(self.evaluate(step)))
                self.model.train()
            bar.update(1)
            if "loss" in rec:
                bar.set_postfix(loss=f"{rec['loss']:.4f}")
            self.step = step
            if step in save_steps(cfg, stop_after):
                self.save(step)
            if stop_after is not None and step >= stop_after:
                break
        bar.close()
        self.model.eval()
        return [r for r in records if r is not None]

    def _global_mean(self, terms: dict) -> dict:
        """The step's loss terms over the whole global batch: this replica's mean averaged over the data-parallel
        replicas (last-stage ranks only; every replica has the same number of micro-batches)."""
        if self.role.dp == 1:
            return terms
        from megatron.core import parallel_state

        t = torch.tensor([terms[k] for k in sorted(terms)], dtype=torch.float64, device=self.role.device)
        torch.distributed.all_reduce(t, group=parallel_state.get_data_parallel_group())
        return {k: v / self.role.dp for k, v in zip(sorted(terms), t.tolist())}

    def _stream_counters(self) -> tuple[float, int]:
        return (self.receiver.wait_s, self.receiver.bytes_received) if self.receiver is not None else (0.0, 0)

    def _update(self, step: int, loss: float, bar):
        """The optimizer step behind the non-finite guard: (lr, grad norm, {} or the skip's record fields)."""
        def last():
            ckpt = latest_checkpoint(self.out)
            return ckpt.name if ckpt is not None else None

        quantity = nonfinite_quantity(loss, self.optimizer.ddp, self.role.student_group, self.role.device)
        if quantity is not None:  # skipped (logged) or RunStopped
            self.guard.bad_step(step, quantity, last(), log=bar.write if self.role.is_main else lambda _: None)
            return None, None, {"skipped_nonfinite": quantity}
        lr, norm = self.optimizer.step()
        if self.cfg.optim.clip_grad > 0 and not math.isfinite(norm):  # Megatron measures the norm when it clips
            self.guard.after_update(step, norm, last())
        return lr, norm, {}

    def _log(self, rec: dict | None) -> dict | None:
        """Metrics come from the last pipeline stage; `is_main` (TP 0, DP 0 there) writes them."""
        if rec is None or not self.role.is_main:
            return rec
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            if self.tb is None:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.out / "tensorboard"))
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, rec["step"])
            self.tb.flush()
        except OSError as e:
            from rad_megatron.faults import describe_failure

            raise RunStopped(f"cannot append to '{self.out / 'metrics.jsonl'}' in folder '{self.out}': "
                             f"{describe_failure(e, self.out)}; the last checkpoint is kept") from None
        return rec

    # ---- checkpoints (distill/train_state.py) -----------------------------------------------------------------
    def save(self, step: int):
        from rad_megatron.distill.train_state import save_training_state

        save_training_state(self, step)

    def load_state(self, path: Path) -> int:
        from rad_megatron.distill.train_state import load_training_state

        return load_training_state(self, path)


def latest_checkpoint(out: Path) -> Path | None:
    f = Path(out) / "checkpoints" / "latest.txt"
    return Path(out) / "checkpoints" / f.read_text().strip() if f.is_file() else None


def check_resume_config(path: Path, cfg: TrainConfig, dp: int):
    """A resume continues the same run: the same distill config, except that at another data-parallel size
    grad_accum may change so that the global batch (dp x grad_accum x micro_batch_size) stays the same."""
    from rad_megatron.checkpoint.store import read_meta

    train = read_meta(path).get("train", {})
    # fields that may change on resume (deadlines, the non-finite allowance) are left out of the comparison
    saved = resume_view(TrainConfig, train.get("config") or {})
    now = resume_view(TrainConfig, json.loads(json.dumps(asdict(cfg))))
    saved_dp = train.get("layout", {}).get("dp", dp)
    if saved and saved.get("grad_accum") != now["grad_accum"] and \
            saved_dp * saved["grad_accum"] == dp * now["grad_accum"]:
        saved = {**saved, "grad_accum": now["grad_accum"]}
    if saved != now:
        diff = sorted(k for k in set(saved or {}) | set(now) if (saved or {}).get(k) != now.get(k))
        hint = (f"; at data-parallel size {dp} (saved at {saved_dp}) keep the global batch with grad_accum = "
                f"{saved_dp * (saved or now)['grad_accum'] / dp:g}" if "grad_accum" in diff and dp != saved_dp else "")
        raise RadError(f"--resume {path}: the checkpoint was written with a different distill config "
                       f"(differs in: {', '.join(diff) or 'everything'}); resume with the same config{hint}")
