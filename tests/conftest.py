import warnings

import pytest

warnings.filterwarnings("ignore")


@pytest.fixture(scope="session")
def dist():
    """A world of one with Megatron's parallel state (TP=1) and the CPU shims, shared by in-process tests."""
    from rad_megatron.distributed import ParallelConfig, init_distributed

    return init_distributed(ParallelConfig(tp=1, seed=1234))
