"""lm-eval's own command line with the "rad_megatron" model registered and our task folder included:

    python -m rad_megatron.eval --model rad_megatron --model_args ckpt=CKPT --tasks rad_gsm8k --limit 50 \
        --apply_chat_template --metadata '{"gsm8k_data": "../shared/data/gsm8k/test.jsonl"}'
    torchrun --nproc-per-node 2 -m rad_megatron.eval --model rad_megatron --model_args hf=FOLDER,tp=2 ...
"""

import sys

import rad_megatron.eval.lm  # noqa: F401  registers "rad_megatron" with lm-eval
from rad_megatron.eval import TASKS_DIR


def main(argv: list[str]) -> list[str]:
    """`argv` with `--include_path <our task folder>` added, unless the user gives an --include_path of their own
    (lm-eval's CLI takes one folder; `rad eval --include-path` takes several)."""
    if len(argv) <= 1 or any(a == "--include_path" or a.startswith("--include_path=") for a in argv):
        return argv
    return [*argv, "--include_path", str(TASKS_DIR)]


if __name__ == "__main__":
    from lm_eval.__main__ import cli_evaluate

    sys.argv = main(sys.argv)
    cli_evaluate()
