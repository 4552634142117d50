"""Lossless speculative generation: a drafter proposes K tokens, the target verifies all of them in one forward.

One step, with the target's cache valid up to offset n and y0 its newest token (not yet fed):
  1. checkpoint the target's Mamba states; the drafter proposes d1..dK (inference/draft.py: the target with a skip
     set, or a separate model), each with the distribution q_i it was drawn from;
  2. feed [y0, d1..dK] to the target at offset n in one forward -> its distributions p_1..p_{K+1};
  3. greedy: accept the longest prefix with d_i == argmax p_i, the next token is argmax p_{m+1};
     sampled (standard speculative sampling, Leviathan et al. 2023 / Chen et al. 2023): accept d_i with probability
     min(1, p_i(d_i) / q_i(d_i)); at the first rejection draw the next token from max(0, p_i - q_i) normalised, and
     after K acceptances from p_{K+1}. Every emitted token is then distributed exactly as under plain sampling from
     the target (p and q both after the same temperature / top-k / top-p);
  4. roll back: the KV cache by offset, the Mamba states with inference/rollback.py (snapshot or recompute).
Greedy output equals plain greedy decoding of the target token for token.
"""

from __future__ import annotations

import time

import torch

from rad_megatron.errors import RadError
from rad_megatron.inference.engine import InferenceSession, SamplingConfig, next_token_probs, pick_next
from rad_megatron.inference.rollback import MambaRollback
from rad_megatron.inference.speculative import SpecStats


def _chooser(sampling: SamplingConfig, generator: torch.Generator):
    """logits [V] -> (token, the distribution it was drawn from, or None when greedy)."""
    if sampling.temperature <= 0:
        return lambda logits: (int(logits.argmax()), None)

    def choose(logits):
        q = next_token_probs(logits, sampling).cpu()
        return int(torch.multinomial(q, 1, generator=generator)), q

    return choose


def accept_draft(draft: list[int], q: torch.Tensor | None, logits: torch.Tensor, sampling: SamplingConfig,
                 generator: torch.Generator) -> tuple[int, int]:
    """(number of draft tokens accepted, the token after them) from the target's logits [K+1, V] at [y0, d1..dK]."""
    if sampling.temperature <= 0:
        verified = logits.argmax(-1).tolist()
        m = 0
        while m < len(draft) and draft[m] == verified[m]:
            m += 1
        return m, verified[m]
    p = next_token_probs(logits, sampling).cpu()
    for i, d in enumerate(draft):
        if float(torch.rand((), generator=generator)) * float(q[i, d]) < float(p[i, d]):
            continue  # accepted with probability min(1, p/q)
        residual = (p[i] - q[i]).clamp_min(0)
        total = float(residual.sum())
        # total == 0 means p_i == q_i up to rounding, where a rejection has probability ~0; draw from p_i then
        residual = residual / total if total > 0 else p[i]
        return i, int(torch.multinomial(residual, 1, generator=generator))
    return len(draft), int(torch.multinomial(p[-1], 1, generator=generator))


@torch.no_grad()
def speculative_decode(model, prompt: list[int], max_new_tokens: int, drafter, k: int = 4,
                       sampling: SamplingConfig | None = None, eos_id: int | None = None,
                       rollback: str = "snapshot", clock=time.perf_counter) -> tuple[list[int], SpecStats]:
    """Complete one prompt with `drafter` (draft.SelfDraft or draft.ModelDraft) proposing up to k tokens per target
    forward; returns (new tokens, cut after eos; stats). `clock` times the decoding loop (stats.seconds): wall time by
    default; a benchmark on a shared machine passes time.thread_time (CPU time of a 1-thread torch)."""
    if not prompt:
        raise RadError("speculative generation needs a non-empty prompt")
    if k < 1:
        raise RadError(f"--draft-len {k}: the draft length must be >= 1")
    sampling = sampling or SamplingConfig()
    gen = torch.Generator().manual_seed(sampling.seed)
    choose = _chooser(sampling, gen)
    device = next(model.parameters()).device
    session = InferenceSession(model, 1, len(prompt) + max_new_tokens + k + 1)
    target_rollback = MambaRollback(model, rollback)
    try:
        logits = session.feed(torch.tensor([prompt], device=device), last_only=True)[:, -1]
        y0 = int(pick_next(logits, sampling, gen)[0])
        drafter.start(model, session, target_rollback, prompt)
        return _loop(session, target_rollback, drafter, y0, max_new_tokens, k, sampling, gen, choose, eos_id, clock)
    finally:
        target_rollback.close()
        drafter.close()


def _loop(session, rollback, drafter, y0, max_new_tokens, k, sampling, gen, choose, eos_id, clock):
    device = next(session.model.parameters()).device
    out, stats = [], SpecStats()
    t0 = clock()
    while True:
        out.append(y0)
        if len(out) >= max_new_tokens or y0 == eos_id:
            break
        n = session.offset
        rollback.checkpoint(session.context)
        draft, q = drafter.propose(y0, min(k, max_new_tokens - len(out)), choose)
        with rollback.record():
            logits = session.feed(torch.tensor([[y0] + draft], device=device))[0]
        m, y_next = accept_draft(draft, q, logits, sampling, gen)
        if m < len(draft):
            rollback.rollback(m + 1)
            session.rewind(n + m + 1)
        drafter.settle(draft, m, y_next)
        stats.steps, stats.drafted, stats.accepted = stats.steps + 1, stats.drafted + len(draft), stats.accepted + m
        stats.accepted_per_step.append(m)
        accepted = draft[:m]
        if eos_id is not None and eos_id in accepted:
            out.extend(accepted[: accepted.index(eos_id) + 1])
            break
        out.extend(accepted)
        y0 = y_next
    stats.seconds = clock() - t0
    out = out[:max_new_tokens]
    stats.tokens = len(out)
    return out, stats
