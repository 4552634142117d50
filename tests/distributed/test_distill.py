"""Distillation with the teacher on its own rank (gloo, CPU): the stream is exact, the TP-aware KL equals the full
one, targeting freezes what it should, kill-and-resume is bit-exact, and bad input fails in one line."""

import json

import pytest
import torch

from tests.helpers import ROOT, RankJob, distill_inputs, rad, tiny_hf_llama, torchrun, wait_until


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = distill_inputs(tmp_path_factory.mktemp("distill"))
    cfg = {
        "model": {"hf": str(d / "hf")}, "swap": {"layers": [1, 2], "init": "rad_zero"},
        "data": {"path": str(d / "data.jsonl"), "seq_len": 48, "held_out": 4},
        "distill": {"teacher": {"hf": str(d / "hf")}, "roles": {"teacher_ranks": 1},
                    "train": {"stages": [{"name": "new", "trainable": "new_mamba", "steps": 8, "lr": 0.003},
                                         {"name": "more", "trainable": "mamba_mlp", "steps": 4, "lr": 0.001}],
                              "micro_batch_size": 2, "grad_accum": 2, "eval_every": 6, "eval_batch_size": 2,
                              "save_every": 6, "stream": {"top_k": 16, "lookahead": 2}}},
    }
    import yaml

    (d / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return d


def _pipeline(d, out, *extra, nproc=2):
    proc = rad("pipeline", "--config", str(d / "cfg.yaml"), "--out", str(out), *extra, nproc=nproc)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(ckpt):
    from rad_megatron.checkpoint.store import load_model

    return {k: v.clone() for k, v in load_model(ckpt).state_dict().items() if not k.endswith("_extra_state")}


def _strip(rows):  # timing fields differ run to run (and a cache reads other bytes than a stream receives)
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "student_wait_s", "bytes_received")}
            for r in rows]


@pytest.fixture(scope="module")
def full(setup):
    """The reference run: two student replicas (DP=2: Megatron's distributed optimizer shards Adam state per
    replica) + one live teacher rank."""
    return _pipeline(setup, setup / "full", nproc=3)


def test_kill_and_resume_is_bit_exact_and_targeting_holds(dist, setup, full):
    d = setup
    _pipeline(d, d / "cut", "--stop-after", "6", nproc=3)
    assert (d / "cut/checkpoints/latest.txt").read_text() == "step_000006"
    assert sorted(p.name for p in (d / "cut/checkpoints/step_000006/train_state").iterdir()) == [
        "rng_tp0_pp0_dp0.pt", "rng_tp0_pp0_dp1.pt"]
    resumed = _pipeline(d, d / "cut", "--resume", nproc=3)
    assert _strip(resumed) == _strip(full)
    # mid-epoch resume at DP=2: every step took the next 8 global samples, none repeated or skipped
    assert [r["samples"] for r in resumed if "samples" in r] == [[8 * i, 8 * i + 8] for i in range(12)]
    a, b = _weights(d / "full/checkpoints/step_000012"), _weights(d / "cut/checkpoints/step_000012")
    assert all(torch.equal(a[k], b[k]) for k in a)

    # targeting: stage 1 trains only the new Mamba layers (2, 4); stage 2 adds their MLPs (3, 5); the rest is frozen
    from rad_megatron.checkpoint.hf_import import model_from_hf
    from rad_megatron.checkpoint.hf_source import HFSource
    from rad_megatron.swap import swap_attention_to_mamba

    orig, _ = model_from_hf(HFSource(d / "hf"))
    start = {k: v for k, v in swap_attention_to_mamba(orig, [1, 2], init="rad_zero", seed=1234).state_dict().items()
             if not k.endswith("_extra_state")}
    six = _weights(d / "full/checkpoints/step_000006")
    trained_stage1 = ("decoder.layers.2.", "decoder.layers.4.")
    trained_stage2 = trained_stage1 + ("decoder.layers.3.", "decoder.layers.5.")
    for k in start:
        if k.startswith(trained_stage1):
            continue
        assert torch.equal(six[k], start[k]), f"{k} moved in stage 1"
    for k in start:
        if k.startswith(trained_stage2):
            continue
        assert torch.equal(a[k], start[k]), f"{k} moved although frozen"
    assert not torch.equal(six["decoder.layers.2.mixer.in_proj.weight"], start["decoder.layers.2.mixer.in_proj.weight"])
    assert not torch.equal(a["decoder.layers.3.mlp.linear_fc1.weight"], six["decoder.layers.3.mlp.linear_fc1.weight"])
    meta = json.loads((d / "full/checkpoints/step_000012/rad_meta.json").read_text())
    assert meta["mamba_init"] == {"1": "rad_zero", "2": "rad_zero"}
    assert (d / "full/loss.png").stat().st_size > 5000 and (d / "full/summary.md").is_file()
    assert any((d / "full/tensorboard").iterdir())


def test_stream_is_bit_exact(setup, tmp_path):
    out = tmp_path / "r.json"
    torchrun(2, ROOT / "tests/distributed/workers/stream_check.py", str(out), str(setup / "hf"))
    res = json.loads(out.read_text())
    assert res["k8"]["equal"] and res["k0"]["equal"]
    assert res["k8"]["bytes"] < res["k0"]["bytes"] / 4, "top-k must send less than the whole vocabulary"


def test_tp_aware_kl_equals_full(tmp_path):
    out = tmp_path / "r.json"
    torchrun(2, ROOT / "tests/distributed/workers/tp_kl.py", str(out))
    res = json.loads(out.read_text())
    for k, r in res.items():
        assert r["diff"] < 1e-5 and r["fkl_diff"] < 1e-6 and r["grad_ok"], (k, r)


def _one_line(proc, text):
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("rad pipeline: error")]
    assert lines and all(text in ln for ln in lines), proc.stderr[-3000:]


def test_bad_input(setup, tmp_path):
    d = setup
    cfg = ["--config", str(d / "cfg.yaml")]
    _one_line(rad("pipeline", *cfg, "distill.roles.teacher_ranks=2", "--out", str(tmp_path / "a"), nproc=2),
              "distill.roles.teacher_ranks=2 needs at least 3 ranks")
    _one_line(rad("pipeline", *cfg, "distill.train.stream.top_k=1000", "--out", str(tmp_path / "b"), nproc=2),
              "top_k=1000 exceeds the vocabulary (128)")
    _one_line(rad("pipeline", *cfg, "distill.train.grad_acum=3", "--out", str(tmp_path / "c"), nproc=1),
              "unknown config key 'config.distill.train.grad_acum' (did you mean 'grad_accum'?)")
    other = tiny_hf_llama(tmp_path / "other", seed=1, num_hidden_layers=2, tie_word_embeddings=False)
    tok = json.loads((other / "tokenizer.json").read_text())
    tok["model"]["vocab"] = {k: (v + 1) % 128 for k, v in tok["model"]["vocab"].items()}
    (other / "tokenizer.json").write_text(json.dumps(tok))
    _one_line(rad("pipeline", *cfg, f"distill.teacher.hf={other}", "--out", str(tmp_path / "e"), nproc=2),
              "teacher and student tokenizers differ")
    # resume with a changed config: refused, and the run folder is untouched
    run = tmp_path / "r"
    _pipeline(d, run, "--stop-after", "6")
    before = (run / "metrics.jsonl").read_text()
    _one_line(rad("pipeline", *cfg, "distill.train.stages.0.lr=0.1", "--out", str(run), "--resume", nproc=2),
              "different distill config")
    assert (run / "metrics.jsonl").read_text() == before


def test_megatron_distributed_optimizer_dp2_equals_one_process(tmp_path):
    """Megatron DDP + distributed optimizer at DP=2 (half the batch per replica) == torch AdamW on the whole batch,
    clipping engaged (clip 0.008 < the gradient norm) and the warmup + cosine LR equal to `lr_at` at every step."""
    out = tmp_path / "r.json"
    torchrun(2, ROOT / "tests/distributed/workers/optim_dp.py", str(out))
    res = json.loads(out.read_text())
    assert res["dp"] == 2 and res["distributed"]
    for norm, ref_norm, lr, ref_lr in res["norms"]:
        assert abs(norm - ref_norm) <= 1e-5 * ref_norm and lr == pytest.approx(ref_lr, rel=1e-12)
    assert max(n[1] for n in res["norms"]) > 0.008, "the clip must engage for this test to cover it"
    assert res["max_diff"] < 1e-6, res


def test_teacher_from_rad_checkpoint_at_tp2_matches_hf_teacher(setup, tmp_path):
    """A teacher saved as a rad checkpoint and run at teacher_tp=2 on its own two ranks serves the same targets as the
    HF teacher at TP=1: identical step-0 held-out numbers (teacher logits differ only by TP rounding, < 1e-5)."""
    d = setup
    for args in (("convert", "--hf", str(d / "hf"), "--out", str(tmp_path / "teacher")),
                 ("swap", "--hf", str(d / "hf"), "--layers", "1,2", "--init", "rad_zero", "--out",
                  str(tmp_path / "student"))):
        proc = rad(*args)
        assert proc.returncode == 0, proc.stderr[-2000:]
    base = ["--config", str(d / "cfg.yaml"), f"model.ckpt={tmp_path / 'student'}", "model.hf=null",
            "distill.train.stages=[{trainable: new_mamba, steps: 2, lr: 0.003}]", "distill.train.eval_every=2"]
    runs = {}
    for name, teacher, nproc in (("hf_tp1", ["distill.teacher.hf=" + str(d / "hf")], 2),
                                 ("ckpt_tp2", [f"distill.teacher.ckpt={tmp_path / 'teacher'}", "distill.teacher.hf=null",
                                               "distill.roles.teacher_ranks=2", "distill.roles.teacher_tp=2"], 3)):
        proc = rad("distill", *base, *teacher, "--out", str(tmp_path / name), nproc=nproc)
        assert proc.returncode == 0, proc.stderr[-4000:]
        runs[name] = [json.loads(ln) for ln in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    a, b = runs["hf_tp1"], runs["ckpt_tp2"]
    assert len(a) == len(b) and [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("heldout_kl", "teacher_ppl", "loss"):
            if key in ra:
                assert abs(ra[key] - rb[key]) <= 1e-5 * max(1.0, abs(ra[key])), (key, ra, rb)


@pytest.fixture(scope="module")
def cache(setup):
    """`rad teacher-cache` on two ranks (two writers, one shard each) for two student replicas."""
    proc = rad("teacher-cache", "--config", str(setup / "cfg.yaml"), "--out", str(setup / "cache"), "--replicas", "2",
               nproc=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    manifest = json.loads((setup / "cache" / "manifest.json").read_text())
    assert manifest["writers"] == 2 and [s["records"] for s in manifest["shards"]] == [48, 48]
    return setup / "cache"


def test_run_from_teacher_cache_equals_live_teacher(setup, full, cache, tmp_path):
    """The same run with no teacher rank and its two student replicas reading the cache: the loss trace and the
    evaluations equal the live run's exactly (steps 1-6; the rest of the run reads the cache the same way)."""
    d = setup
    cached = _pipeline(d, tmp_path / "run", f"distill.teacher.cache={cache}", "--stop-after", "6", nproc=2)
    assert len(cached) == 8 and _strip(cached) == _strip(full[:8])  # steps 0-6 and the evaluation after step 6

    # a cache made for other stream settings is refused before anything is written
    proc = rad("pipeline", "--config", str(d / "cfg.yaml"), "--out", str(tmp_path / "bad"),
               f"distill.teacher.cache={cache}", "distill.train.stream.top_k=8")
    _one_line(proc, f"distill.teacher.cache={cache} was made with top_k=16, this run has top_k=8")
    assert proc.returncode == 2 and not any(p.is_file() for p in (tmp_path / "bad").rglob("*"))


def test_killed_teacher_cache_resumes_to_the_same_files(setup, cache, tmp_path):
    """Both writers SIGKILLed in the middle of their third micro-batch (its records written, their ids not): the
    command refuses to start over without --resume, and `--resume` finishes the very files of an uninterrupted run."""
    shards = json.loads((cache / "manifest.json").read_text())["shards"]
    out, record = tmp_path / "cut", (cache / "shard_000.bin").stat().st_size // shards[0]["records"]
    argv = ["teacher-cache", "--config", setup / "cfg.yaml", "--out", out, "--replicas", "2"]
    job = RankJob(argv, tmp_path / "cut", env={"RAD_FAILPOINT": "teacher-cache-records-written:4"})

    def stopped_inside_the_append(w):  # 6 records written, 4 ids: the hook stopped the writer there
        bin_path, ids_path = out / f"shard_{w:03d}.bin", out / f"shard_{w:03d}.ids"
        return ids_path.is_file() and ids_path.stat().st_size == 4 * 8 and bin_path.stat().st_size == 6 * record

    try:
        wait_until(lambda: all(stopped_inside_the_append(w) for w in range(2)), 300, job,
                   "both writers to stop inside an append")
    finally:
        job.kill_all()
    assert not (out / "manifest.json").exists() and (out / "partial.json").is_file()

    again = rad(*map(str, argv))
    errors = [ln for ln in again.stderr.splitlines() if ": error: " in ln]
    assert again.returncode == 2 and len(errors) == 1, again.stderr[-3000:]
    assert errors[0].startswith(f"rad teacher-cache: error: --out {out} already holds a teacher cache; pass --resume")
    job = RankJob([*argv, "--resume"], tmp_path / "resume")
    for r in range(2):
        assert job.wait(r, 300)[0] == 0, job.logs[r].read_text()[-3000:]
    names = sorted(p.name for p in cache.iterdir())
    assert names == sorted(p.name for p in out.iterdir())
    for name in names:
        assert (out / name).read_bytes() == (cache / name).read_bytes(), name
