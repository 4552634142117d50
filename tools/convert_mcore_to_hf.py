#!/usr/bin/env python
"""rad_megatron checkpoint (saved at any TP/PP) -> Hugging Face folder: a standard Llama folder (--to hf) for an
all-attention model, the MambaInLlama hybrid format (--to mil: model.layers.N.mamba.* + mamba_config.json) for a hybrid.

The same as `rad convert --ckpt CKPT --to hf|mil --out DIR [--tp N]` (rad_megatron/commands/convert.py), pinned to
this direction. One process is enough; under torchrun each TP rank loads its shard and rank 0 gathers and writes.
"""

import sys

from rad_megatron.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", "--mode", "export", *sys.argv[1:]]))
