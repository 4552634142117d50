"""Bad input, table-driven, across the commands: each case asserts the exit status, exactly one stderr line that
names the field or file, and that nothing under the test folder was created or changed (a snapshot before and after).

Most cases fail at the door, before any model is loaded, so they run in this process through
`rad_megatron.cli.main(argv)`; the few that need ranks or a shell (SUBPROCESS_CASES) run as `rad` under the launcher
(`python -m rad_megatron.torchrun`) and through launch/run.sh. CASES and SUBPROCESS_CASES are also what
docs/reliability.md is rendered from (tools/render_reliability.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, free_port, tiny_hf_llama

# (command, what is wrong, argv after `rad` ({names} are files the fixture makes), text the one line must hold)
CASES = [
    ("distill", "grad_accum=0", ["distill", "--config", "{cfg}", "distill.train.grad_accum=0", "--out", "{new}"],
     "config.distill.train.grad_accum=0: must be an integer >= 1"),
    ("distill", "lr=abc", ["distill", "--config", "{cfg}", "distill.train.stages.0.lr=abc", "--out", "{new}"],
     "config.distill.train.stages[0].lr='abc': must be a number > 0"),
    ("distill", "micro_batch_size: two (in the YAML file)", ["distill", "--config", "{cfg_two}", "--out", "{new}"],
     "config.distill.train.micro_batch_size='two': must be an integer >= 1"),
    ("distill", "micro_batch_size=-1", ["distill", "--config", "{cfg}", "distill.train.micro_batch_size=-1", "--out",
                                        "{new}"], "config.distill.train.micro_batch_size=-1: must be an integer >= 1"),
    ("distill", "seq_len=0", ["distill", "--config", "{cfg}", "data.seq_len=0", "--out", "{new}"],
     "config.data.seq_len=0: must be an integer >= 1"),
    ("distill", "eval_batch_size=0", ["distill", "--config", "{cfg}", "distill.train.eval_batch_size=0", "--out",
                                      "{new}"], "config.distill.train.eval_batch_size=0: must be an integer >= 1"),
    ("distill", "top_k=-5", ["distill", "--config", "{cfg}", "distill.train.stream.top_k=-5", "--out", "{new}"],
     "config.distill.train.stream.top_k=-5: must be an integer >= 0"),
    ("distill", "temperature=0", ["distill", "--config", "{cfg}", "distill.train.stream.temperature=0", "--out",
                                  "{new}"], "config.distill.train.stream.temperature=0: must be a number > 0"),
    ("distill", "stages.0.steps=-1", ["distill", "--config", "{cfg}", "distill.train.stages.0.steps=-1", "--out",
                                      "{new}"], "config.distill.train.stages[0].steps=-1: must be an integer >= 1"),
    ("distill", "no stages", ["distill", "--config", "{cfg}", "distill.train.stages=[]", "--out", "{new}"],
     "config.distill.train.stages=[]: must be a non-empty list"),
    ("distill", "trainable=everything", ["distill", "--config", "{cfg}", "distill.train.stages.0.trainable=everything",
                                         "--out", "{new}"],
     "config.distill.train.stages[0].trainable='everything': must be one of new_mamba, all_mamba, mamba_mlp, all"),
    ("distill", "betas=[0.9, 1.5]", ["distill", "--config", "{cfg}", "distill.train.optim.betas=[0.9, 1.5]", "--out",
                                     "{new}"],
     "config.distill.train.optim.betas[1]=1.5: must be a number >= 0 and < 1"),
    ("distill", "loss.fkl=-1", ["distill", "--config", "{cfg}", "distill.train.loss.fkl=-1", "--out", "{new}"],
     "config.distill.train.loss.fkl=-1: must be a number >= 0"),
    ("distill", "stream.timeout_s=0", ["distill", "--config", "{cfg}", "distill.train.stream.timeout_s=0", "--out",
                                       "{new}"], "config.distill.train.stream.timeout_s=0: must be a number > 0"),
    ("distill", "skip_nonfinite=-1", ["distill", "--config", "{cfg}", "distill.train.skip_nonfinite=-1", "--out",
                                      "{new}"], "config.distill.train.skip_nonfinite=-1: must be an integer >= 0"),
    ("distill", "teacher_tp=0", ["distill", "--config", "{cfg}", "distill.roles.teacher_tp=0", "--out", "{new}"],
     "config.distill.roles.teacher_tp=0: must be an integer >= 1"),
    ("distill", "stream.dtype=fp16", ["distill", "--config", "{cfg}", "distill.train.stream.dtype=fp16", "--out",
                                      "{new}"], "config.distill.train.stream.dtype='fp16': must be one of fp32, bf16"),
    ("distill", "roles.student_pp=2 (pipeline stages belong in system.*)",
     ["distill", "--config", "{cfg}", "distill.roles.student_pp=2", "--out", "{new}"],
     "distill.roles.student_pp=2 differs from system.student_pp=1; pipeline stages are set in system.student_pp"),
    ("distill", "data.format=xml", ["distill", "--config", "{cfg}", "data.format=xml", "--out", "{new}"],
     "config.data.format='xml': must be one of auto, chat, text"),
    ("distill", "max_examples=0", ["distill", "--config", "{cfg}", "data.max_examples=0", "--out", "{new}"],
     "config.data.max_examples=0: must be an integer >= 1, or null"),
    ("distill", "system.precision=fp8", ["distill", "--config", "{cfg}", "system.precision=fp8", "--out", "{new}"],
     "config.system.precision='fp8': must be one of fp32, bf16"),
    ("distill", "key typo grad_acum", ["distill", "--config", "{cfg}", "distill.train.grad_acum=2", "--out", "{new}"],
     "unknown config key 'config.distill.train.grad_acum' (did you mean 'grad_accum'?)"),
    ("distill", "override without '='", ["distill", "--config", "{cfg}", "distill.train.grad_accum", "--out", "{new}"],
     "override 'distill.train.grad_accum' must look like section.key=value"),
    ("distill", "YAML syntax error", ["distill", "--config", "{yaml_bad}", "--out", "{new}"],
     "config file {yaml_bad} is not valid YAML at line 3, column 4"),
    ("distill", "config file missing", ["distill", "--config", "{dir}/nope.yaml", "--out", "{new}"],
     "config file {dir}/nope.yaml does not exist"),
    ("distill", "an existing run, no --resume/--force", ["distill", "--config", "{cfg}", "--out", "{run}"],
     "run folder '{run}' already holds files; pass --resume to continue its run, --force to move it aside"),
    ("distill", "--resume without a checkpoint", ["distill", "--config", "{cfg}", "--out", "{run}", "--resume"],
     "--resume: '{run}' holds no checkpoint"),
    ("distill", "--resume and --force", ["distill", "--config", "{cfg}", "--out", "{run}", "--resume", "--force"],
     "--resume continues the run in the output folder and --force moves it aside; give one of them"),
    ("pipeline", "an existing run", ["pipeline", "--config", "{cfg}", "--out", "{run}"],
     "run folder '{run}' already holds files"),
    ("pipeline", "swap.init=mill", ["pipeline", "--config", "{cfg}", "swap.init=mill", "--out", "{new}"],
     "config.swap.init='mill': must be one of mil, rad_zero, random (did you mean 'mil'?)"),
    ("pipeline", "probe.k=0", ["pipeline", "--config", "{cfg}", "probe.k=0", "--out", "{new}"],
     "config.probe.k=0: must be an integer >= 1"),
    ("pipeline", "swap.layers=[1,-2]", ["pipeline", "--config", "{cfg}", "swap.layers=[1,-2]", "--out", "{new}"],
     "config.swap.layers[1]=-2: must be an integer >= 0"),
    ("distill", "data.blend weight 0", ["distill", "--config", "{cfg}", "data.path=''",
                                        "data.blend=[{{path: '{dir}/data.jsonl', weight: 0}}]", "--out", "{new}"],
     "data.blend[0].weight=0 (source {dir}/data.jsonl) must be a number > 0"),
    ("distill", "teacher cache without manifest.json",
     ["distill", "--config", "{cfg}", "distill.teacher.cache={cache_nomanifest}", "--out", "{new}"],
     "teacher cache {cache_nomanifest}: no manifest.json there (not a teacher cache); make one with rad teacher-cache"),
    ("distill", "teacher cache with a truncated shard",
     ["distill", "--config", "{cfg}", "distill.teacher.cache={cache_truncated}", "--out", "{new}"],
     "teacher cache shard {cache_truncated}/shard_000.bin is 100 bytes, manifest.json says"),
    ("distill", "teacher cache of another top_k",
     ["distill", "--config", "{cfg}", "distill.teacher.cache={cache_k8}", "--out", "{new}"],
     "distill.teacher.cache={cache_k8} was made with top_k=8, this run has top_k=64"),
    ("pipeline", "teacher cache of another tokenizer",
     ["pipeline", "--config", "{cfg}", "distill.teacher.cache={cache_tok}", "--out", "{new}"],
     "distill.teacher.cache={cache_tok} was made with tokenizer='0123456789abcdef'"),
    ("distill", "teacher cache of other data",
     ["distill", "--config", "{cfg}", "distill.teacher.cache={cache_data}", "--out", "{new}"],
     "distill.teacher.cache={cache_data} was made with data='other-data'"),
    ("probe", "--out not .json", ["probe", "--hf", "{hf}", "--prompts", "{prompts}", "--out", "{dir}/p.txt"],
     "--out {dir}/p.txt: give a .json path"),
    ("probe", "prompt file missing", ["probe", "--hf", "{hf}", "--prompts", "{dir}/none.jsonl", "--out", "{new}.json"],
     "--prompts {dir}/none.jsonl: no such file"),
    ("probe", "prompt file line not JSON", ["probe", "--hf", "{hf}", "--prompts", "{jsonl_bad}", "--out",
                                            "{new}.json"], "--prompts {jsonl_bad}: line 2 is not JSON"),
    ("swap", "--layers a,b", ["swap", "--hf", "{hf}", "--layers", "a,b", "--out", "{new}"],
     "--layers 'a,b' must be comma-separated layer indices"),
    ("swap", "--strategy rad without --probe", ["swap", "--hf", "{hf}", "--strategy", "rad", "--k", "1", "--out",
                                                "{new}"], "--strategy rad needs --probe PROBE.json"),
    ("swap", "--probe file not JSON", ["swap", "--hf", "{hf}", "--strategy", "rad", "--k", "1", "--probe",
                                       "{probe_bad}", "--out", "{new}"], "--probe '{probe_bad}' is not valid JSON"),
    ("swap", "--out not empty", ["swap", "--hf", "{hf}", "--layers", "1", "--out", "{run}"],
     "refusing to overwrite non-empty '{run}'"),
    ("convert", "truncated rad_meta.json", ["convert", "--ckpt", "{ckpt_meta}", "--out", "{new}"],
     "checkpoint file '{ckpt_meta}/rad_meta.json' is corrupt (not JSON"),
    ("convert", "truncated .distcp shard", ["convert", "--ckpt", "{ckpt_shard}", "--to", "hf", "--out", "{new}"],
     "checkpoint shard '{ckpt_shard}/__0_0.distcp' is truncated"),
    ("convert", "no .metadata", ["convert", "--ckpt", "{ckpt_index}", "--out", "{new}"],
     "checkpoint '{ckpt_index}' is incomplete: '.metadata' is missing"),
    ("convert", "not a GGUF file named *.gguf", ["convert", "--hf", "{gguf}", "--out", "{new}"],
     "--hf {gguf}: not a GGUF file"),
    ("convert", "--hf missing", ["convert", "--hf", "{dir}/none", "--out", "{new}"], "--hf {dir}/none: no such file"),
    ("convert", "--tp 0", ["convert", "--hf", "{hf}", "--tp", "0", "--out", "{new}"], "--tp and --pp must be >= 1"),
    ("convert", "--to without --ckpt", ["convert", "--hf", "{hf}", "--to", "hf", "--out", "{new}"],
     "--to exports a rad_megatron checkpoint: give it with --ckpt"),
    ("convert", "--to hf-hybrid, a layout GraniteMoeHybrid cannot express",
     ["convert", "--ckpt", "{ckpt_eps}", "--to", "hf-hybrid", "--out", "{new}"],
     "--to hf-hybrid: GraniteMoeHybrid cannot express this model exactly (rms_norm_eps=1e-06"),
    ("generate", "--draft-len 0", ["generate", "--hf", "{hf}", "--speculative", "--skip", "1", "--draft-len", "0"],
     "--draft-len 0: the draft length must be >= 1"),
    ("generate", "a draft model with another tokenizer", ["generate", "--hf", "{hf}", "--speculative", "--draft-hf",
                                                          "{hf_vocab100}", "--max-new-tokens", "2"],
     "draft model '{hf_vocab100}' has another tokenizer (100 tokens"),
    ("eval", "--limit 0", ["eval", "--hf", "{hf}", "--limit", "0", "--out", "{new}.json"],
     "--limit 0: give a positive number of documents per task"),
    ("eval", "--out exists", ["eval", "--hf", "{hf}", "--out", "{eval_out}"], "refusing to overwrite '{eval_out}'"),
    ("eval", "--tasks empty", ["eval", "--hf", "{hf}", "--tasks", ",", "--out", "{new}.json"], "--tasks is empty"),
    ("plan", "--nodes 0", ["plan", "{cfg}", "--nodes", "0"], "--nodes=0: must be an integer >= 1"),
    ("plan", "--mfu 1.5", ["plan", "{cfg}", "--mfu", "1.5"], "--mfu=1.5: must be a number > 0 and <= 1"),
    ("plan", "--gpu-mem-gib abc", ["plan", "{cfg}", "--gpu-mem-gib", "abc"],
     "argument --gpu-mem-gib: invalid float value: 'abc'"),
    ("plan", "grad_accum=0 in the plan's config", ["plan", "{cfg}", "distill.train.grad_accum=0"],
     "config.distill.train.grad_accum=0: must be an integer >= 1"),
    ("study", "ks=[0]", ["study", "--config", "{study}", "ks=[0]", "--out", "{new}"],
     "config.ks[0]=0: must be an integer >= 1"),
    ("study", "strategies without a baseline", ["study", "--config", "{study}", "strategies=[rad]", "--out", "{new}"],
     "config.strategies must include 'rad' and at least one baseline"),
    ("study", "probe.objective=speed", ["study", "--config", "{study}", "probe.objective=speed", "--out", "{new}"],
     "config.probe.objective='speed': must be one of throughput, expected_throughput, tokens_per_s, acceptance"),
    ("study", "train.lr_sweep with a negative LR",
     ["study", "--config", "{study}", "train.lr_sweep={{mil: [1.0e-3, -1]}}", "--out", "{new}"],
     "config.train.lr_sweep.mil[1]=-1: must be a number > 0"),
    ("study", "train.lr_sweep without an init", ["study", "--config", "{study}", "inits=[mil, rad_zero]",
                                                 "train.lr_sweep={{mil: [1.0e-3]}}", "--out", "{new}"],
     "config.train.lr_sweep: no learning rates for init rad_zero; give a non-empty list for every init"),
    ("study", "bootstrap=1", ["study", "--config", "{study}", "bootstrap=1", "--out", "{new}"],
     "config.bootstrap=1: must be an integer >= 10"),
    ("study", "train.lr=-1", ["study", "--config", "{study}", "train.lr=-1", "--out", "{new}"],
     "config.train.lr=-1: must be a number > 0"),
    ("study", "train.optim.eps=0", ["study", "--config", "{study}", "train.optim.eps=0", "--out", "{new}"],
     "config.train.optim.eps=0: must be a number > 0"),
    ("study", "--max-runs -1", ["study", "--config", "{study}", "--max-runs", "-1", "--out", "{new}"],
     "--max-runs -1 must be >= 0"),
    ("study", "--restore a report that is not there",
     ["study", "--config", "{study}", "--restore", "{dir}/nowhere", "--out", "{new}"],
     "--restore {dir}/nowhere: {dir}/nowhere.jsonl does not exist; give a report's path without the suffix"),
    ("study", "--restore a report made with other settings",
     ["study", "--config", "{study}", "--restore", "{dir}/report", "--out", "{new}"],
     "run rad-k1-mil-s0-lr1e-03 has 1 training steps (the config has train.steps=40); it was made with other settings"),
]
# (where, what is wrong, argv, the line's text, exit status): through the launcher with ranks, or launch/run.sh
SUBPROCESS_CASES = [
    ("distill (2 ranks)", "a malformed line in the training jsonl",
     ["distill", "--config", "{cfg}", "data.path={jsonl_bad}", "--out", "{new}"],
     "rad distill: error: data.path {jsonl_bad}: line 2 is not valid JSON", 2),
    ("launch/run.sh", "a bad value, through torchrun", ["distill", "{cfg}", "distill.train.grad_accum=0",
                                                        "--out", "{new}"],
     "rad distill: error: config.distill.train.grad_accum=0: must be an integer >= 1", 2),
    ("launch/run.sh", "an unknown rendezvous backend", ["--dry-run", "verify"],
     "run.sh: error: RDZV_BACKEND=tcp must be c10d or static", 2),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every input the cases point at, good and broken, in one folder that the cases must leave as it is."""
    from rad_megatron.cli import main

    d = tmp_path_factory.mktemp("bad_input")
    tiny_hf_llama(d / "hf", seed=0, num_hidden_layers=2, tie_word_embeddings=False)
    tiny_hf_llama(d / "hf_vocab100", seed=1, num_hidden_layers=2, vocab_size=100)
    tiny_hf_llama(d / "hf_eps", seed=2, num_hidden_layers=2, rms_norm_eps=1e-6)
    rows = [{"question": f"what is {i} plus {i}?", "answer": f"{2 * i}."} for i in range(12)]
    (d / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (d / "bad.jsonl").write_text(json.dumps(rows[0]) + "\n{\"question\": \"oops\"\n" + json.dumps(rows[1]) + "\n")
    cfg = {"model": {"hf": str(d / "hf")}, "swap": {"layers": [1]},
           "data": {"path": str(d / "data.jsonl"), "seq_len": 32, "held_out": 2},
           "distill": {"teacher": {"hf": str(d / "hf")}, "roles": {"teacher_ranks": 1},
                       "train": {"stages": [{"steps": 2, "lr": 0.001}], "micro_batch_size": 1}}}
    (d / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    (d / "cfg_two.yaml").write_text(f"base: cfg.yaml\ndistill: {{train: {{micro_batch_size: two}}}}\n")
    (d / "broken.yaml").write_text("distill:\n  train: [grad_accum: 2\nout: x\n")
    (d / "study.yaml").write_text(f"model: {{hf: {d / 'hf'}}}\nks: [1]\nseeds: [0]\n")
    (d / "run").mkdir()
    (d / "run" / "metrics.jsonl").write_text('{"step": 0}\n')
    (d / "not.gguf").write_text("this is a text file, not GGUF\n")
    (d / "probe_bad.json").write_text('{"per_layer": [')
    (d / "eval_out.json").write_text("{}")
    (d / "report.jsonl").write_text('{"run": "rad-k1-mil-s0-lr1e-03", "kind": "train", "step": 1, "tokens": 64}\n')
    assert main(["convert", "--hf", str(d / "hf"), "--out", str(d / "ckpt")]) == 0
    assert main(["swap", "--hf", str(d / "hf_eps"), "--layers", "1", "--out", str(d / "ckpt_eps")]) == 0
    for name in ("ckpt_meta", "ckpt_shard", "ckpt_index"):
        shutil.copytree(d / "ckpt", d / name)
    (d / "ckpt_meta" / "rad_meta.json").write_text((d / "ckpt" / "rad_meta.json").read_text()[:50])
    shard = d / "ckpt_shard" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:1000])
    (d / "ckpt_index" / ".metadata").unlink()
    return {**_teacher_caches(d, hf=d / "hf"), "dir": str(d), "cfg": str(d / "cfg.yaml"),
            "cfg_two": str(d / "cfg_two.yaml"), "hf": str(d / "hf"),
            "yaml_bad": str(d / "broken.yaml"), "run": str(d / "run"), "new": str(d / "new_out"),
            "prompts": str(d / "data.jsonl"), "jsonl_bad": str(d / "bad.jsonl"), "probe_bad": str(d / "probe_bad.json"),
            "ckpt_meta": str(d / "ckpt_meta"), "ckpt_shard": str(d / "ckpt_shard"), "ckpt_index": str(d / "ckpt_index"),
            "gguf": str(d / "not.gguf"), "eval_out": str(d / "eval_out.json"), "study": str(d / "study.yaml"),
            "hf_vocab100": str(d / "hf_vocab100"), "ckpt_eps": str(d / "ckpt_eps")}


def _teacher_caches(d: Path, hf: Path) -> dict:
    """Offline teacher caches (manifest + shard files, records zero: refused before any is read) that do not fit the
    fixture's run: made for top_k 8, for another tokenizer, for other data; one truncated, one without a manifest."""
    from transformers import AutoTokenizer

    from rad_megatron.data.loader import tokenizer_fingerprint
    from rad_megatron.distill.cache_store import FORMAT, record_dtype

    ours = tokenizer_fingerprint(AutoTokenizer.from_pretrained(hf))
    kinds = {"cache_k8": {"top_k": 8}, "cache_tok": {"tokenizer": "0123456789abcdef"}, "cache_data": {},
             "cache_truncated": {}, "cache_nomanifest": {}}
    for name, fields in kinds.items():
        m = {"format": FORMAT, "teacher": "hf:x", "tokenizer": ours, "data": "other-data", "top_k": 64,
             "temperature": 1.0, "dtype": "float32", "index_dtype": "uint16", "seq_len": 32, "micro_batch_size": 1,
             "writers": 1, "samples": 2, "eval_batch_size": 0, "eval_batches": 0, **fields}
        m["shards"] = [{"file": "shard_000.bin", "records": 2}]
        (d / name).mkdir()
        size = record_dtype(32, m["top_k"], "float32", "uint16").itemsize * 2
        (d / name / "shard_000.bin").write_bytes(bytes(100 if name == "cache_truncated" else size))
        (d / name / "shard_000.ids").write_bytes(bytes(16))
        if name != "cache_nomanifest":
            (d / name / "manifest.json").write_text(json.dumps(m))
    return {name: str(d / name) for name in kinds}


def snapshot(folder: str) -> dict:
    return {str(p.relative_to(folder)): (p.is_dir(), None if p.is_dir() else p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(Path(folder).rglob("*"))}


def _fill(items, files):
    return [s.format(**files) for s in items]


def test_there_are_enough_distinct_cases():
    commands = {c[0] for c in CASES} | {c[0].split(" ")[0] for c in SUBPROCESS_CASES}
    assert len({(c[0], c[1]) for c in CASES + SUBPROCESS_CASES}) == len(CASES) + len(SUBPROCESS_CASES) >= 40
    assert {"distill", "pipeline", "probe", "swap", "convert", "eval", "plan", "study", "generate",
            "launch/run.sh"} <= commands


@pytest.mark.parametrize("command, what, argv, text", CASES, ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_bad_input_in_process(files, capsys, command, what, argv, text):
    from rad_megatron.cli import main

    before = snapshot(files["dir"])
    capsys.readouterr()
    try:
        status = main(_fill(argv, files))
    except SystemExit as e:  # argparse's usage errors
        status = e.code
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert status == 2, (status, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith(f"rad {command}: error: "), err[-2000:]
    assert text.format(**files) in lines[0], lines[0]
    assert snapshot(files["dir"]) == before, "a bad input changed the folder"


def _run_subprocess(case, files) -> subprocess.CompletedProcess:
    where, _, argv, _, _ = case
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if where == "launch/run.sh":
        env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "NPROC_PER_NODE": "1",
               "MASTER_PORT": str(free_port()), **({"RDZV_BACKEND": "tcp"} if argv[0] == "--dry-run" else {})}
        cmd = ["bash", str(ROOT / "launch" / "run.sh"), *_fill(argv, files)]
    else:
        cmd = [sys.executable, "-m", "rad_megatron.torchrun", "--nproc-per-node=2", f"--master-port={free_port()}",
               "-m", "rad_megatron", *_fill(argv, files)]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("case", SUBPROCESS_CASES, ids=[f"{c[0]}: {c[1]}" for c in SUBPROCESS_CASES])
def test_bad_input_under_the_launcher(files, case):
    """The launcher exits with the rank's status after the rank's line; with two ranks each prints the same line."""
    before = snapshot(files["dir"])
    proc = _run_subprocess(case, files)
    _, _, _, text, status = case
    lines = proc.stderr.splitlines()
    assert proc.returncode == status, proc.stderr[-3000:]
    assert lines and len(set(lines)) == 1 and lines[0].startswith(text.format(**files)), proc.stderr[-3000:]
    assert snapshot(files["dir"]) == before, "a bad input changed the folder"
