"""Checkpoint formats: key maps as pure functions over state dicts (HF Llama, MIL hybrid), TP sharding, stores."""
