"""Evaluation through lm-eval: our Megatron hybrid as lm-eval model "rad_megatron", and GSM8K / CRUX-O tasks.

`rad_megatron.eval.lm` registers the model class on import; `TASKS_DIR` is the `include_path` of our task yamls.
"""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
