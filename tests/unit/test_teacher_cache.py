"""The offline teacher cache (world of one; the multi-rank command and a whole cached run are in
tests/distributed/test_distill.py): cached targets are bit-identical to what the live stream sends for the same
micro-batches (training, by (step, micro) at DP=2 and after a resume, and held-out); an interrupted cache resumes to
the same files; the library API serves arbitrary batches by sample id; bad caches are refused in one line."""

import json
import shutil

import numpy as np
import pytest
import torch

from rad_megatron.config import ModelConfig
from rad_megatron.data.datasets import DataConfig
from rad_megatron.data.loader import TrainData, tokenizer_fingerprint
from rad_megatron.distill.cache_store import CachedTargets, TeacherCache
from rad_megatron.distill.schedule import EVAL_MICRO, replica_slice
from rad_megatron.distill.stream import StreamConfig, teacher_targets
from rad_megatron.distill.targeting import Stage
from rad_megatron.distill.teacher_cache import CacheJob, held_out_batches, write_targets, write_teacher_cache
from rad_megatron.distill.trainer import TrainConfig
from rad_megatron.errors import RadError
from rad_megatron.model import build_model
from tests.helpers import tiny_tokenizer

TOK = tiny_tokenizer()
DP, GA, MBS, STEPS = 2, 2, 2, 3
G = DP * GA * MBS


@pytest.fixture(scope="module")
def world(dist, tmp_path_factory):
    d = tmp_path_factory.mktemp("tcache")
    rng = np.random.RandomState(1)
    words = ["one", "two", "three", "four", "five", "six"]
    (d / "text.txt").write_text("\n\n".join(" ".join(rng.choice(words, rng.randint(3, 25))) for _ in range(50)))
    data = TrainData(DataConfig(path=str(d / "text.txt"), seq_len=24, held_out=5, cache_dir=str(d / "dc")), TOK)
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=2,
                                    num_attention_heads=4, num_kv_heads=2, layout=["attention", "mamba"])).eval()
    cfg = TrainConfig(stages=[Stage(steps=STEPS)], micro_batch_size=MBS, grad_accum=GA, eval_batch_size=2,
                      stream=StreamConfig(top_k=8))
    job = CacheJob(out=d / "cache", replicas=DP)
    write_teacher_cache(dist, model, data, cfg, "teacher-x", tokenizer_fingerprint(TOK), job)
    return {"dir": d, "data": data, "model": model, "cfg": cfg, "cache": TeacherCache(d / "cache")}


def _live(w, batch, seq_idx=True):
    return teacher_targets(w["model"], batch["input_ids"], batch["labels"], batch["loss_mask"], w["cfg"].stream,
                           seq_idx=batch["seq_idx"] if seq_idx else None)


def _same(cached, live):
    (cv, ci, cn, ct), (lv, li, ln, lt) = cached, live
    return torch.equal(cv, lv) and torch.equal(ci, li.long()) and cn == ln and ct == lt


def test_cached_targets_are_bit_identical_to_the_live_stream(world):
    w = world
    assert w["cache"].manifest["samples"] == STEPS * G and w["cache"].manifest["writers"] == 1
    for replica in range(DP):
        fresh = CachedTargets(w["cache"], replica, DP, GA, MBS, first_step=1, first_sample=0)
        resumed = CachedTargets(w["cache"], replica, DP, GA, MBS, first_step=3, first_sample=2 * G)
        for step in range(1, STEPS + 1):
            ids = list(range((step - 1) * G, step * G))
            for micro in range(GA):
                b = w["data"].batch(replica_slice(ids, replica, micro, DP, MBS))
                got = fresh.receive(step, micro, b["input_ids"])
                assert _same(got, _live(w, b)), (replica, step, micro)
                if step == 3:
                    assert _same(resumed.receive(step, micro, b["input_ids"]), got)
    held = held_out_batches(w["data"].held, 2)
    assert len(held) == 3
    for i, b in enumerate(held):
        assert _same(fresh.receive(STEPS, EVAL_MICRO + i, b["input_ids"]), _live(w, b, seq_idx=False))
    b = w["data"].batch([0, 1])
    with pytest.raises(RadError, match="computed for other tokens"):
        fresh.receive(1, 0, b["input_ids"].flip(0))


def test_interrupted_cache_resumes_to_the_same_files(world, dist):
    w, out = world, world["dir"] / "cut"
    write_teacher_cache(dist, w["model"], w["data"], w["cfg"], "teacher-x", tokenizer_fingerprint(TOK),
                        CacheJob(out=out, replicas=DP, stop_after=2))
    assert not (out / "manifest.json").exists() and (out / "partial.json").exists()
    with pytest.raises(RadError, match="is incomplete .* --resume"):
        TeacherCache(out)
    with open(out / "shard_000.bin", "ab") as f:  # killed in the middle of a record
        f.write(b"\0" * 1000)
    with pytest.raises(RadError, match="already holds a teacher cache; pass --resume"):
        write_teacher_cache(dist, w["model"], w["data"], w["cfg"], "teacher-x", tokenizer_fingerprint(TOK),
                            CacheJob(out=out, replicas=DP))
    write_teacher_cache(dist, w["model"], w["data"], w["cfg"], "teacher-x", tokenizer_fingerprint(TOK),
                        CacheJob(out=out, replicas=DP, resume=True))
    names = sorted(p.name for p in (w["dir"] / "cache").iterdir())
    assert names == sorted(p.name for p in out.iterdir())
    for name in names:
        assert (out / name).read_bytes() == (w["dir"] / "cache" / name).read_bytes(), name


def test_bfloat16_values_and_bytes(world, dist):
    w, out = world, world["dir"] / "bf16"
    write_teacher_cache(dist, w["model"], w["data"], w["cfg"], "teacher-x", tokenizer_fingerprint(TOK),
                        CacheJob(out=out, replicas=1, dtype="bfloat16"))
    cache = TeacherCache(out)
    got, want = cache.targets([3, 4]), w["cache"].targets([3, 4])
    assert torch.equal(got["values"], want["values"].to(torch.bfloat16).float())
    assert torch.equal(got["indices"], want["indices"])
    assert cache.dtype.itemsize == w["cache"].dtype.itemsize - 24 * 8 * 2  # 2 bytes less per stored value


def test_library_api_for_given_batches(world, tmp_path, monkeypatch):
    """What `rad study` can call: its own batches and sample ids, read back by id and by held-out batch."""
    w = world
    batches = [([5, 9], w["data"].batch([5, 9])), ([1, 2], w["data"].batch([1, 2]))]
    held = held_out_batches(w["data"].held, 2)[:1]
    kw = dict(teacher="t", tokenizer="tok", data="rows-5-9-1-2", stream=w["cfg"].stream, eval_batches=held)
    cache = write_targets(w["model"], batches, tmp_path / "c", **kw)
    assert np.fromfile(tmp_path / "c/shard_000.ids", "<i8").tolist() == [5, 9, 1, 2]
    got = cache.targets([9, 1])
    live9, live1 = _live(w, w["data"].batch([5, 9])), _live(w, w["data"].batch([1, 2]))
    assert torch.equal(got["values"], torch.stack([live9[0][1], live1[0][0]]))
    assert torch.equal(cache.eval_targets(0)["values"], _live(w, held[0], seq_idx=False)[0])
    import rad_megatron.distill.teacher_cache as tc

    monkeypatch.setattr(tc, "teacher_token_targets", lambda *a, **k: pytest.fail("recomputed"))
    assert write_targets(w["model"], batches, tmp_path / "c", **kw).manifest == cache.manifest
    with pytest.raises(RadError, match="made for another teacher, tokenizer, data or stream"):
        write_targets(w["model"], batches, tmp_path / "c", **{**kw, "data": "other"})


def test_bad_caches_are_refused_in_one_line(world, tmp_path):
    w = world
    with pytest.raises(RadError, match=f"teacher cache {tmp_path}: no manifest.json there"):
        TeacherCache(tmp_path)
    run = dict(tokenizer=w["cache"].manifest["tokenizer"], data=w["data"].fingerprint, top_k=8, temperature=1.0)
    w["cache"].check_matches(**run)
    for key, other in (("top_k", 16), ("tokenizer", "0123"), ("data", "feed"), ("temperature", 2.0)):
        with pytest.raises(RadError, match=f"was made with {key}=.*this run has {key}="):
            w["cache"].check_matches(**{**run, key: other})
    bad = tmp_path / "trunc"
    shutil.copytree(w["dir"] / "cache", bad)
    with open(bad / "shard_000.bin", "r+b") as f:
        f.truncate(1234)
    with pytest.raises(RadError, match=r"shard .*shard_000.bin is 1234 bytes, manifest.json says \d+ \(truncated\)"):
        TeacherCache(bad)
    short = CachedTargets(w["cache"], 0, DP, GA, MBS, first_step=1, first_sample=STEPS * G)
    with pytest.raises(RadError, match="holds no targets for training samples .* --replicas N --resume"):
        short.receive(1, 0, torch.zeros(MBS, 24, dtype=torch.long))
    manifest = json.loads((w["dir"] / "cache/manifest.json").read_text())
    assert manifest["top_k"] == 8 and manifest["teacher"] == "teacher-x" and manifest["dtype"] == "float32"


def test_study_targets_are_the_ones_it_computed_before(world, tmp_path, monkeypatch):
    """`rad study` keeps its teacher targets in this cache format (study.teacher): the same values, indices and
    held-out nll as the study's former in-file cache held (teacher_targets over eight rows at a time and over each
    held-out batch); a second call reads them back, a broken cache is rebuilt."""
    from rad_megatron.study.teacher import teacher_cache, train_targets

    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 128, (20, 16), generator=g)
    train = {"input_ids": ids, "labels": torch.roll(ids, -1, 1), "loss_mask": (ids % 3 != 0).float()}
    hid = torch.randint(3, 128, (5, 12), generator=g)
    held = {"input_ids": hid, "labels": torch.roll(hid, -1, 1), "loss_mask": (hid % 2 == 0).float()}
    rows, stream = [3, 17, 0, 5, 9, 12, 3, 11, 2, 19, 7], StreamConfig(top_k=8)
    order, w = sorted(set(rows)), world["model"]
    before = [teacher_targets(w, train["input_ids"][r], train["labels"][r],
                              train["loss_mask"][r], stream) for r in (order[:8], order[8:])]
    held_before = [teacher_targets(w, held["input_ids"][i:i + 2], held["labels"][i:i + 2],
                                   held["loss_mask"][i:i + 2], stream) for i in (0, 2, 4)]
    cache = teacher_cache(w, train, held, rows, 8, 2, tmp_path / "tc", "hf:x", log=lambda m: None)
    vals, idx = train_targets(cache, [17, 0, 19])
    at = {r: (n // 8, n % 8) for n, r in enumerate(order)}
    assert torch.equal(vals, torch.stack([before[at[r][0]][0][at[r][1]] for r in (17, 0, 19)]))
    assert torch.equal(idx, torch.stack([before[at[r][0]][1][at[r][1]] for r in (17, 0, 19)]).long())
    for (v, i, nll, tok), (bv, bi, bnll, btok) in zip(cache["held"], held_before, strict=True):
        assert torch.equal(v, bv) and torch.equal(i, bi.long()) and nll == bnll and tok == btok
    import rad_megatron.distill.teacher_cache as tc

    with monkeypatch.context() as m:
        m.setattr(tc, "teacher_token_targets", lambda *a, **k: pytest.fail("recomputed"))
        again = teacher_cache(w, train, held, rows, 8, 2, tmp_path / "tc", "hf:x", log=lambda m: None)
    assert torch.equal(train_targets(again, [17, 0, 19])[0], vals)
    with open(tmp_path / "tc/shard_000.bin", "r+b") as f:
        f.truncate(100)
    said = []
    rebuilt = teacher_cache(w, train, held, rows, 8, 2, tmp_path / "tc", "hf:x", log=said.append)
    assert "truncated" in said[0] and torch.equal(train_targets(rebuilt, [17, 0, 19])[0], vals)
