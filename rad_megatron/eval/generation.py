"""lm-eval's generate_until for one batch that shares generation settings, on our batched engine.

Stop strings end a row as soon as its decoded text contains one (the text is then cut before it, as lm-eval's HF
backend cuts it); the end-of-sequence token always stops. Greedy unless the task asks to sample.
"""

from __future__ import annotations

from lm_eval.models.utils import postprocess_generated_text

from rad_megatron.errors import RadError
from rad_megatron.inference.engine import SamplingConfig, generate


def sampling_from(kwargs: dict, seed: int) -> SamplingConfig:
    """lm-eval's (normalised) generation kwargs -> our SamplingConfig; anything we cannot honour is an error."""
    known = {"do_sample", "temperature", "top_p", "top_k"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise RadError(f"generation kwargs {unknown} are not supported by the rad_megatron model "
                       f"(supported: until, max_gen_toks, {', '.join(sorted(known))})")
    if not kwargs.get("do_sample") or float(kwargs.get("temperature") or 0.0) <= 0.0:
        return SamplingConfig(seed=seed)
    return SamplingConfig(temperature=float(kwargs["temperature"]), top_p=float(kwargs.get("top_p") or 1.0),
                          top_k=int(kwargs.get("top_k") or 0), seed=seed)


def generate_until_batch(model, tokenizer, prompts: list[list[int]], until: list[str], max_gen_toks: int,
                         sampling: SamplingConfig) -> list[str]:
    """Complete each prompt until a stop string, the eos token or `max_gen_toks` tokens; returns the texts."""
    stops = [s for s in until if s]

    def stop(_row: int, new_tokens: list[int]) -> bool:
        text = tokenizer.decode(new_tokens, skip_special_tokens=False)
        return any(s in text for s in stops)

    outs = generate(model, prompts, max_gen_toks, eos_id=tokenizer.eos_token_id, sampling=sampling,
                    stop=stop if stops else None)
    return [postprocess_generated_text(tokenizer.decode(toks, skip_special_tokens=True), stops, None)
            for toks in outs]
