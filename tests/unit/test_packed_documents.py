"""Packed documents: a row holding several documents gives every document the logits it gets alone (attention:
per-document RoPE + block-diagonal mask; Mamba-2: conv and SSM state reset at each boundary), for a hybrid with both
attention and Mamba layers, in fp32 to <= 1e-5; gradients flow as for the separate documents."""

import pytest
import torch

from rad_megatron.config import ModelConfig
from rad_megatron.model import build_model, forward_logits
from rad_megatron.model.documents import document_mask, document_positions, thd_params

BASE = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=4, num_attention_heads=4, num_kv_heads=2)
LENGTHS = [[5, 9, 1, 13, 4], [32], [17, 15]]  # one-token document, documents across Mamba chunk edges (chunk 8)


def _model(seed=0, recompute="none"):
    torch.manual_seed(seed)
    cfg = ModelConfig(**BASE, layout=["attention", "mamba", "mamba", "attention"], mamba={"chunk_size": 8})
    return build_model(cfg, recompute=recompute)


def _packed():
    g = torch.Generator().manual_seed(3)
    docs = [[torch.randint(3, 128, (n,), generator=g) for n in row] for row in LENGTHS]
    ids = torch.stack([torch.cat(row) for row in docs])
    seq_idx = torch.stack([torch.cat([torch.full((n,), i) for i, n in enumerate(row)]) for row in LENGTHS])
    return docs, ids, seq_idx


def test_helpers():
    seq_idx = torch.tensor([[0, 0, 0, 1, 2, 2], [4, 4, 4, 4, 7, 7]])
    assert document_positions(seq_idx).tolist() == [[0, 1, 2, 0, 0, 1], [0, 1, 2, 3, 0, 1]]
    allowed = ~document_mask(seq_idx)[0, 0]
    assert allowed[2].tolist() == [True, True, True, False, False, False]
    assert allowed[5].tolist() == [False, False, False, False, True, True]
    p = thd_params(seq_idx)
    assert p.cu_seqlens_q.tolist() == [0, 3, 4, 6, 10, 12] and p.max_seqlen_q == 4 and p.total_tokens == 12
    assert p.seq_idx.tolist() == [[0, 0, 0, 1, 2, 2, 3, 3, 3, 3, 4, 4]]


def test_packed_forward_equals_separate_documents(dist):
    model = _model().eval()
    docs, ids, seq_idx = _packed()
    with torch.no_grad():
        packed = forward_logits(model, ids, seq_idx=seq_idx)
        naive = forward_logits(model, ids)
        worst = 0.0
        for r, row in enumerate(docs):
            start = 0
            for doc in row:
                alone = forward_logits(model, doc[None])
                worst = max(worst, (packed[r, start:start + len(doc)] - alone[0]).abs().max().item())
                start += len(doc)
    assert worst <= 1e-5, worst
    # and the boundaries matter: without them a later document sees the earlier ones
    assert (naive[0, 5:] - packed[0, 5:]).abs().max().item() > 1e-3


@pytest.mark.parametrize("recompute", ["none", "selective"])
def test_packed_gradients_equal_separate_documents(dist, recompute):
    """d(sum of one document's logits)/d(weights) in the packed row == the same from that document alone (also when
    the backward pass recomputes core attention and the SSD scan: the boundaries reach the recomputation)."""
    model = _model(seed=1, recompute=recompute).train()
    docs, ids, seq_idx = _packed()
    row, start, n = 0, 14, 1 + 13  # documents 2 and 3 of row 0 (a one-token one, then 13 tokens)
    params = [p for p in model.parameters() if p.requires_grad]

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]

    packed = grads(forward_logits(model, ids, seq_idx=seq_idx)[row, start:start + n].pow(2).mean())
    sep = torch.cat([forward_logits(model, docs[0][2][None])[0], forward_logits(model, docs[0][3][None])[0]])
    alone = grads(sep.pow(2).mean())
    scale = max(g.abs().max().item() for g in alone)
    assert max((a - b).abs().max().item() for a, b in zip(packed, alone)) <= 1e-5 * scale
