"""rad_megatron: Redundancy-Aware Distillation on Megatron-Core."""
__version__ = "0.1.0"
