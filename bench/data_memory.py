"""Does a rank's memory stay flat as the corpus grows, and is the loader far ahead of the student?

Builds two synthetic text corpora, one 10x the other (tokenised once with SmolLM2's tokenizer into Megatron indexed
datasets, data.corpus), then measures, side by side in one run:
  * peak RSS per rank: two data-parallel ranks (fresh processes) stream the same number of packed sequences of
    their replica's slice of the global order; small and large corpus alternate (A, B, A, B), and the ratio of the
    large corpus' peak to the small one's is printed (goal: ~1.0);
  * loader tokens/s next to what one student step consumes (SmolLM2-135M-Instruct with 4 attention layers swapped
    to Mamba, forward + backward + AdamW at micro-batch 1 x seq_len, targets in memory), interleaved block by
    block; the ratio is printed (goal >= 20x).

    python bench/data_memory.py [--mb 2] [--seq 256] [--samples 3000]
Wall-clock numbers on a shared machine move with its load; the ratios are measured side by side.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORDS = ("the state space model reads every token once and keeps a summary of what it has seen so far while "
         "attention looks back at all previous tokens which costs memory that grows with the context").split()


def _args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=2.0, help="size of the small corpus in MB of text (large = 10x)")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--samples", type=int, default=3000, help="packed sequences each rank streams")
    ap.add_argument("--work", default="runs/bench_data_memory")
    ap.add_argument("--stream", default=None, help=argparse.SUPPRESS)  # child mode: corpus file to stream
    ap.add_argument("--replica", type=int, default=0, help=argparse.SUPPRESS)
    return ap.parse_args()


def _write_corpus(path: Path, megabytes: float, seed: int):
    import numpy as np

    if path.is_file():
        return
    rng, chunks, size = np.random.RandomState(seed), [], 0
    while size < megabytes * 1e6:
        para = " ".join(rng.choice(WORDS, rng.randint(20, 400)))
        chunks.append(para)
        size += len(para) + 2
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n\n".join(chunks) + "\n")
    tmp.replace(path)


def _config(a, corpus: Path):
    from rad_megatron.data.datasets import DataConfig

    return DataConfig(path=str(corpus), seq_len=a.seq, held_out=8, cache_dir=str(Path(a.work) / "cache"),
                      num_proc=2)


def _tokenizer():
    from transformers import AutoTokenizer

    from rad_megatron.checkpoint.hf_source import resolve

    return AutoTokenizer.from_pretrained(resolve(None).folder)


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def child(a):
    """One data-parallel rank (replica a.replica of 2) streaming its slices of a.samples global samples.
    The peak is taken over the data work only: after the imports (Megatron's dataset modules included) and the
    tokenizer, the kernel's high-water mark (VmHWM) is reset (/proc/self/clear_refs), then the corpus is opened and
    streamed."""
    from rad_megatron.data.loader import TrainData
    from rad_megatron.distill.schedule import replica_slice

    from megatron.core.datasets import helpers, indexed_dataset  # noqa: F401 - imported before the window

    tok = _tokenizer()
    base, anon, file = _status_mb("VmRSS"), _status_mb("RssAnon"), _status_mb("RssFile")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    data = TrainData(_config(a, Path(a.stream)), tok)
    sampler, mbs, dp, tokens = data.sampler(), 8, 2, 0
    t0 = time.perf_counter()
    for _ in range(a.samples // (mbs * dp)):
        b = data.batch(replica_slice(sampler.take(mbs * dp), a.replica, 0, dp, mbs))
        tokens += b["input_ids"].numel()
    dt = time.perf_counter() - t0
    print(json.dumps({"base_rss_mb": base, "peak_rss_mb": _status_mb("VmHWM"), "tokens_per_s": tokens / dt,
                      "anon_mb": _status_mb("RssAnon") - anon, "file_mb": _status_mb("RssFile") - file,
                      "corpus_tokens": sum(s.corpus.meta["tokens"] for s in data.sources)}))


def _ranks(a, corpus: Path) -> list[dict]:
    procs = [subprocess.Popen([sys.executable, __file__, "--stream", str(corpus), "--replica", str(r), "--seq",
                               str(a.seq), "--samples", str(a.samples), "--work", a.work, "--mb", str(a.mb)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for r in range(2)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate()
        if p.returncode:
            raise SystemExit(stderr[-3000:])
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def _student_vs_loader(a, corpus: Path, rounds: int = 3):
    """Median student tokens/s and loader tokens/s, measured in alternating blocks in this process."""
    import torch

    torch.set_num_threads(1)  # one thread per rank, as a 2-rank job on 2 cores runs
    from rad_megatron.checkpoint.hf_import import model_from_hf
    from rad_megatron.checkpoint.hf_source import resolve
    from rad_megatron.data.loader import TrainData
    from rad_megatron.distill.losses import LossWeights, distill_loss
    from rad_megatron.distill.targeting import apply_targeting
    from rad_megatron.distributed import ParallelConfig, init_distributed
    from rad_megatron.model.forward import forward_logits
    from rad_megatron.swap import swap_attention_to_mamba

    init_distributed(ParallelConfig(tp=1))
    data = TrainData(_config(a, corpus), _tokenizer())
    model, cfg = model_from_hf(resolve(None))
    layers = [5, 11, 17, 23]
    model = swap_attention_to_mamba(model, layers, init="rad_zero")
    opt = torch.optim.AdamW(apply_targeting(model, "new_mamba", layers), lr=1e-4)
    V, k = cfg.vocab_size, 64
    vals, idx = torch.randn(1, a.seq, k).log_softmax(-1), torch.randint(0, V, (1, a.seq, k))
    sampler, student, loader = data.sampler(), [], []
    for r in range(rounds + 1):
        b = data.batch(sampler.take(1))
        t0 = time.perf_counter()
        logits = forward_logits(model, b["input_ids"], gather=False, seq_idx=b["seq_idx"])
        loss, _ = distill_loss(logits, vals, idx, b["labels"], b["loss_mask"], LossWeights(), None, 0, V)
        opt.zero_grad()
        loss.backward()
        opt.step()
        t_step = time.perf_counter() - t0
        t0 = time.perf_counter()
        n = 0
        for _ in range(50):
            n += data.batch(sampler.take(1))["input_ids"].numel()
        t_load = time.perf_counter() - t0
        if r:  # the first round warms up
            student.append(a.seq / t_step)
            loader.append(n / t_load)
    return statistics.median(student), statistics.median(loader)


def main():
    a = _args()
    if a.stream:
        return child(a)
    import warnings

    warnings.filterwarnings("ignore")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    small, large = work / "small.txt", work / "large.txt"
    _write_corpus(small, a.mb, 0)
    _write_corpus(large, 10 * a.mb, 1)
    from rad_megatron.data.loader import TrainData

    tok = _tokenizer()
    for corpus in (small, large):  # tokenise once (not measured)
        TrainData(_config(a, corpus), tok)
    runs, tokens = {"small": [], "large": []}, {}
    for _ in range(2):
        for name, corpus in (("small", small), ("large", large)):
            runs[name] += _ranks(a, corpus)
            tokens[name] = runs[name][0]["corpus_tokens"]

    def worst(name, key):
        return max(r[key] if key != "growth" else r["peak_rss_mb"] - r["base_rss_mb"] for r in runs[name])

    p_small, p_large = worst("small", "peak_rss_mb"), worst("large", "peak_rss_mb")
    student, loader = _student_vs_loader(a, large)
    print(f"corpora: small {tokens['small']:,} tokens, large {tokens['large']:,} tokens "
          f"({tokens['large'] / tokens['small']:.1f}x); seq_len {a.seq}; each of 2 DP ranks streams "
          f"{a.samples // 2} sequences of its slice; runs interleaved small, large, small, large")
    print(f"peak RSS per rank while opening and streaming: small corpus {p_small:.1f} MB, large corpus "
          f"{p_large:.1f} MB; ratio large / small = {p_large / p_small:.3f}")
    print(f"of which the data work added over the process after its imports (max over ranks and runs): small "
          f"{worst('small', 'growth'):.1f} MB, large {worst('large', 'growth'):.1f} MB; at the end of streaming, "
          f"private memory +{worst('small', 'anon_mb'):.1f} / +{worst('large', 'anon_mb'):.1f} MB and mapped corpus "
          f"pages +{worst('small', 'file_mb'):.1f} / +{worst('large', 'file_mb'):.1f} MB (clean file pages the kernel "
          f"reclaims at will; they grow with the sequences read, at most a page or two each, not with the corpus)")
    print(f"loader {loader:,.0f} tokens/s vs student step {student:,.0f} tokens/s (SmolLM2-135M, 4 Mamba layers, "
          f"micro-batch 1 x {a.seq}, fwd + bwd + AdamW; medians of interleaved blocks): loader / student = "
          f"{loader / student:.0f}x")


if __name__ == "__main__":
    raise SystemExit(main())
