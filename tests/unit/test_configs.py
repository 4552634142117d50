"""Model architecture configs (configs/models) and the paper experiment configs (configs/experiments): they load,
describe the published models, fit their documented allocation, and bad keys are refused with the closest key."""

import re
from pathlib import Path

import pytest

from rad_megatron.config import ModelConfig
from rad_megatron.errors import RadError
from rad_megatron.plan import GPU, build_job, check_fits, make_plan
from rad_megatron.plan.params import total_params
from rad_megatron.settings import build_model_config, load_run_config, read_yaml

ROOT = Path(__file__).resolve().parents[2]
MODELS, EXPERIMENTS = ROOT / "configs" / "models", ROOT / "configs" / "experiments"

# Parameter counts of the HF checkpoints (safetensors totals on their model cards / index files).
PUBLISHED = {"llama3.1-8b": 8_030_261_248, "llama3.1-70b": 70_553_706_496, "llama3.2-3b": 3_212_749_824,
             "llama3.2-1b": 1_235_814_400, "smollm2-135m": 134_515_008}


def _model(name: str) -> ModelConfig:
    return ModelConfig.from_dict(read_yaml(MODELS / f"{name}.yaml"))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_model_configs_have_the_published_sizes(name):
    assert total_params(_model(name)) == PUBLISHED[name]


def test_hybrid_base_is_mil_50_percent():
    cfg = _model("llama3.2-3b-mamba2-50pct")  # inherits llama3.2-3b.yaml through base:
    assert cfg.mamba_layers == list(range(0, 28, 2)) and cfg.attention_layers == list(range(1, 28, 2))
    m = cfg.mamba_shape()
    assert (m.num_heads, m.head_dim, m.state_dim, m.num_groups, m.d_xb) == (24, 128, 128, 24, 1024)


@pytest.mark.slow
def test_smollm2_config_matches_the_real_checkpoint():
    from rad_megatron.checkpoint.hf_source import resolve

    real, ours = ModelConfig.from_hf(resolve(None).config()).to_dict(), _model("smollm2-135m").to_dict()
    assert ours.pop("rms_norm_eps") == pytest.approx(real.pop("rms_norm_eps"), rel=1e-6)
    assert ours == real


def _documented_allocation(path: Path) -> tuple[int, int, float]:
    m = re.search(r"rad plan \S+ --nodes (\d+) --gpus-per-node (\d+) --gpu-mem-gib (\d+)", path.read_text())
    assert m, f"{path.name} does not document its rad plan command"
    return int(m[1]), int(m[2]), float(m[3])


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.stem)
def test_experiment_configs_fit_their_documented_allocation(path):
    nodes, gpus, mem = _documented_allocation(path)
    job = build_job(load_run_config(path), nodes, gpus)  # also validates every train/roles/data key
    assert job.student.ranks + job.teacher.ranks == nodes * gpus
    assert job.precision == "bf16"
    check_fits(make_plan(job, GPU, mem))


def test_experiment_configs_describe_the_paper_setups():
    mil = build_job(load_run_config(EXPERIMENTS / "mil_50pct_70b_teacher.yaml"), 4, 8)
    assert mil.student.model.mamba_layers == list(range(0, 28, 2)) and mil.stages[0][0] == "all"
    assert total_params(mil.teacher.model) == PUBLISHED["llama3.1-70b"] and mil.global_batch == 64
    kd = build_job(load_run_config(EXPERIMENTS / "rad_kd_8b_teacher.yaml"), 1, 8)  # base: rad_self_distill_3b
    assert total_params(kd.teacher.model) == PUBLISHED["llama3.1-8b"] and kd.global_batch == 64
    assert kd.layers_from_probe and len(kd.new_layers) == 4 and kd.stages[0][0] == "new_mamba"
    self_ = build_job(load_run_config(EXPERIMENTS / "rad_self_distill_3b.yaml"), 1, 8)
    assert self_.teacher.model == self_.base and self_.base.mamba_layers == list(range(0, 28, 2))


def test_bad_keys_name_the_closest(tmp_path):
    (tmp_path / "arch.yaml").write_text("base: " + str(MODELS / "llama3.2-1b.yaml") + "\nhidden_sise: 8\n")
    (tmp_path / "run.yaml").write_text("model: {arch: arch.yaml}\n")
    cfg = load_run_config(tmp_path / "run.yaml")  # arch is read relative to run.yaml, not the working directory
    with pytest.raises(RadError, match=r"model.arch: unknown config key 'model.hidden_sise' \(did you mean "
                                       r"'hidden_size'\?\)"):
        build_model_config(cfg.model)
    with pytest.raises(RadError, match=r"unknown config key 'config.system.recompte' \(did you mean 'recompute'\?\)"):
        load_run_config(tmp_path / "run.yaml", ["system.recompte=full"])
    with pytest.raises(RadError, match=r"system.recompute='fulll': must be one of .* \(did you mean 'full'\?\)"):
        load_run_config(tmp_path / "run.yaml", ["system.recompute=fulll"])
    with pytest.raises(RadError, match=r"config.model.hf='org/model' is not a local folder or file; give "
                                       r"config.model.arch"):
        build_model_config(load_run_config(tmp_path / "run.yaml", ["model.arch=null", "model.hf=org/model"]).model)
