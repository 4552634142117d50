"""Scorers for our tasks: GSM8K answer extraction and CRUXEval output prediction checked by execution.

GSM8K: the reference answer is the number after '####'. A response is *strictly* right when it states its answer in
one of the two conventional forms ('#### N' or 'The answer is N') and that number is right; *flexibly* right when its
conventional answer, or failing that the last number it writes, is right (lm-eval's gsm8k 'strict-match' and
'flexible-extract' in spirit). Numbers compare by value: '$1,000.00' equals '1000'.

CRUX-O: the predicted output is executed, `assert f(<input>) == <prediction>` after the task's code, in a fresh
Python process with a timeout, like CRUXEval's own harness. This runs model-written code: callers opt in.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from decimal import Decimal, InvalidOperation

_NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?"
_STRICT = (re.compile(rf"####\s*({_NUMBER})"), re.compile(rf"[Tt]he (?:final )?answer is:?\s*\**\s*({_NUMBER})"))
_ANY_NUMBER = re.compile(_NUMBER)


def gsm8k_gold(answer_field: str) -> str:
    """The reference number of a GSM8K 'answer' field ('... #### 18' -> '18')."""
    if "####" not in answer_field:
        raise ValueError(f"GSM8K answer field has no '####': {answer_field[-80:]!r}")
    return answer_field.split("####")[-1].strip()


def extract_gsm8k(response: str, strict: bool = False) -> str | None:
    """The answer a response states: the last '#### N' / 'The answer is N', else (not strict) its last number."""
    for pattern in _STRICT:
        found = pattern.findall(response)
        if found:
            return found[-1]
    if strict:
        return None
    found = _ANY_NUMBER.findall(response)
    return found[-1] if found else None


def _value(number: str) -> Decimal | None:
    try:
        return Decimal(number.replace("$", "").replace(",", "").rstrip("."))
    except InvalidOperation:
        return None


def gsm8k_correct(response: str, answer_field: str, strict: bool = False) -> bool:
    predicted = extract_gsm8k(response, strict=strict)
    if predicted is None:
        return False
    got, want = _value(predicted), _value(gsm8k_gold(answer_field))
    return got is not None and want is not None and got == want


def crux_prediction(generation: str) -> str:
    """The predicted output expression in a CRUX-O generation.

    The task's prompt ends with 'assert f(<input>) == ', so the generation is normally the bare literal; a model that
    repeats the whole assertion or closes the [ANSWER] block is tolerated.
    """
    text = generation.split("[/ANSWER]")[0].strip()
    if text.startswith("[ANSWER]"):
        text = text[len("[ANSWER]"):].strip()
    lines = text.splitlines()
    text = lines[0].strip() if lines else ""
    if text.startswith("assert") and "==" in text:
        text = text.split("==", 1)[1].strip()
    return text


def crux_program(code: str, call_input: str, prediction: str) -> str:
    # The prediction is compiled on its own in 'eval' mode, so it must be one expression: text such as
    # "1) or (True" cannot rewrite the assertion into one that always holds.
    return (f"{code}\n__rad_predicted = eval(compile({prediction!r}, '<prediction>', 'eval'))\n"
            f"assert f({call_input}) == __rad_predicted\n")


def crux_correct(code: str, call_input: str, generation: str, timeout: float = 5.0) -> bool:
    """Whether `f(<input>) == <predicted output>` holds when executed in a separate Python process."""
    prediction = crux_prediction(generation)
    if not prediction:
        return False
    return run_isolated(crux_program(code, call_input, prediction), timeout)


def _limit_resources():  # runs in the child before exec: a prediction cannot exhaust memory or fill the disk
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


def run_isolated(program: str, timeout: float) -> bool:
    """True when `program` exits 0 in `python -I` (no site, no env paths) inside an empty temporary folder."""
    with tempfile.TemporaryDirectory(prefix="rad_crux_") as cwd:
        try:
            proc = subprocess.run([sys.executable, "-I", "-c", program], cwd=cwd, capture_output=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL,
                                  preexec_fn=_limit_resources if sys.platform.startswith("linux") else None)
        except subprocess.TimeoutExpired:
            return False
    return proc.returncode == 0
