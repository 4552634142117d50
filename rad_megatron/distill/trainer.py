"""Targeted distillation, student and teacher side of one run.

Student ranks: forward on vocab-parallel logits, receive the teacher's top-k, TP-aware loss, then Megatron's DDP
gradient reduction, clipping and Adam (the distributed optimizer when DP > 1) with warmup + cosine per stage
(distill/optim.py), log, evaluate held-out KL and perplexity, and checkpoint atomically (model via dist_checkpointing;
optimizer shard, schedule, sampler and RNG per TP x DP rank).
Teacher ranks: walk the same schedule and serve each micro-batch to the replicas they teach.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from rad_megatron.distill.guard import NonFiniteGuard, nonfinite_quantity
from rad_megatron.distill.losses import LossWeights, distill_loss
from rad_megatron.distill.optim import OptimConfig, StageOptimizer
from rad_megatron.distill.peers import meet_before_save
from rad_megatron.distill.schedule import EVAL_MICRO, events, replica_slice
from rad_megatron.distill.stream import StreamConfig, StudentReceiver, TeacherSender, teacher_targets
from rad_megatron.distill.targeting import Stage, apply_targeting
from rad_megatron.errors import RadError, RunStopped
from rad_megatron.model.forward import forward_logits
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


def _eval_batch(held, i, size):
    return {k: v[i * size:(i + 1) * size] for k, v in held.items()}


def num_eval_batches(held, size) -> int:
    return -(-held["input_ids"].shape[0] // size) if held is not None and held["input_ids"].shape[0] else 0


# ------------------------------------------------------------------------------------------------------ teacher
def save_steps(cfg: "TrainConfig", stop_after: int | None) -> set[int]:
    steps = {cfg.total_steps} | ({stop_after} if stop_after else set())
    if cfg.save_every:
        steps |= set(range(cfg.save_every, cfg.total_steps + 1, cfg.save_every))
    return steps


@torch.no_grad()
def run_teacher(role, model, cfg: TrainConfig, train, held, out: Path, start_step: int = 0,
                stop_after: int | None = None):
    """Serve every micro-batch of the schedule to the student replicas this teacher replica teaches, and join the
    students' (collective) checkpoint saves. `train` is a data.loader.TrainData."""
    from rad_megatron.checkpoint.store import save_model

    sender = TeacherSender(cfg.stream)
    sampler = train.sampler()
    per_step = role.student_dp * cfg.grad_accum * cfg.micro_batch_size
    sampler.position, sampler.epoch = _sampler_position(sampler, start_step * per_step)
    saves = save_steps(cfg, stop_after)
    step_indices, current = None, None
    evs = list(events(cfg.total_steps, cfg.grad_accum, cfg.eval_every, num_eval_batches(held, cfg.eval_batch_size),
                      start_step))
    for n, ev in enumerate(evs):
        for replica in role.served_replicas():
            if ev.kind == "train":
                if current != ev.step:
                    step_indices, current = sampler.take(per_step), ev.step
                b = train.batch(replica_slice(step_indices, replica, ev.micro, role.student_dp,
                                              cfg.micro_batch_size), role.device)
            else:
                b = _eval_batch(held, ev.micro, cfg.eval_batch_size)
            vals, idx, nll, tok = teacher_targets(model, b["input_ids"], b["labels"], b["loss_mask"], cfg.stream,
                                                  seq_idx=b.get("seq_idx"))
            if role.tp_rank == 0:
                sender.send(role.student_replica_ranks(replica), ev.step, ev.micro if ev.kind == "train"
                            else EVAL_MICRO + ev.micro, b["input_ids"], vals, idx, nll, tok)
        last_of_step = n + 1 == len(evs) or evs[n + 1].step != ev.step
        if last_of_step and ev.step in saves and ev.step > start_step:
            meet_before_save(role, ev.step, cfg.stream.timeout_s)
            save_model(None, Path(out) / "checkpoints" / f"step_{ev.step:06d}", force=True)
        if last_of_step and stop_after is not None and ev.step >= stop_after:
            break
    sender.flush()
    return {"teacher_wait_s": sender.wait_s, "bytes_sent": sender.bytes_sent}


def _sampler_position(sampler, consumed: int):
    """(position, epoch) after `consumed` indices, without drawing them."""
    return consumed % sampler.size, consumed // sampler.size


# ------------------------------------------------------------------------------------------------------ student
class StudentTrainer:
    """`train`: a data.loader.TrainData; `teacher_cache`: a distill.cache_store.TeacherCache to read targets from
    instead of a live teacher."""

    def __init__(self, role, model, cfg: TrainConfig, train, held, new_layers: list[int], out: Path, tokenizer=None,
                 meta: dict | None = None, teacher_cache=None):
        self.role, self.model, self.cfg, self.train_data, self.held = role, model, cfg, train, held
        self.new_layers, self.out, self.tokenizer, self.meta = list(new_layers), Path(out), tokenizer, meta or {}
        self.teacher_cache = teacher_cache
        self.sampler = train.sampler()
        self.step = 0
        self.stage_idx = -1
        self.optimizer = None
        self.tb = None
        self.guard = NonFiniteGuard(cfg.skip_nonfinite)
        self.vocab = model.rad_config.vocab_size
        self.vocab_start = role.tp_rank * model.embedding.word_embeddings.weight.shape[0]
        from megatron.core import parallel_state

        self.tp_group = parallel_state.get_tensor_model_parallel_group()

    # ---- setup -------------------------------------------------------------------------------------------------
    def _enter_stage(self, idx: int):
        stage = self.cfg.stages[idx]
        if self.optimizer is not None:
            self.optimizer.retire()
        apply_targeting(self.model, stage.trainable, self.new_layers)
        self.optimizer = StageOptimizer(self.model, self.cfg.optim, stage.lr, stage.steps, self.role.dp,
                                        group=self.role.student_group)
        self.stage_idx = idx

    def _receiver(self, start_step):
        """Where teacher targets come from: the live stream, or the offline cache (the same contract)."""
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
                b = _eval_batch(self.held, e.micro, self.cfg.eval_batch_size)["input_ids"]
                expected.append((e.step, EVAL_MICRO + e.micro, b.shape[0], b.shape[1]))
        return StudentReceiver(self.role.teacher_for(self.role.dp_rank), self.vocab, self.cfg.stream, expected,
                               device=self.role.device)

    # ---- one micro-batch ---------------------------------------------------------------------------------------
    def _loss(self, b, step, micro, weights, module=None):
        # vocab-parallel logits; under sequence parallelism a length TP does not divide is padded (forward_logits)
        logits = forward_logits(module or self.model, b["input_ids"], gather=False, seq_idx=b.get("seq_idx"))
        vals, idx, tnll, ttok = self.receiver.receive(step, micro, b["input_ids"])
        if idx is None:  # the whole vocabulary was sent: index it like a top-k with k = V
            idx = torch.arange(vals.shape[-1], device=vals.device).expand(vals.shape)
        loss, terms = distill_loss(logits, vals, idx, b["labels"], b["loss_mask"], weights, self.tp_group,
                                   self.vocab_start, self.vocab)
        return loss, terms, tnll, ttok

    # ---- evaluation --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, step):
        kl_sum = nll_sum = tok_sum = t_nll = t_tok = 0.0
        weights = LossWeights(fkl=1.0, rkl=0.0, ce=1.0, temperature=self.cfg.stream.temperature)
        for i in range(num_eval_batches(self.held, self.cfg.eval_batch_size)):
            b = _eval_batch(self.held, i, self.cfg.eval_batch_size)
            _, terms, tnll, ttok = self._loss(b, step, EVAL_MICRO + i, weights)
            n = b["loss_mask"].sum().item()
            kl_sum, nll_sum, tok_sum = kl_sum + terms["fkl"] * n, nll_sum + terms["ce"] * n, tok_sum + n
            t_nll, t_tok = t_nll + tnll, t_tok + ttok
        return {"step": step, "heldout_kl": kl_sum / max(tok_sum, 1), "heldout_ppl": math.exp(nll_sum / max(tok_sum, 1)),
                "teacher_ppl": math.exp(t_nll / max(t_tok, 1)), "heldout_tokens": tok_sum}

    # ---- the loop ----------------------------------------------------------------------------------------------
    def run(self, start_step: int = 0, stop_after: int | None = None) -> list[dict]:
        """Train from `start_step` (a resumed run has loaded its state) to the end or to `stop_after`."""
        cfg = self.cfg
        self.receiver = self._receiver(start_step)
        per_step = self.role.dp * cfg.grad_accum * cfg.micro_batch_size
        main = self.role.is_main
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.total_steps, initial=start_step, desc="distill", disable=not main, dynamic_ncols=True)
        records = []
        self.model.train()
        if start_step == 0:
            records.append(self._log(self.evaluate(0)))
        for step in range(start_step + 1, cfg.total_steps + 1):
            stage_idx, first = cfg.stage_at(step)
            if stage_idx != self.stage_idx:
                self._enter_stage(stage_idx)
            stage = cfg.stages[stage_idx]
            t0 = time.perf_counter()
            wait0, bytes0 = self.receiver.wait_s, self.receiver.bytes_received
            indices = self.sampler.take(per_step)
            self.optimizer.zero_grad()
            terms_sum: dict = {}
            for m in range(cfg.grad_accum):
                b = self.train_data.batch(replica_slice(indices, self.role.dp_rank, m, self.role.dp,
                                                        cfg.micro_batch_size), self.role.device)
                loss, terms, _, _ = self._loss(b, step, m, cfg.loss, self.optimizer.ddp)
                (loss / cfg.grad_accum).backward()
                terms_sum["loss"] = terms_sum.get("loss", 0.0) + loss.item() / cfg.grad_accum
                for k, v in terms.items():
                    terms_sum[k] = terms_sum.get(k, 0.0) + v / cfg.grad_accum
            lr, norm, skipped = self._update(step, terms_sum["loss"], bar)
            dt = time.perf_counter() - t0
            rec = {"step": step, "stage": stage.name, "lr": lr, "grad_norm": norm, **terms_sum, **skipped,
                   "samples": [indices[0], indices[-1] + 1],  # global sample ids [first, end) of this step
                   "tokens_per_s": per_step * self.train_data.seq_len / dt,
                   "student_wait_s": self.receiver.wait_s - wait0,
                   "bytes_received": self.receiver.bytes_received - bytes0}
            records.append(self._log(rec))
            if step == cfg.total_steps or (cfg.eval_every and step % cfg.eval_every == 0):
                self.model.eval()
                records.append(self._log(self.evaluate(step)))
                self.model.train()
            bar.update(1)
            bar.set_postfix(loss=f"{terms_sum['loss']:.4f}")
            self.step = step
            if step in save_steps(cfg, stop_after):
                self.save(step)
            if stop_after is not None and step >= stop_after:
                break
        bar.close()
        self.model.eval()
        return records

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

    def _log(self, rec: dict) -> dict:
        if self.role.is_main:
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

    # ---- checkpoints -------------------------------------------------------------------------------------------
    def save(self, step: int):
        from rad_megatron.checkpoint.store import save_model

        path = self.out / "checkpoints" / f"step_{step:06d}"
        meet_before_save(self.role, step, self.cfg.stream.timeout_s)
        state = {"step": step, "stage_idx": self.stage_idx, "optimizer": self.optimizer.state_dict(),
                 "sampler": self.sampler.state_dict(), "torch_rng": torch.get_rng_state(),
                 "nonfinite_skipped": self.guard.skipped}
        meta = {**self.meta, "train": {"step": step, "config": json.loads(json.dumps(asdict(self.cfg))),
                                       "new_layers": self.new_layers}}
        save_model(self.model, path, metadata=meta, force=True, tokenizer=self.tokenizer,
                   per_rank_state=state, per_rank_name=self._state_name())
        if self.role.is_main:
            latest = self.out / "checkpoints" / "latest.txt"
            tmp = latest.with_suffix(".tmp")
            tmp.write_text(path.name)
            tmp.replace(latest)

    def _state_name(self) -> str:
        # every rank writes its own: under the distributed optimizer each DP replica holds a different shard
        return f"tp{self.role.tp_rank}_dp{self.role.dp_rank}"

    def load_state(self, path: Path) -> int:
        state = load_train_state(Path(path) / "train_state" / f"{self._state_name()}.pt")
        self.guard.skipped = state.get("nonfinite_skipped", 0)
        self._enter_stage(state["stage_idx"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        self.step = state["step"]
        return self.step


def load_train_state(f: Path) -> dict:
    """One rank's training state, or one line naming the file that is missing or unreadable."""
    from rad_megatron.files import torch_load

    if not f.is_file():
        raise RadError(f"--resume: '{f}' is missing; this rank's training state is saved per TP x DP rank, so resume "
                       f"with the layout the checkpoint was written with (distill.roles and the launched ranks)")
    state = torch_load(f, "--resume: training state", "resume from an earlier checkpoint (checkpoints/step_*) or "
                                                       "start the run again")
    if not isinstance(state, dict) or "step" not in state:
        raise RadError(f"--resume: '{f}' is not a rad_megatron training state; resume from another checkpoint")
    return state


def latest_checkpoint(out: Path) -> Path | None:
    f = Path(out) / "checkpoints" / "latest.txt"
    return Path(out) / "checkpoints" / f.read_text().strip() if f.is_file() else None


def check_resume_config(path: Path, cfg: TrainConfig):
    from rad_megatron.checkpoint.store import read_meta

    # fields that may change on resume (deadlines, the non-finite allowance) are left out of the comparison
    saved = resume_view(TrainConfig, read_meta(path).get("train", {}).get("config") or {})
    now = resume_view(TrainConfig, json.loads(json.dumps(asdict(cfg))))
    if saved != now:
        diff = sorted(k for k in set(saved or {}) | set(now) if (saved or {}).get(k) != now.get(k))
        raise RadError(f"--resume {path}: the checkpoint was written with a different distill config "
                       f"(differs in: {', '.join(diff) or 'everything'}); resume with the same config")
