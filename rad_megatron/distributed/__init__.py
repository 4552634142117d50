"""Process groups, roles and the CPU backend for Megatron-Core: everything that touches torch.distributed setup."""

from rad_megatron.distributed.init import DistContext, ParallelConfig, destroy_distributed, init_distributed

__all__ = ["DistContext", "ParallelConfig", "init_distributed", "destroy_distributed"]
