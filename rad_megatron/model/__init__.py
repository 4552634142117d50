"""Model construction: per-layer layout -> Megatron hybrid pattern -> HybridModel with our spec."""

from rad_megatron.model.build import build_model, padded_vocab_size, transformer_config
from rad_megatron.model.forward import forward_logits

__all__ = ["build_model", "transformer_config", "padded_vocab_size", "forward_logits"]
