"""Load a Hugging Face Llama (folder or GGUF) into a freshly built hybrid model at this rank's TP shard."""

from __future__ import annotations

import torch

from rad_megatron.checkpoint.hf_hybrid import config_from_hybrid, hybrid_to_mcore, is_hybrid_folder
from rad_megatron.checkpoint.hf_llama import hf_to_mcore
from rad_megatron.checkpoint.hf_source import HFSource
from rad_megatron.checkpoint.mil import config_from_mil, is_mil_folder, read_mil_config
from rad_megatron.checkpoint.shard import load_full_state_dict
from rad_megatron.config import ModelConfig
from rad_megatron.model import build_model


def model_from_hf(source: HFSource, tp: int = 1, tp_rank: int = 0, dtype=torch.float32, layout=None,
                  pg_collection=None, pp: int = 1, **build):
    """Build the Megatron model for `source`'s config and load its weights; returns (model, ModelConfig).
    With pp > 1 the model is this rank's pipeline stage (for saving a checkpoint at that PP size); `build` holds
    build_model's other runtime options (recompute, sequence_parallel)."""
    to_mcore = hf_to_mcore
    if is_mil_folder(source.folder):
        cfg = config_from_mil(source.config(), read_mil_config(source.folder))
    elif is_hybrid_folder(source.folder):
        cfg, to_mcore = config_from_hybrid(source.config()), hybrid_to_mcore
    else:
        cfg = ModelConfig.from_hf(source.config())
    if layout is not None:
        cfg.layout = list(layout)
        cfg.__post_init__()
    model = build_model(cfg, tp=tp, dtype=dtype, pg_collection=pg_collection, pp=pp, **build)
    load_full_state_dict(model, to_mcore(source.state_dict(), cfg), tp, tp_rank)
    return model.eval(), cfg
