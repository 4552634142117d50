#!/usr/bin/env python
"""Re-save a rad_megatron checkpoint at another TP/PP size (rad_meta.json history and tokenizer kept).

The same as `rad convert --ckpt CKPT --out CKPT2 [--tp N] [--pp M]` (rad_megatron/commands/convert.py), pinned to
this direction. Any checkpoint already loads at any TP; re-saving at TP x PP = N needs N ranks:
    torchrun --nproc-per-node 2 tools/reshard.py --ckpt CKPT --out CKPT2 --tp 2
"""

import sys

from rad_megatron.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "--mode", "reshard", *sys.argv[1:]]))
