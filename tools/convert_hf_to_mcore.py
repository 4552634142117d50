#!/usr/bin/env python
"""HF Llama folder, MambaInLlama hybrid folder or GGUF -> rad_megatron checkpoint (dist_checkpointing) at any TP/PP.

The same as `rad convert --hf PATH --out CKPT [--tp N] [--pp M]` (rad_megatron/commands/convert.py), pinned to
this direction. TP x PP > 1 needs that many ranks:
    torchrun --nproc-per-node 4 tools/convert_hf_to_mcore.py --hf PATH --out CKPT --tp 2 --pp 2
"""

import sys

from rad_megatron.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "--mode", "import", *sys.argv[1:]]))
