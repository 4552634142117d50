"""The training stream: sources tokenised once into Megatron indexed datasets, packed per epoch with document
boundaries, blended by weight, in a global order that resumes at any data-parallel size with no sample repeated or
skipped; bad blends and data refused in one line."""

import json
import re

import numpy as np
import pytest

from rad_megatron.data.datasets import DataConfig, tokenize_example
from rad_megatron.data.loader import TrainData
from rad_megatron.distill.schedule import replica_slice
from rad_megatron.errors import RadError
from tests.helpers import tiny_tokenizer

TOK = tiny_tokenizer()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("stream")
    rng = np.random.RandomState(0)
    words = ["alpha", "beta", "gamma", "delta", "mamba", "token", "state"]
    paragraphs = [" ".join(rng.choice(words, rng.randint(2, 30))) for _ in range(60)]
    (d / "text.txt").write_text("\n\n".join(paragraphs) + "\n")
    rows = [{"question": f"what is {i} plus {i}?", "answer": f"{2 * i}."} for i in range(40)]
    (d / "chat.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return d


def _cfg(files, **kw):
    base = dict(path=str(files / "text.txt"), seq_len=32, held_out=3, seed=5, cache_dir=str(files / "cache"))
    return DataConfig(**{**base, **kw})


def test_rows_are_the_documents_cut_in_order_with_boundaries(files):
    data = TrainData(_cfg(files), TOK)
    src = data.sources[0]
    order, _, shuffle = src._epoch_arrays(0)
    docs = [src.corpus.read(d)[0] for d in order]
    stream, bounds = np.concatenate(docs), np.cumsum([len(x) for x in docs])
    seen = set()
    for m in range(src.num_samples):
        i = int(shuffle[m])
        seen.add(i)
        row = data.row(m)
        lo = i * data.seq_len
        assert np.array_equal(np.append(row["input_ids"], row["labels"][-1]), stream[lo: lo + data.seq_len + 1])
        # seq_idx counts the boundaries crossed since the row's first token; the loss drops only crossing labels
        starts = np.searchsorted(bounds, np.arange(lo, lo + data.seq_len + 1), side="right")
        assert np.array_equal(row["seq_idx"], starts[:-1] - starts[0])
        assert np.array_equal(row["loss_mask"], (starts[1:] == starts[:-1]).astype(np.float32))
    assert seen == set(range(src.num_samples))
    assert len(data.held["input_ids"]) == 3 and not set(order) & set(_held(data))


def _held(data):
    return [d for d in range(data.sources[0].corpus.num_documents) if d not in set(data.sources[0].documents)]


def test_tokenised_once_and_rebuilt_when_the_source_changes(files, monkeypatch, tmp_path):
    (tmp_path / "t.txt").write_text((files / "text.txt").read_text())
    cfg = _cfg(files, path=str(tmp_path / "t.txt"))
    first = TrainData(cfg, TOK)
    import rad_megatron.data.corpus as corpus

    def no_build(*a, **k):
        raise AssertionError("tokenised again")

    with monkeypatch.context() as m:
        m.setattr(corpus, "build_corpus", no_build)
        again = TrainData(cfg, TOK)
    assert again.fingerprint == first.fingerprint and np.array_equal(again.row(7)["input_ids"],
                                                                     first.row(7)["input_ids"])
    with open(tmp_path / "t.txt", "a") as f:
        f.write("\nmore text here\n")
    assert TrainData(cfg, TOK).fingerprint != first.fingerprint


def test_chat_mask_channel_and_parallel_tokenisation(files):
    cfg = _cfg(files, path=str(files / "chat.jsonl"), held_out=2, num_proc=2)
    data = TrainData(cfg, TOK)
    corpus = data.sources[0].corpus
    assert corpus.meta["has_mask"] and corpus.meta["documents"] == 40
    rows = [json.loads(ln) for ln in (files / "chat.jsonl").read_text().splitlines()]
    for d in (0, 17, 39):
        ids, mask = corpus.read(d)
        want_ids, want_mask = tokenize_example(TOK, cfg, rows[d])
        assert ids.tolist() == want_ids and mask.tolist() == want_mask
    row = data.row(3)
    assert 0 < row["loss_mask"].sum() < data.seq_len  # prompt tokens are not learned
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), files / "chat.parquet")  # the same rows as parquet: the same tokens
    parquet = TrainData(_cfg(files, path=str(files / "chat.parquet"), held_out=2), TOK)
    assert parquet.sources[0].corpus.meta["sha256"] == corpus.meta["sha256"]
    assert parquet.fingerprint == data.fingerprint


def test_blend_follows_weights_deterministically(files):
    cfg = _cfg(files, path="", blend=[{"path": str(files / "text.txt"), "weight": 3},
                                      {"path": str(files / "chat.jsonl"), "weight": 1, "format": "chat"}])
    data = TrainData(cfg, TOK)
    period = data.num_samples
    located = [data.blend.locate(k) for k in range(2 * period)]
    share = sum(s == 0 for s, _ in located[:period]) / period
    assert abs(share - 0.75) <= 1.0 / period + 1e-9
    assert len(set(located)) == len(located), "a source sample drawn twice"
    for s in (0, 1):  # each source's samples in order 0, 1, 2, ... (into its next epochs when oversampled)
        ms = [m for src, m in located if src == s]
        assert ms == list(range(len(ms)))
    assert TrainData(cfg, TOK).blend.locate(period + 5) == located[period + 5]


def _consume(sampler, steps, dp, ga, mbs):
    """What the trainer does: a step takes dp * ga * mbs global ids; (replica, micro) its slice."""
    seen = []
    for _ in range(steps):
        ids = sampler.take(dp * ga * mbs)
        for micro in range(ga):
            for replica in range(dp):
                seen += replica_slice(ids, replica, micro, dp, mbs)
    return seen


@pytest.mark.parametrize("dp_before,dp_after", [(2, 2), (1, 2)])
def test_resume_at_another_dp_size_repeats_and_skips_nothing(files, dp_before, dp_after):
    data = TrainData(_cfg(files), TOK)
    ga, mbs = 3, 4
    first = data.sampler()
    seen = _consume(first, 5, dp_before, ga, mbs)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = data.sampler()
    resumed.load_state_dict(state)
    seen += _consume(resumed, 7, dp_after, ga, mbs)
    total = 5 * dp_before * ga * mbs + 7 * dp_after * ga * mbs
    assert sorted(seen) == list(range(total)), "a sample repeated or skipped"
    assert total > data.num_samples  # across an epoch end: ids past it are rows of the next epoch
    assert not np.array_equal(data.row(0)["input_ids"], data.row(data.num_samples)["input_ids"])


def test_megatron_indexed_prefix_is_a_source(files, tmp_path):
    """A corpus a Megatron-LM user already tokenised (preprocess_data.py's .bin/.idx) is read as it is."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(str(tmp_path / "pre.bin"), dtype=np.uint16)
    docs = [torch.randint(3, 128, (n,)) for n in (40, 7, 90, 33, 12)]
    for doc in docs:
        builder.add_document(doc, [len(doc)])
    builder.finalize(str(tmp_path / "pre.idx"))
    data = TrainData(_cfg(files, path=str(tmp_path / "pre"), held_out=1), TOK)
    corpus = data.sources[0].corpus
    assert corpus.num_documents == 5 and corpus.read(2)[0].tolist() == docs[2].tolist()
    assert data.row(0)["loss_mask"].sum() > 0


@pytest.mark.parametrize("blend,message", [
    ([{"path": "A", "weight": 1}, {"path": "B", "weight": 0}],
     "data.blend[1].weight=0 (source B) must be a number > 0"),
    ([{"path": "A", "weight": -2}], "data.blend[0].weight=-2 (source A) must be a number > 0"),
    ([{"path": "A", "wieght": 2}], "unknown config key 'data.blend[0].wieght' (did you mean 'weight'?)"),
])
def test_bad_blend_is_refused_before_anything_is_built(files, blend, message, tmp_path):
    cfg = _cfg(files, path="", blend=blend, cache_dir=str(tmp_path / "c"))
    with pytest.raises(RadError, match=re.escape(message)):
        TrainData(cfg, TOK)
    assert not (tmp_path / "c").exists()


def test_bad_data_is_refused(files, tmp_path):
    with pytest.raises(RadError, match="data.path .*/nope.jsonl: no such file"):
        TrainData(_cfg(files, path=str(tmp_path / "nope.jsonl")), TOK)
    with pytest.raises(RadError, match="do not fill one sequence of data.seq_len=100000"):
        TrainData(_cfg(files, seq_len=100000), TOK)
    with pytest.raises(RadError, match="data.held_out=60 leaves no training documents"):
        TrainData(_cfg(files, held_out=60), TOK)


def test_bad_blend_through_the_cli_is_one_line_exit_2_and_writes_nothing(files, tmp_path, capsys):
    """Checked when the config is read, before a model loads (in-process `rad teacher-cache`)."""
    import yaml

    from rad_megatron.cli import main

    blend = [{"path": str(files / "text.txt"), "weight": 1}, {"path": str(files / "chat.jsonl"), "weight": -1}]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"data": {"blend": blend, "cache_dir": str(tmp_path / "dc")}}))
    code = main(["teacher-cache", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("rad teacher-cache: error: data.blend[1].weight=-1") and "chat.jsonl" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]
