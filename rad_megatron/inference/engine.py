"""Batched generation with a KV cache (attention) and conv/SSM states (Mamba) for the hybrid, at any TP size.

Prompts of different lengths share one batch without padding: the batch is prefilled up to the shortest prompt, and
rows whose prompt is longer are fed their own prompt tokens while the others decode (as Megatron's static
text-generation controller does), which is exact for attention and for SSM states alike.
Sampling uses one generator seeded identically on every rank; logits are gathered over TP, so all TP ranks pick the
same tokens.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from megatron.core.inference.contexts import StaticInferenceContext

from rad_megatron.errors import RadError
from rad_megatron.model.forward import forward_logits
from rad_megatron.model.skip import skip_blocks


@dataclass
class SamplingConfig:
    """How the next token is chosen."""

    temperature: float = 0.0
    """0 means greedy (argmax)."""
    top_k: int = 0
    """Keep the k most likely tokens (0: all)."""
    top_p: float = 1.0
    """Keep the smallest set of tokens whose probability reaches top_p."""
    seed: int = 0
    """Seed of the sampling generator (identical on every rank)."""


def next_token_probs(logits: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """[..., V] logits -> the distribution the next token is sampled from (temperature, then top-k, then top-p)."""
    logits = logits.float() / sampling.temperature
    if sampling.top_k > 0:
        kth = logits.topk(sampling.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= sampling.top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return logits.softmax(-1)


def pick_next(logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """[b, V] logits -> [b] token ids."""
    if sampling.temperature <= 0:
        return logits.argmax(-1)
    probs = next_token_probs(logits, sampling)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


class InferenceSession:
    """One batch's cache: feeds tokens at the current offset and keeps the offset in step with the cache."""

    def __init__(self, model, batch_size: int, max_length: int):
        cfg = model.rad_config
        if max_length > cfg.max_position_embeddings:
            raise RadError(f"generation needs {max_length} positions but the model is built for "
                           f"{cfg.max_position_embeddings} (model.max_position_embeddings)")
        self.model = model
        self.context = StaticInferenceContext(batch_size, max_length)
        self.max_length = max_length

    @property
    def offset(self) -> int:
        return self.context.sequence_len_offset

    @torch.no_grad()
    def feed(self, tokens: torch.Tensor, skip=(), last_only: bool = False) -> torch.Tensor:
        """Run [b, s] new tokens at the current offset; returns their logits [b, s, V] (with last_only: the last
        position's, [b, 1, V]) and advances the offset."""
        if self.offset + tokens.shape[1] > self.max_length:
            raise RadError(f"sequence would reach {self.offset + tokens.shape[1]} tokens; the session holds "
                           f"{self.max_length}")
        with contextlib.ExitStack() as stack:
            if skip:
                stack.enter_context(skip_blocks(self.model, skip))
            if last_only:
                stack.enter_context(_last_position_logits(self.model))
            logits = forward_logits(self.model, tokens, inference_context=self.context, position_offset=self.offset)
        self.context.sequence_len_offset += tokens.shape[1]
        return logits

    def rewind(self, offset: int) -> None:
        """Forget attention positions >= offset (a positional KV cache needs no copy; SSM states need a restore)."""
        self.context.sequence_len_offset = offset


@contextlib.contextmanager
def _last_position_logits(model):
    """The output layer sees only the last position's hidden state ([s, b, h] -> [1, b, h]): a prefill needs one
    position's logits, and the vocabulary projection of all others is a sixth of a SmolLM2 prefill's FLOPs."""
    handle = model.output_layer.register_forward_pre_hook(lambda _m, args: (args[0][-1:], *args[1:]))
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def generate(model, prompts: list[list[int]], max_new_tokens: int, eos_id: int | None = None,
             sampling: SamplingConfig | None = None, skip=(), device=None, stop=None) -> list[list[int]]:
    """Complete each prompt; returns only the new tokens of each (cut after eos, eos included).

    `stop(row, new_tokens) -> bool`, if given, is asked after each token a row generates (e.g. a stop string
    appeared); a row it stops keeps its tokens so far. It must answer the same on every TP rank.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise RadError("generate needs at least one non-empty prompt")
    sampling = sampling or SamplingConfig()
    gen = torch.Generator().manual_seed(sampling.seed)
    device = device or next(model.parameters()).device
    lens = [len(p) for p in prompts]
    total = max(lens) + max_new_tokens
    buf = torch.zeros(len(prompts), total, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        buf[i, : len(p)] = torch.tensor(p)
    prompt_len = torch.tensor(lens, device=device)
    session = InferenceSession(model, len(prompts), total)
    pos = min(lens)
    logits = session.feed(buf[:, :pos], skip, last_only=True)[:, -1]
    finished = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    new = torch.zeros(len(prompts), dtype=torch.long, device=device)
    while True:
        forced = pos < prompt_len  # rows still reading their own prompt
        tok = torch.where(forced, buf[:, pos], pick_next(logits, sampling, gen))
        generating = ~forced & ~finished
        buf[:, pos] = torch.where(generating | forced, tok, buf[:, pos])
        new += generating.long()
        if eos_id is not None:
            finished |= generating & (tok == eos_id)
        if stop is not None:
            for i in (generating & ~finished).nonzero().flatten().tolist():
                finished[i] = bool(stop(i, buf[i, lens[i]: pos + 1].tolist()))
        finished |= new >= max_new_tokens
        if bool(finished.all()):
            break
        pos += 1
        logits = session.feed(buf[:, pos - 1:pos], skip)[:, -1]
    return [_completion(buf[i, n:].tolist(), int(new[i]), eos_id) for i, n in enumerate(lens)]


def _completion(tokens: list[int], count: int, eos_id) -> list[int]:
    out = tokens[:count]
    if eos_id is not None and eos_id in out:
        out = out[: out.index(eos_id) + 1]
    return out
