"""Self-speculative decoding (Draft & Verify, SWIFT): the draft is the model with a skip set S of attention layers
bypassed, the verifier is the full model; both share one cache.

One step, with the cache valid up to offset n and y0 the verifier's next token (not yet fed):
  1. snapshot the Mamba states; feed y0, d1, ... with S skipped, drafting d1..dK (stop early under the adaptive
     rule when the draft's top probability falls below `confidence`);
  2. restore the Mamba states; feed [y0, d1..dK] to the full model at offset n in one pass -> verifier tokens v1..v(K+1);
  3. accept the longest prefix with d_i == v_i (m tokens); emit y0, d1..dm; the next y0 is v(m+1);
  4. roll back: attention needs only the offset (the KV cache is positional); if m < K the Mamba states are
     restored and [y0, d1..dm] re-fed, since an SSM state cannot be truncated.
Every emitted token is a verifier argmax, so greedy output equals plain greedy decoding of the full model.

Beside greedy acceptance, each step records the expected acceptance of speculative *sampling* (Leviathan et al.
2023): alpha = sum_v min(p_full(v), p_draft(v)) at every draft position whose prefix was emitted (the accepted ones
and the first rejected one). Both distributions are already computed, so it costs nothing extra, and unlike the
greedy count it keeps falling as the draft distribution drifts even while its argmax still agrees.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from rad_megatron.errors import RadError
from rad_megatron.inference.engine import InferenceSession
from rad_megatron.model.skip import check_skip_set
from rad_megatron.ssm.state import mamba_layer_numbers, restore_states, snapshot_states


@dataclass
class SpecStats:
    """Counts of one or more speculative runs."""

    steps: int = 0
    """Verify passes."""
    drafted: int = 0
    """Draft tokens proposed."""
    accepted: int = 0
    """Draft tokens the verifier agreed with."""
    tokens: int = 0
    """Tokens emitted."""
    seconds: float = 0.0
    """Wall-clock time of the decoding loops (prefill excluded)."""
    accepted_per_step: list[int] = field(default_factory=list)
    alpha_sum: float = 0.0
    """Sum over scored draft positions of sum_v min(p_full(v), p_draft(v))."""
    alpha_positions: int = 0
    """Draft positions scored: per step, those whose prefix was emitted (accepted ones + the first rejected)."""

    @property
    def expected_acceptance(self) -> float:
        """Mean speculative-sampling acceptance probability alpha over the scored draft positions (1.0 exactly when
        the draft's distributions equal the verifier's)."""
        return self.alpha_sum / self.alpha_positions if self.alpha_positions else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted(self) -> float:
        return self.accepted / self.steps if self.steps else 0.0

    @property
    def mean_drafted(self) -> float:
        return self.drafted / self.steps if self.steps else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def merge(self, other: "SpecStats") -> "SpecStats":
        return SpecStats(self.steps + other.steps, self.drafted + other.drafted, self.accepted + other.accepted,
                         self.tokens + other.tokens, self.seconds + other.seconds,
                         self.accepted_per_step + other.accepted_per_step, self.alpha_sum + other.alpha_sum,
                         self.alpha_positions + other.alpha_positions)

    def summary(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "accepted_per_step"}
        d.update(acceptance_rate=self.acceptance_rate, expected_acceptance=self.expected_acceptance,
                 mean_accepted=self.mean_accepted,
                 mean_drafted=self.mean_drafted, tokens_per_s=self.tokens_per_s)
        return d


@torch.no_grad()
def speculative_generate(model, prompt: list[int], skip, k: int, max_new_tokens: int, eos_id: int | None = None,
                         confidence: float | None = None) -> tuple[list[int], SpecStats]:
    """Greedy self-speculative decoding of one prompt; returns (new tokens, stats)."""
    if not prompt:
        raise RadError("speculative decoding needs a non-empty prompt")
    if k < 1:
        raise RadError(f"draft length k must be >= 1, got {k}")
    skip = check_skip_set(model.rad_config, skip)
    device = next(model.parameters()).device
    session = InferenceSession(model, 1, len(prompt) + max_new_tokens + k + 1)
    mamba = mamba_layer_numbers(model)
    y0 = int(session.feed(torch.tensor([prompt], device=device))[0, -1].argmax())
    out, stats = [], SpecStats()
    t0 = time.perf_counter()
    while True:
        out.append(y0)
        if len(out) >= max_new_tokens or y0 == eos_id:
            break
        n = session.offset
        budget = min(k, max_new_tokens - len(out))
        saved = snapshot_states(session.context, mamba)
        draft, draft_logits = _draft(session, y0, skip, budget, confidence, device)
        restore_states(session.context, saved)
        session.rewind(n)
        block = torch.tensor([[y0] + draft], device=device)
        full_logits = session.feed(block)[0]
        verified = full_logits.argmax(-1).tolist()  # verified[i]: the full model's token after block[i]
        m = 0
        while m < len(draft) and draft[m] == verified[m]:
            m += 1
        scored = min(m + 1, len(draft))  # positions m+1.. condition on a rejected draft token: not on the output
        stats.alpha_sum += float(acceptance_probability(full_logits[:scored], draft_logits[:scored]).sum())
        stats.alpha_positions += scored
        stats.steps, stats.drafted, stats.accepted = stats.steps + 1, stats.drafted + len(draft), stats.accepted + m
        stats.accepted_per_step.append(m)
        if m < len(draft):
            session.rewind(n)
            if mamba:
                restore_states(session.context, saved)
                session.feed(block[:, : m + 1])
            else:
                session.rewind(n + m + 1)
        accepted = draft[:m]
        if eos_id is not None and eos_id in accepted:
            out.extend(accepted[: accepted.index(eos_id) + 1])
            break
        out.extend(accepted)
        y0 = verified[m]
    stats.seconds = time.perf_counter() - t0
    out = out[:max_new_tokens]
    stats.tokens = len(out)
    return out, stats


def acceptance_probability(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """[n, V] verifier and draft logits -> [n] sum_v min(p(v), q(v)) = 1 - TV(p, q): the probability that
    speculative sampling accepts a token drawn from q (computed in float64, so equal inputs give 1 to ~1e-15)."""
    p, q = p_logits.double().softmax(-1), q_logits.double().softmax(-1)
    return torch.minimum(p, q).sum(-1)


def _draft(session, y0, skip, budget, confidence, device) -> tuple[list[int], torch.Tensor]:
    """(draft tokens, their draft logits [len, V])."""
    draft, rows, tok = [], [], y0
    for _ in range(budget):
        logits = session.feed(torch.tensor([[tok]], device=device), skip)[0, -1]
        tok = int(logits.argmax())
        draft.append(tok)
        rows.append(logits)
        if confidence is not None and float(logits.float().softmax(-1).max()) < confidence:
            break
    return draft, torch.stack(rows)
