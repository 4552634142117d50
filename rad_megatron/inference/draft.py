"""Draft proposers for speculative generation (inference/spec_generate.py).

  SelfDraft   the target itself with a skip set of attention layers bypassed (Draft & Verify, SWIFT; the probe's
              machinery): drafts in the target's own cache, then puts the cache back as it was.
  ModelDraft  a separate model sharing the target's tokenizer (e.g. a distilled hybrid drafting for its teacher, or
              a small hybrid for a large one), with its own cache and its own Mamba rollback.

Protocol: `start(prompt)` once after the target's prefill; then per step `propose(y0, budget, choose)` drafts up to
`budget` tokens after y0 (the newest token, not yet fed to any cache) and `settle(draft, accepted, y_next)` tells the
drafter how many of its tokens the verifier kept and which token comes next.
"""

from __future__ import annotations

import torch

from rad_megatron.errors import RadError
from rad_megatron.inference.engine import InferenceSession
from rad_megatron.inference.rollback import MambaRollback
from rad_megatron.model.skip import check_skip_set


def check_same_tokenizer(target_tok, draft_tok, draft_name) -> None:
    """A draft proposes token ids; they mean the same text only under the target's own tokenizer."""
    ours, theirs = target_tok.get_vocab(), draft_tok.get_vocab()
    if ours != theirs:
        differ = sum(1 for t, i in theirs.items() if ours.get(t) != i) + len(set(ours) - set(theirs))
        raise RadError(f"draft model '{draft_name}' has another tokenizer ({len(theirs)} tokens, {differ} differ from "
                       f"the target's {len(ours)}); a draft model must share the target's tokenizer")


def _run_draft(session, first: list[int], budget: int, choose, confidence, skip=()):
    """Feed `first`, then each drafted token, choosing `budget` tokens; returns (tokens, their distributions or
    None under greedy). Stops early when the draft's top probability falls below `confidence`."""
    device = next(session.model.parameters()).device
    tokens, dists, feed = [], [], first
    for _ in range(budget):
        logits = session.feed(torch.tensor([feed], device=device), skip, last_only=len(feed) > 1)[0, -1]
        tok, q = choose(logits)
        tokens.append(tok)
        dists.append(q)
        feed = [tok]
        if confidence is not None and float(logits.float().softmax(-1).max()) < confidence:
            break
    return tokens, (torch.stack(dists) if dists[0] is not None else None)


class SelfDraft:
    """The target with the attention layers in `skip` bypassed."""

    def __init__(self, skip, confidence: float | None = None):
        self.skip, self.confidence = list(skip), confidence
        self.session = self.rollback = None

    def start(self, target, session: InferenceSession, rollback: MambaRollback, prompt) -> None:
        self.skip = check_skip_set(target.rad_config, self.skip)
        self.session, self.rollback = session, rollback

    def propose(self, y0: int, budget: int, choose):
        """Draft in the target's cache (the caller checkpointed it), then restore it: the skipped layers' KV rows
        are rewritten by the verifier, and the Mamba states go back to the checkpoint."""
        n = self.session.offset
        draft = _run_draft(self.session, [y0], budget, choose, self.confidence, self.skip)
        self.rollback.rollback(0)
        self.session.rewind(n)
        return draft

    def settle(self, draft, accepted: int, y_next: int) -> None:
        pass  # the target's own rollback already put the shared cache where the verifier left it

    def close(self) -> None:
        pass


class ModelDraft:
    """A separate draft model with its own cache; `rollback` is its Mamba strategy (inference/rollback.py)."""

    def __init__(self, model, rollback: str = "snapshot", confidence: float | None = None):
        self.model, self.mode, self.confidence = model, rollback, confidence
        self.session = self.rollback = None
        self.pending: list[int] = []  # accepted tokens not yet in the draft's cache; the last one is y0
        self._start = 0

    def start(self, target, session: InferenceSession, rollback: MambaRollback, prompt) -> None:
        if self.model is target:
            raise RadError("the draft model is the target itself; use a skip set (self-speculative) instead")
        ours, theirs = self.model.rad_config.vocab_size, target.rad_config.vocab_size
        if ours != theirs:
            raise RadError(f"the draft model's vocabulary has {ours} tokens, the target's {theirs}: a draft model "
                           f"must share the target's tokenizer")
        self.session = InferenceSession(self.model, 1, session.max_length)
        self.rollback = MambaRollback(self.model, self.mode)
        device = next(self.model.parameters()).device
        self.session.feed(torch.tensor([prompt], device=device), last_only=True)
        self.pending = []

    def propose(self, y0: int, budget: int, choose):
        self.pending.append(y0)
        self._start = self.session.offset
        self.rollback.checkpoint(self.session.context)
        with self.rollback.record():
            return _run_draft(self.session, self.pending, budget, choose, self.confidence)

    def settle(self, draft, accepted: int, y_next: int) -> None:
        """The draft fed pending + draft[:-1]; keep pending + draft[:accepted] of it."""
        if accepted < len(draft):
            keep = len(self.pending) + accepted
            self.rollback.rollback(keep)
            self.session.rewind(self._start + keep)
            self.pending = []
        else:  # every draft token accepted: the last one was never fed
            self.pending = [draft[-1]]

    def close(self) -> None:
        if self.rollback is not None:
            self.rollback.close()
