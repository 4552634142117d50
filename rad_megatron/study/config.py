"""The study's YAML config: which strategies, sizes, inits and seeds, and the one training budget they all share.

A `quick:` mapping in the same file is merged over the rest when `--quick` is given (a smaller preset with the same
shape), so both presets live side by side and cannot drift apart silently.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from rad_megatron.errors import RadError
from rad_megatron.settings import ModelSource, _merge, apply_overrides, read_yaml
from rad_megatron.study.strategies import STRATEGIES
from rad_megatron.validation import from_dict, rules


@dataclass
class StudyProbe:
    """Where the strategies' probe evidence comes from."""

    file: str = ""
    """An existing probe.json (per-layer scores, a searched set; its settings and prompts are used for anything the
    study adds); empty: the study runs the per-layer probe itself with the settings below."""
    search_trials: int = field(default=8, metadata=rules(ge=1))
    """Bayesian-search trials for each k not searched yet (run once, cached in the study folder)."""
    prompts: str = ""
    """Probe prompts; empty: the file's `settings.prompts`."""
    num_prompts: int | None = field(default=None, metadata=rules(ge=1))
    """Prompts used; None: the file's setting (same evidence as its per-layer scores), or 4 without a file."""
    draft_len: int = field(default=4, metadata=rules(ge=1))
    """K: draft tokens per verify step (without a file)."""
    max_new_tokens: int = field(default=32, metadata=rules(ge=1))
    """Tokens generated per prompt (without a file)."""
    objective: str = field(default="throughput", metadata=rules(choices="rad_megatron.probe.score:OBJECTIVES"))
    """Probe objective (probe.score.OBJECTIVES) of the per-layer ranking and the search (without a file)."""


@dataclass
class StudyData:
    """The distillation text (GSM8K train, chat format) and the held-out set."""

    path: str = "../shared/data/gsm8k/train.jsonl"
    """jsonl with question/answer fields."""
    seq_len: int = field(default=128, metadata=rules(ge=1))
    """Tokens per packed training sequence."""
    held_out: int = field(default=16, metadata=rules(ge=1))
    """Examples held out (before packing) for evaluation: whole examples, answers only in the metrics."""
    eval_seq_len: int = field(default=256, metadata=rules(ge=1))
    """Held-out examples are cut at this many tokens (long enough for whole GSM8K answers)."""
    max_examples: int | None = field(default=2000, metadata=rules(ge=1))
    """Training examples tokenized and packed (a run uses far fewer; this bounds start-up time)."""
    seed: int = field(default=0, metadata=rules(ge=0))
    """Seed of the held-out split."""


@dataclass
class StudyTrain:
    """The budget every run gets (identical across strategies, sizes and inits)."""

    steps: int = field(default=40, metadata=rules(ge=1))
    """Optimizer steps per run."""
    micro_batch_size: int = field(default=2, metadata=rules(ge=1))
    """Sequences per step."""
    lr: float = field(default=1e-3, metadata=rules(gt=0))
    """Peak learning rate (warmup, then cosine to optim.min_lr_ratio * lr)."""
    init_lr: dict[str, float] = field(default_factory=dict, metadata=rules(gt=0))
    """Peak LR per init (e.g. {rad_zero: 1e-4, mil: 1e-3}), replacing `lr` for that init. The inits want different
    step sizes (rad_zero's first update opens a gate in front of a normalisation, so a large step jolts the model;
    mil starts far from the teacher); every strategy still gets the same LR within an init."""
    optim: dict = field(default_factory=lambda: {"warmup_steps": 3},
                        metadata=rules(schema="rad_megatron.distill.optim:OptimConfig"))
    """distill.optim.OptimConfig fields (the trainer's optimizer: Megatron's Adam + scheduler)."""
    loss: dict = field(default_factory=dict, metadata=rules(schema="rad_megatron.distill.losses:LossWeights"))
    """distill.losses.LossWeights fields (default: forward KL on the teacher's top-k + tail)."""
    top_k: int = field(default=64, metadata=rules(ge=1))
    """Teacher log-probabilities kept per token (the cache holds these)."""
    eval_every: int = field(default=5, metadata=rules(ge=1))
    """Held-out evaluation every N steps (and at step 0 and at the end)."""
    lr_sweep: dict[str, list[float]] = field(default_factory=dict, metadata=rules(gt=0))
    """Peak LRs tried per init (e.g. {rad_zero: [3.0e-5, 1.0e-4, 3.0e-4]}): every (strategy, init) runs each one at
    k = `lr_sweep_k` on the first seed and keeps the LR with the lowest training loss over the last quarter of its
    steps (not the held-out KL the report compares). Empty: `init_lr` / `lr` for every strategy."""
    lr_sweep_k: int | None = field(default=None, metadata=rules(ge=1))
    """The k the sweep runs at; None: the middle of `ks`."""
    eval_batch_size: int = field(default=8, metadata=rules(ge=1))
    """Held-out examples per forward."""
    trainable: str = field(default="new_mamba", metadata=rules(choices="rad_megatron.distill.targeting:GROUPS"))
    """Parameter group that trains (distill.targeting): RAD trains only the new Mamba layers."""

    def lr_for(self, init: str) -> float:
        return float(self.init_lr.get(init, self.lr))


@dataclass
class StudyAccuracy:
    """GSM8K accuracy of the teacher and the final students (rad_megatron.eval's scorer)."""

    limit: int = field(default=200, metadata=rules(ge=0))
    """Test questions scored (0: skip accuracy)."""
    runs: list[str] | None = None
    """Final students scored, as run-name patterns (fnmatch, e.g. '*-k4-*-s0'); None: every run."""
    max_new_tokens: int = field(default=256, metadata=rules(ge=1))
    """Generation budget per question."""
    batch_size: int = field(default=32, metadata=rules(ge=1))
    """Questions per generation batch."""
    path: str = "../shared/data/gsm8k/test.jsonl"
    """GSM8K test jsonl."""


@dataclass
class StudyConfig:
    """RAD's layer choice against its baselines, every run under one training budget."""

    model: ModelSource = field(default_factory=ModelSource)
    """Teacher and the model every student is swapped from."""
    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES),
                                  metadata=rules(choices=STRATEGIES, min_len=1))
    """Layer-selection strategies (study.strategies)."""
    ks: list[int] = field(default_factory=lambda: [4, 8], metadata=rules(ge=1, min_len=1))
    """Numbers of attention layers replaced."""
    inits: list[str] = field(default_factory=lambda: ["rad_zero", "mil"],
                             metadata=rules(choices="rad_megatron.swap:INITS", min_len=1))
    """Mamba initialisations (swap.INITS)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1], metadata=rules(ge=0, min_len=1))
    """Seeds: the new layers' default init, the `random` set and the data order (shared by all strategies)."""
    probe: StudyProbe = field(default_factory=StudyProbe)
    """Probe evidence."""
    data: StudyData = field(default_factory=StudyData)
    """Training and held-out data."""
    train: StudyTrain = field(default_factory=StudyTrain)
    """The shared training budget."""
    accuracy: StudyAccuracy = field(default_factory=StudyAccuracy)
    """GSM8K accuracy of teacher and students."""
    out: str = "runs/study_smollm2"
    """Study folder (teacher cache, probe additions, one folder per run, report)."""
    report_dir: str = ""
    """Also write the report (<report_name>.md/.png/.jsonl and _probe.json) here, e.g. docs/results; empty: only in
    `out`."""
    report_name: str = "convergence"
    """File stem of the report."""
    bootstrap: int = field(default=2000, metadata=rules(ge=10))
    """Bootstrap resamples (over seeds and held-out examples) behind every interval in the report."""
    notes: list[str] = field(default_factory=list)
    """Lines for the report's `Limits` section (what this study does not measure, and why)."""
    discussion: str = ""
    """A hand-written reading of the report (a file name beside it in report_dir), linked under the verdict; empty:
    no link."""

    def __post_init__(self):  # what one field's rules cannot say (rad_megatron.validation checks the rest)
        from rad_megatron.swap import INITS

        if "rad" not in self.strategies or len(set(self.strategies)) < 2:
            raise RadError("config.strategies must include 'rad' and at least one baseline: the report measures RAD "
                           "against each baseline")
        bad = [k for k in self.train.init_lr if k not in INITS]
        if bad:
            raise RadError(f"config.train.init_lr: keys {bad} must be among {', '.join(INITS)}")
        self._check_sweep()

    def _check_sweep(self) -> None:
        from rad_megatron.swap import INITS

        t = self.train
        if not t.lr_sweep:
            return
        unknown = [i for i in t.lr_sweep if i not in INITS]
        if unknown:
            raise RadError(f"config.train.lr_sweep: '{unknown[0]}' is not an init; keys must be among {', '.join(INITS)}")
        missing = [i for i in self.inits if not t.lr_sweep.get(i)]
        if missing:
            raise RadError(f"config.train.lr_sweep: no learning rates for init {missing[0]}; give a non-empty list for "
                           f"every init in {self.inits} (e.g. {{rad_zero: [3.0e-5, 1.0e-4]}})")
        if t.lr_sweep_k is not None and t.lr_sweep_k not in self.ks:
            raise RadError(f"config.train.lr_sweep_k={t.lr_sweep_k} must be one of ks {self.ks}")

    @property
    def sweep_k(self) -> int:
        return self.train.lr_sweep_k if self.train.lr_sweep_k is not None else sorted(self.ks)[len(self.ks) // 2]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_study_config(path, overrides=(), quick: bool = False) -> StudyConfig:
    data = read_yaml(Path(path))
    preset = data.pop("quick", None)
    if quick:
        if not isinstance(preset, dict):
            raise RadError(f"--quick: {path} has no `quick:` mapping to apply")
        data = _merge(data, copy.deepcopy(preset))
    data = apply_overrides(data, list(overrides))
    return from_dict(StudyConfig, data, "config")


def optim_config(train: StudyTrain):
    from rad_megatron.distill.optim import OptimConfig

    o = from_dict(OptimConfig, dict(train.optim), "config.train.optim")
    o.betas = tuple(o.betas)
    return o


def loss_weights(train: StudyTrain):
    from rad_megatron.distill.losses import LossWeights

    return from_dict(LossWeights, dict(train.loss), "config.train.loss")
