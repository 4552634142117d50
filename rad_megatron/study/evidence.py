"""The probe evidence the strategies read, gathered once per study: an existing probe.json, plus what it lacks (a
searched set for another k, per-layer skip KL) measured with the same prompts and settings and cached in the study
folder, so a resumed study never searches twice."""

from __future__ import annotations

import json
from pathlib import Path

from rad_megatron.errors import RadError
from rad_megatron.probe.report import write_json_atomic
from rad_megatron.files import read_json
from rad_megatron.study.strategies import ProbeEvidence


def read_probe_file(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise RadError(f"config.probe.file {path} does not exist; run `rad probe ... --out {path}` first or point it "
                       f"at a probe.json")
    report = read_json(path, "config.probe.file", "point it at the probe.json `rad probe` wrote")
    if not isinstance(report, dict) or not report.get("per_layer"):
        raise RadError(f"config.probe.file {path} has no per-layer scores; it must be a full `rad probe` report")
    return report


def _prompts(cfg, base: dict, tok) -> list[list[int]]:
    from rad_megatron.data.prompts import encode_prompts, read_prompts

    s = base.get("settings", {})
    source = cfg.probe.prompts or s.get("prompts")
    if not source:
        raise RadError("config.probe.prompts is empty and the probe file does not name its prompts; give a prompt file")
    return encode_prompts(tok, read_prompts(source, limit=cfg.probe.num_prompts or s.get("num_prompts")))


def _search(model, prompts, base: dict, k: int, trials: int, tok) -> dict:
    from rad_megatron.probe.score import ProbeSettings
    from rad_megatron.probe.search import Replicas, bayesian_search

    s = base["settings"]
    settings = ProbeSettings(draft_len=s.get("draft_len", 4), max_new_tokens=s.get("max_new_tokens", 32),
                             confidence=s.get("confidence"), eos_id=tok.eos_token_id)
    objective = s.get("objective", "throughput")
    per_layer = sorted(base["per_layer"], key=lambda t: (-t[objective], t["skip"][0]))
    warm = sorted(t["skip"][0] for t in per_layer[:k])  # as run_probe does: the per-layer top-k first
    result = bayesian_search(model, prompts, k, trials, settings, base["costs"], Replicas(), objective=objective,
                             seed=s.get("seed", 0), warm_start=warm)
    return {"settings": {**s, "k": k, "trials": trials}, "trials": [t.to_dict() for t in result.trials],
            "chosen": result.best.to_dict(), "top_k_by_per_layer": warm}


def gather_evidence(cfg, model, tok, folder: Path, log=print) -> tuple[ProbeEvidence, list[str]]:
    """(evidence, the files it came from). Runs a search for each configured k the probe file has not searched, and
    the per-layer skip KL if the file lacks it."""
    from rad_megatron.probe.kl import per_layer_kl

    base = read_probe_file(cfg.probe.file)
    reports, sources = [base], [str(cfg.probe.file)]
    prompts = None
    for k in sorted(set(cfg.ks)):
        if "rad" not in cfg.strategies or k in ProbeEvidence.from_reports(reports).searched:
            continue
        path = folder / f"probe_search_k{k}.json"
        if not path.is_file():
            prompts = prompts or _prompts(cfg, base, tok)
            log(f"probe: searching skip sets of size {k} ({cfg.probe.search_trials} trials)")
            write_json_atomic(path, _search(model, prompts, base, k, cfg.probe.search_trials, tok))
        reports.append(json.loads(path.read_text()))
        sources.append(str(path))
    if "kl" in cfg.strategies and not ProbeEvidence.from_reports(reports).skip_kl:
        path = folder / "probe_skip_kl.json"
        if not path.is_file():
            prompts = prompts or _prompts(cfg, base, tok)
            log("probe: per-layer skip KL")
            write_json_atomic(path, {"per_layer_skip_kl": {str(b): v for b, v in per_layer_kl(model, prompts).items()}})
        reports.append(json.loads(path.read_text()))
        sources.append(str(path))
    return ProbeEvidence.from_reports(reports), sources
