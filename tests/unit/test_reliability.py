"""The reliability pieces one at a time, in one process: every config field is checked by the one mechanism, the
non-finite guard, run-folder safety, a failed checkpoint save (named cause, partial folder removed, the previous one
intact), corrupt files named in one line, and the launcher's exit-status mapping."""

import dataclasses
import errno
import hashlib
import json
from pathlib import Path

import pytest
import torch

from rad_megatron.errors import RadError, RunStopped
from rad_megatron.validation import describe, is_number, resolve, supported, walk_fields

# Every config tree a user writes: the run config (with its dict sections checked as TrainConfig, RoleLayout and
# DataConfig), the study config, and rad plan's command-line inputs.
ROOTS = {"config": "rad_megatron.settings:RunConfig", "study config": "rad_megatron.study.config:StudyConfig",
         "rad plan": "rad_megatron.plan.inputs:PlanInputs"}
SECTIONS = ("RunConfig", "ModelSource", "ProbeSection", "SwapSection", "DistillSection", "SystemSection", "TrainConfig",
            "Stage", "LossWeights", "StreamConfig", "OptimConfig", "DataConfig", "RoleLayout", "StudyConfig",
            "StudyProbe", "StudyData", "StudyTrain", "StudyAccuracy", "PlanInputs")


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING


def test_every_field_of_every_section_is_typed_and_every_number_bounded():
    """New fields (other issues add them) are covered without extra work: this walks the dataclasses themselves."""
    from rad_megatron.validation import check_value

    seen, classes = 0, set()
    for root, ref in ROOTS.items():
        cls = resolve(ref)
        classes.add(cls.__name__)
        for where, f, hint, rules in walk_fields(cls, root):
            seen += 1
            classes.update(t.__name__ for t in [resolve(rules.schema)] if rules.schema)
            classes.update(a.__name__ for a in (hint, *getattr(hint, "__args__", ())) if dataclasses.is_dataclass(a))
            assert supported(hint), f"{where}: type {hint} is not checked by rad_megatron.validation"
            if is_number(hint):
                assert any(v is not None for v in (rules.ge, rules.gt, rules.le, rules.lt)), \
                    f"{where} holds numbers but declares no bounds: field(..., metadata=rules(ge=...))"
            default = _default(f)
            if default is not dataclasses.MISSING:
                check_value(default, hint, rules, where)  # a default passes its own rules
            assert f.metadata is not None and describe(hint, rules)
    assert set(SECTIONS) <= classes, set(SECTIONS) - classes
    assert seen >= 90, seen


@pytest.mark.parametrize("override, message", [
    ("distill.train.grad_accum=0", "config.distill.train.grad_accum=0: must be an integer >= 1"),
    ("distill.train.micro_batch_size=two", "config.distill.train.micro_batch_size='two': must be an integer >= 1"),
    ("distill.train.stages.0.lr=abc", "config.distill.train.stages[0].lr='abc': must be a number > 0"),
    ("distill.train.stream.temperature=0", "config.distill.train.stream.temperature=0: must be a number > 0"),
    ("distill.train.optim.betas=[0.9]", "config.distill.train.optim.betas=[0.9]: must be a list of 2 numbers >= 0 "
                                        "and < 1"),
    ("distill.train.optim.distributed_optimizer=3", "config.distill.train.optim.distributed_optimizer=3: must be true "
                                                    "or false, or null"),
    ("swap.init=mill", "config.swap.init='mill': must be one of mil, rad_zero, random (did you mean 'mil'?)"),
    ("distill.train.loss.fkl=.nan", "config.distill.train.loss.fkl=nan: must be a number >= 0"),
    ("distill.train.stages=[]", "config.distill.train.stages=[]: must be a non-empty list of mappings of Stage fields"),
])
def test_messages_name_the_field_the_value_and_what_is_allowed(tmp_path, override, message):
    from rad_megatron.settings import load_run_config

    (tmp_path / "c.yaml").write_text("distill: {train: {stages: [{lr: 0.1}]}}\n")
    with pytest.raises(RadError) as err:
        load_run_config(tmp_path / "c.yaml", [override])
    assert str(err.value) == message


def test_floats_written_like_1e_3_are_numbers_and_resume_ignores_deadlines(tmp_path):
    from rad_megatron.distill.trainer import TrainConfig
    from rad_megatron.settings import build_train_config, load_run_config
    from rad_megatron.validation import resume_view

    (tmp_path / "c.yaml").write_text("distill: {train: {stages: [{lr: 1e-3}]}}\n")  # YAML 1.1 reads 1e-3 as a string
    train = build_train_config(load_run_config(tmp_path / "c.yaml").distill)
    assert train.stages[0].lr == 1e-3 and isinstance(train.stages[0].lr, float)
    a = json.loads(json.dumps(dataclasses.asdict(train)))  # as the checkpoint records it
    b = json.loads(json.dumps(a))
    b["stream"]["timeout_s"], b["skip_nonfinite"] = 5.0, 3
    assert resume_view(TrainConfig, a) == resume_view(TrainConfig, b)
    b["stream"]["top_k"] = 8
    assert resume_view(TrainConfig, a) != resume_view(TrainConfig, b)


def test_nonfinite_guard_names_the_step_and_quantity_and_skips_what_it_may():
    from rad_megatron.distill.guard import NonFiniteGuard, nonfinite_quantity

    layer = torch.nn.Linear(3, 2)
    layer(torch.ones(1, 3)).sum().backward()
    assert nonfinite_quantity(1.5, layer) is None
    assert nonfinite_quantity(float("nan"), layer) == "loss"
    layer.weight.grad[0, 0] = float("inf")
    assert nonfinite_quantity(1.5, layer) == "gradient"
    logged = []
    guard = NonFiniteGuard(allowed=1)
    guard.bad_step(7, "gradient", "step_000006", log=logged.append)
    assert logged == ["step 7: the gradient is not finite; skipped without an update (1 of "
                      "distill.train.skip_nonfinite=1)"]
    with pytest.raises(RunStopped, match=r"^step 9: the loss is not finite; stopped before the update \(the last "
                                         r"checkpoint, step_000006, is kept, nothing written after it\)"):
        guard.bad_step(9, "loss", "step_000006")
    with pytest.raises(RunStopped, match="set distill.train.skip_nonfinite=N"):
        NonFiniteGuard(0).bad_step(1, "loss", None)
    with pytest.raises(RunStopped, match=r"step 4: the gradient norm is not finite \(inf\)"):
        NonFiniteGuard(5).after_update(4, float("inf"), None)


def test_run_folder_is_refused_or_moved_aside_never_mixed(tmp_path):
    from rad_megatron.run_folder import check_run_folder, move_aside

    out = tmp_path / "run"
    check_run_folder(out, resume=False, force=False)  # new: fine
    out.mkdir()
    check_run_folder(out, resume=False, force=False)  # empty: fine
    (out / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(RadError, match=r"run folder '.*run' already holds files; pass --resume to continue its run, "
                                       r"--force to move it aside \(to run.old-<time>\)"):
        check_run_folder(out, resume=False, force=False)
    with pytest.raises(RadError, match=r"--resume: '.*run' holds no checkpoint .* with --force"):
        check_run_folder(out, resume=True, force=False)
    with pytest.raises(RadError, match="give one of them"):
        check_run_folder(out, resume=True, force=True)
    assert move_aside(out, env={"RANK": "1", "WORLD_SIZE": "2"}) is None and out.is_dir()  # only rank 0 moves
    aside = move_aside(out, env={})
    assert not out.exists() and (aside / "metrics.jsonl").read_text() == "{}\n"
    assert aside.name.startswith("run.old-")
    out.mkdir()
    (out / "x").write_text("2")
    second = move_aside(out, env={})
    assert second != aside and (aside / "metrics.jsonl").is_file() and (second / "x").read_text() == "2"


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def tiny_model(dist):
    from rad_megatron.config import ModelConfig
    from rad_megatron.model import build_model

    return build_model(ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2,
                                   num_attention_heads=4, num_kv_heads=2))


def test_save_failure_names_the_cause_and_cleans_up(tiny_model, tmp_path, monkeypatch):
    """ENOSPC inside the write (torch.save raising it, as a full disk does) and EROFS when the folder is made: one
    line naming the folder and the cause, no partial folder, the previous checkpoint bit-identical. (A real full disk:
    tests/distributed/test_faults.py::test_disk_full_at_save.)"""
    from rad_megatron.checkpoint import store

    store.save_model(tiny_model, tmp_path / "step_1")
    before = _digest(tmp_path / "step_1")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(torch, "save", full)
        with pytest.raises(RunStopped, match=r"^cannot write checkpoint '.*step_2' in folder '.*': no space left on "
                                             r"device \(ENOSPC\); the partial folder was removed"):
            store.save_model(tiny_model, tmp_path / "step_2", per_rank_state={"step": 2}, per_rank_name="tp0_dp0")
    assert not (tmp_path / ".step_2.tmp").exists() and not (tmp_path / "step_2").exists()

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    with monkeypatch.context() as m:
        m.setattr(Path, "mkdir", read_only)
        with pytest.raises(RunStopped, match=r"read-only file system \(EROFS\)"):
            store.save_model(tiny_model, tmp_path / "step_3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_1"] and _digest(tmp_path / "step_1") == before


def test_corrupt_checkpoint_files_are_named(tiny_model, tmp_path):
    from rad_megatron.checkpoint.store import check_complete, read_meta, save_model
    from rad_megatron.distill.train_state import load_train_state

    ckpt = tmp_path / "c"
    save_model(tiny_model, ckpt)
    shard = next(ckpt.glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(RadError, match=rf"checkpoint shard '.*{shard.name}' is truncated \(100 bytes, its index "):
        check_complete(ckpt)
    meta = ckpt / "rad_meta.json"
    meta.write_text(meta.read_text()[:40])
    with pytest.raises(RadError, match=r"checkpoint file '.*rad_meta.json' is corrupt \(not JSON"):
        read_meta(ckpt)
    state = tmp_path / "tp0_dp0.pt"
    torch.save({"step": 3, "optimizer": torch.zeros(1000)}, state)
    state.write_bytes(state.read_bytes()[:200])
    with pytest.raises(RadError, match=r"--resume: training state '.*tp0_dp0.pt' is corrupt"):
        load_train_state(state)
    with pytest.raises(RadError, match=r"'.*tp1_dp0.pt' is missing"):
        load_train_state(tmp_path / "tp1_dp0.pt")


def test_failure_causes_are_read_from_errno_text_and_checkpoint_exceptions(tmp_path):
    from torch.distributed.checkpoint.api import CheckpointException

    from rad_megatron.faults import describe_failure, peer_cause

    wrapped = CheckpointException("write", {0: (OSError(errno.EDQUOT, "quota"), None)})
    assert describe_failure(wrapped, tmp_path) == "disk quota exceeded (EDQUOT)"
    assert peer_cause(RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:1")).startswith(
        "connection closed")
    assert peer_cause(RuntimeError("Timed out waiting 10000ms for recv operation to complete")) == "timed out"
    other = CheckpointException("read", {1: (ValueError("bad magic\nmore"), None)})
    assert describe_failure(other) == "ValueError: bad magic"
    # a rank whose own part of a collective save was fine learns only that the save failed elsewhere
    assert describe_failure(CheckpointException("write", {})).startswith("a peer rank stopped")


def test_launcher_maps_a_rank_status():
    from rad_megatron.torchrun import _status

    class Failure:
        def __init__(self, code):
            self.exitcode = code

    assert _status(Failure(2)) == (2, "exit status 2")
    assert _status(Failure(-9)) == (137, "killed by SIGKILL")


def test_reliability_doc_is_rendered_from_the_suites():
    """docs/reliability.md's tables are the suites' tables (CASES, SUBPROCESS_CASES, FAULTS), rendered."""
    import importlib.util

    from tests.helpers import ROOT

    spec = importlib.util.spec_from_file_location("render_reliability", ROOT / "tools" / "render_reliability.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    doc = render.DOC.read_text()
    assert render.updated(doc) == doc, "docs/reliability.md is out of date: run python tools/render_reliability.py"
    assert doc.count("| in process |") >= 40 and doc.count("| SIGKILL") == 3
