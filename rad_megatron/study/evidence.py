"""The probe evidence the strategies read, gathered once per study and cached in the study folder (a resumed study never
probes twice): the per-layer probe (an existing probe.json, or run here), the redundancy heuristics kl / bi /
attn_sim on the same prompts if it lacks them, and a searched set for every k it has not searched."""

from __future__ import annotations

import json
from pathlib import Path

from rad_megatron.errors import RadError
from rad_megatron.probe.report import write_json_atomic
from rad_megatron.files import read_json
from rad_megatron.study.strategies import HEURISTIC, ProbeEvidence


def read_probe_file(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise RadError(f"config.probe.file {path} does not exist; run `rad probe ... --out {path}` first, point it "
                       f"at a probe.json, or leave it empty to probe in the study")
    report = read_json(path, "config.probe.file", "point it at the probe.json `rad probe` wrote")
    if not isinstance(report, dict) or not report.get("per_layer"):
        raise RadError(f"config.probe.file {path} has no per-layer scores; it must be a full `rad probe` report")
    return report


def _prompts(cfg, settings: dict, tok) -> list[list[int]]:
    from rad_megatron.data.prompts import encode_prompts, read_prompts

    source = cfg.probe.prompts or settings.get("prompts")
    if not source:
        raise RadError("config.probe.prompts is empty and the probe file does not name its prompts; give a prompt file")
    return encode_prompts(tok, read_prompts(source, limit=cfg.probe.num_prompts or settings.get("num_prompts") or 4))


def _cached(path: Path, compute, log, what: str, may_compute: bool) -> dict:
    if not path.is_file():
        if not may_compute:
            raise RadError(f"{path} is missing: the study's probe phase has not finished, so there is no report to "
                           f"write yet (--max-runs 0 never probes; run without it)")
        log(f"probe: {what}")
        write_json_atomic(path, compute())
    return json.loads(path.read_text())


def _per_layer(cfg, model, tok, folder: Path, log, probe: bool) -> tuple[dict, str]:
    """(per-layer report, its file): the configured probe.json, or the per-layer phase run here."""
    from rad_megatron.probe.run import probe_per_layer
    from rad_megatron.probe.score import ProbeSettings

    if cfg.probe.file:
        return read_probe_file(cfg.probe.file), str(cfg.probe.file)
    p = cfg.probe
    path = folder / "probe_per_layer.json"

    def compute():
        prompts = _prompts(cfg, {}, tok)
        settings = ProbeSettings(draft_len=p.draft_len, max_new_tokens=p.max_new_tokens, eos_id=tok.eos_token_id)
        report = probe_per_layer(model, prompts, settings, objective=p.objective)
        report["settings"].update(prompts=p.prompts, num_prompts=len(prompts))
        return report

    return _cached(path, compute, log, f"per-layer scores ({model.rad_config.num_layers} layers)", probe), str(path)


def gather_evidence(cfg, model, tok, folder: Path, log=print, probe: bool = True) -> tuple[ProbeEvidence, list[str],
                                                                                          dict]:
    """(evidence, the files it came from, all of it merged into one probe.json-like dict for the report); probe=False
    only reads what earlier invocations cached."""
    from rad_megatron.probe.redundancy import redundancy_scores
    from rad_megatron.probe.run import probe_search

    base, source = _per_layer(cfg, model, tok, folder, log, probe)
    reports, sources = [base], [source]
    s = base["settings"]
    prompts = None
    if any(st in HEURISTIC for st in cfg.strategies) and not base.get("redundancy"):
        prompts = _prompts(cfg, s, tok)
        extra = _cached(folder / "probe_redundancy.json", lambda: {"redundancy": redundancy_scores(
            model, prompts, s.get("max_new_tokens", 32), s.get("eos_id"))}, log, "redundancy heuristics", probe)
        reports.append(extra)
        sources.append(str(folder / "probe_redundancy.json"))
    searches = {}
    for k in sorted(set(cfg.ks)) if "rad" in cfg.strategies else []:
        if k in ProbeEvidence.from_reports(reports).searched:
            continue
        prompts = prompts or _prompts(cfg, s, tok)
        path = folder / f"probe_search_k{k}.json"
        searches[k] = _cached(path, lambda k=k: probe_search(model, prompts, k, cfg.probe.search_trials, base), log,
                              f"searching skip sets of size {k} ({cfg.probe.search_trials} trials)", probe)
        reports.append(searches[k])
        sources.append(str(path))
    merged = {**base, "redundancy": ProbeEvidence.from_reports(reports).to_dict()["heuristics"],
              "searches": {**base.get("searches", {}), **{str(k): v for k, v in searches.items()}}}
    return ProbeEvidence.from_reports(reports), sources, merged
