"""Mamba state rollback for speculative decoding: after a verify pass over K+1 tokens, the cache must hold the
state after only the accepted ones. A KV cache is positional (moving the offset back is enough); an SSM state is not,
so each Mamba mixer of the model is given one of two rollback strategies:

  snapshot   the verify pass advances each Mamba layer one token at a time (its O(1) decode step) and keeps a copy
             of (conv_state, ssm_state) after every token; rollback copies the kept one back. Costs K+1 state
             copies per layer per verify, nothing on rejection.
  recompute  (MIL's "recompute from checkpoint") the verify pass runs as one multi-token scan and keeps only its
             input (the in_proj output, [b, l, in_proj] per layer); rollback restores the checkpoint state and
             re-runs just the Mamba recurrences over the accepted prefix of that input. Costs one state copy per
             step, and the recurrence of the accepted tokens only when something was rejected.

Both need the state at the checkpoint (one copy per layer per speculative step). The strategies are installed by
wrapping each mixer's `mix` on the instance (as model/skip.py bypasses blocks), so the mixer itself is unchanged.
"""

from __future__ import annotations

import contextlib

import torch

from rad_megatron.errors import RadError

ROLLBACKS = ("snapshot", "recompute")


def mamba_mixers(model) -> list:
    from rad_megatron.ssm.mixer import HybridMambaMixer

    return [layer.mixer for layer in model.decoder.layers
            if isinstance(getattr(layer, "mixer", None), HybridMambaMixer)]


class MambaRollback:
    """Checkpoint, record and roll back the Mamba states of one model's inference cache."""

    def __init__(self, model, mode: str = "snapshot"):
        if mode not in ROLLBACKS:
            raise RadError(f"--rollback {mode}: choose one of {', '.join(ROLLBACKS)}")
        self.mode = mode
        self.mixers = mamba_mixers(model)
        self._saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._states: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # the live cache tensors, by mixer
        self._log: dict[int, list] = {}
        self._recording = False
        for mixer in self.mixers:
            mixer.mix = self._wrapped(mixer)

    def close(self) -> None:
        """Give the mixers back their own `mix`."""
        for mixer in self.mixers:
            mixer.__dict__.pop("mix", None)

    def _wrapped(self, mixer):
        original = type(mixer).mix.__get__(mixer)
        key = id(mixer)

        def mix(zxbcdt, conv_state=None, ssm_state=None):
            if conv_state is None or not self._recording:
                return original(zxbcdt, conv_state, ssm_state)
            self._states[key] = (conv_state, ssm_state)
            log = self._log.setdefault(key, [])
            if self.mode == "recompute":
                log.append(zxbcdt)
                return original(zxbcdt, conv_state, ssm_state)
            ys = []
            for t in range(zxbcdt.shape[1]):  # the decode step per token, keeping each state
                ys.append(original(zxbcdt[:, t:t + 1], conv_state, ssm_state))
                log.append((conv_state.clone(), ssm_state.clone()))
            return torch.cat(ys, dim=1)

        return mix

    def checkpoint(self, context) -> None:
        """Copy the current states (the point every rollback returns to or starts from); forget recorded tokens."""
        cache = context.key_value_memory_dict
        self._saved = {id(m): (cache[m.layer_number][0].clone(), cache[m.layer_number][1].clone())
                       for m in self.mixers if m.layer_number in cache}
        self._states = {id(m): cache[m.layer_number] for m in self.mixers if m.layer_number in cache}
        self._log = {}

    @contextlib.contextmanager
    def record(self):
        """Within the context, feeds to the model are recorded for a later rollback."""
        self._recording = True
        try:
            yield
        finally:
            self._recording = False

    @torch.no_grad()
    def rollback(self, keep: int) -> None:
        """Set every Mamba state to the state after the first `keep` recorded tokens since the checkpoint
        (keep=0: the checkpoint itself)."""
        for mixer in self.mixers:
            key = id(mixer)
            if key not in self._saved:
                continue
            conv, ssm = self._states[key]
            log = self._log.get(key, [])
            if keep == 0 or not log:
                conv.copy_(self._saved[key][0])
                ssm.copy_(self._saved[key][1])
            elif self.mode == "snapshot":
                conv.copy_(log[keep - 1][0])
                ssm.copy_(log[keep - 1][1])
            else:
                conv.copy_(self._saved[key][0])
                ssm.copy_(self._saved[key][1])
                type(mixer).mix(mixer, torch.cat(log, dim=1)[:, :keep], conv, ssm)  # states only; output unused
        self._log = {}
