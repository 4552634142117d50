"""torchrun worker (2 ranks): `rad convert` in every direction at TP=2, then at TP=1 x PP=2, in this process.

argv[1]: a folder prepared by tests/distributed/test_convert_tp.py holding hf/ (untied GQA Llama), hf_tied/ (tied,
Llama-3.1 RoPE scaling), mil/ (a MambaInLlama hybrid folder) and ck_tp1/ (a standard-layout hybrid saved at TP=1).
Every output is written next to them; the test checks them at TP=1.
"""

import sys
from pathlib import Path

from megatron.core import parallel_state

from rad_megatron.cli import main
from rad_megatron.distributed import destroy_distributed


def convert(*args):
    code = main(["convert", *map(str, args)])
    if code != 0:
        raise SystemExit(f"rad convert {' '.join(map(str, args))} exited {code}")


if __name__ == "__main__":
    root = Path(sys.argv[1])
    # TP = world size = 2
    convert("--hf", root / "hf", "--out", root / "ck_tp2")
    convert("--ckpt", root / "ck_tp2", "--to", "hf", "--out", root / "hf_back")
    convert("--hf", root / "mil", "--out", root / "mil_tp2")
    convert("--ckpt", root / "mil_tp2", "--to", "mil", "--out", root / "mil_back")
    convert("--ckpt", root / "ck_tp1", "--out", root / "ck_re_tp2")
    # TP=1 x PP=2: Megatron's parallel state is rebuilt on the same process group
    parallel_state.destroy_model_parallel()
    convert("--hf", root / "hf_tied", "--out", root / "ck_pp2", "--tp", "1", "--pp", "2")
    convert("--ckpt", root / "mil_tp2", "--out", root / "mil_pp2", "--tp", "1", "--pp", "2")
    destroy_distributed()
