"""Cheap per-layer redundancy heuristics: the published baselines the probe's choice is compared against.

All three score each attention layer alone, lower = more redundant, on the same calibration sequences: each probe
prompt followed by the full model's own greedy continuation (`max_new_tokens`, stopped at eos), i.e. the text the
self-speculative probe decodes.

  kl        KL(full || that layer skipped), mean over the generated positions (the next-token distributions of the
            continuation's tokens, as the probe sees them).
  bi        Block Influence of ShortGPT (Men et al. 2024, "ShortGPT: Layers in Large Language Models are More
            Redundant Than You Expect", arXiv 2403.03853): 1 - cos(block input, block output), mean over every token
            of the calibration sequences; a block = the attention sub-layer and its MLP.
  attn_sim  He et al. 2024 ("What Matters in Transformers? Not All Attention is Needed", arXiv 2406.15786): the same
            1 - cosine similarity for the attention sub-block alone, input X against X + Attention(Norm(X)).

The hidden states come from forward hooks on our own decoder layers (decoder.layers[2b] is block b's attention layer,
[2b+1] its MLP layer); tests/unit/test_redundancy.py checks them against transformers' output_hidden_states.
"""

from __future__ import annotations

import contextlib

import torch

from rad_megatron.model.forward import forward_logits
from rad_megatron.model.layout import mixer_layer_index, mlp_layer_index
from rad_megatron.model.skip import skip_blocks

HEURISTICS = ("kl", "bi", "attn_sim")


def calibration_batch(model, prompts: list[list[int]], max_new_tokens: int, eos_id: int | None) -> dict:
    """Each prompt + the full model's greedy continuation, right-padded into one batch: input_ids [n, s], `valid`
    [n, s] (real tokens) and `generated` [n, s] (positions whose next-token distribution predicts a generated
    token)."""
    from rad_megatron.inference.engine import generate

    device = next(model.parameters()).device
    continuations = generate(model, prompts, max_new_tokens, eos_id=eos_id)
    seqs = [p + c for p, c in zip(prompts, continuations)]
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long, device=device)
    valid = torch.zeros(len(seqs), width, dtype=torch.bool, device=device)
    generated = torch.zeros_like(valid)
    for i, (p, s) in enumerate(zip(prompts, seqs)):
        ids[i, : len(s)] = torch.tensor(s)
        valid[i, : len(s)] = True
        generated[i, len(p) - 1: len(s) - 1] = True
    return {"input_ids": ids, "valid": valid, "generated": generated}


@torch.no_grad()
def skip_kl_generated(model, batch: dict, full_logp: torch.Tensor | None = None) -> dict[int, float]:
    """Per attention layer: mean over generated positions of KL(full || that layer skipped). Right padding cannot
    change a real position's logits (the model is causal), so one padded forward serves every sequence."""
    ids, at = batch["input_ids"], batch["generated"]
    if full_logp is None:
        full_logp = forward_logits(model, ids)[at].double().log_softmax(-1)
    out = {}
    for b in model.rad_config.attention_layers:
        with skip_blocks(model, [b]):
            part = forward_logits(model, ids)[at].double().log_softmax(-1)
        out[b] = float((full_logp.exp() * (full_logp - part)).sum(-1).mean())
    return out


@contextlib.contextmanager
def _capture(model, blocks):
    """Record, per block b, its input and the outputs of its attention layer and MLP layer ([s, b, h] each)."""
    seen, hooks = {}, []

    def first(out):
        return out[0] if isinstance(out, tuple) else out

    for b in blocks:
        mixer, mlp = model.decoder.layers[mixer_layer_index(b)], model.decoder.layers[mlp_layer_index(b)]
        hooks.append(mixer.register_forward_pre_hook(
            lambda mod, args, kwargs, b=b: seen.__setitem__((b, "in"), kwargs.get("hidden_states", args[0] if args
                                                                                  else None)), with_kwargs=True))
        hooks.append(mixer.register_forward_hook(lambda mod, args, out, b=b: seen.__setitem__((b, "attn"), first(out))))
        hooks.append(mlp.register_forward_hook(lambda mod, args, out, b=b: seen.__setitem__((b, "out"), first(out))))
    try:
        yield seen
    finally:
        for h in hooks:
            h.remove()


def _one_minus_cos(x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> float:
    """Mean over valid tokens of 1 - cos(x_t, y_t); x, y [s, b, h] (Megatron's layout), valid [b, s]."""
    cos = torch.nn.functional.cosine_similarity(x.double(), y.double(), dim=-1).transpose(0, 1)  # [b, s]
    return float((1.0 - cos)[valid].mean())


@torch.no_grad()
def hidden_state_scores(model, batch: dict) -> tuple[dict[int, float], dict[int, float], torch.Tensor]:
    """(bi, attn_sim, the full model's log-probs at the generated positions) from one hooked forward."""
    blocks = model.rad_config.attention_layers
    with _capture(model, blocks) as seen:
        logits = forward_logits(model, batch["input_ids"])
    valid = batch["valid"]
    bi = {b: _one_minus_cos(seen[(b, "in")], seen[(b, "out")], valid) for b in blocks}
    attn = {b: _one_minus_cos(seen[(b, "in")], seen[(b, "attn")], valid) for b in blocks}
    return bi, attn, logits[batch["generated"]].double().log_softmax(-1)


def redundancy_scores(model, prompts: list[list[int]], max_new_tokens: int, eos_id: int | None) -> dict:
    """{'kl': {layer: value}, 'bi': ..., 'attn_sim': ..., 'calibration': what they were measured on} (string keys,
    as probe.json stores them)."""
    batch = calibration_batch(model, prompts, max_new_tokens, eos_id)
    bi, attn, full_logp = hidden_state_scores(model, batch)
    kl = skip_kl_generated(model, batch, full_logp)
    return {"kl": {str(b): v for b, v in kl.items()}, "bi": {str(b): v for b, v in bi.items()},
            "attn_sim": {str(b): v for b, v in attn.items()},
            "calibration": {"prompts": len(prompts), "max_new_tokens": max_new_tokens,
                            "tokens": int(batch["valid"].sum()), "generated_positions": int(batch["generated"].sum())}}
