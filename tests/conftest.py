import os
import warnings

import pytest

warnings.filterwarnings("ignore")


@pytest.fixture(scope="session", autouse=True)
def _data_cache(tmp_path_factory):
    """Tokenised corpora of the tests (and of the commands they launch) go to a temporary folder, not ~/.cache."""
    os.environ["RAD_DATA_CACHE"] = str(tmp_path_factory.mktemp("rad_data_cache"))


@pytest.fixture(scope="session")
def dist():
    """A world of one with Megatron's parallel state (TP=1) and the CPU shims, shared by in-process tests."""
    from rad_megatron.distributed import ParallelConfig, init_distributed

    return init_distributed(ParallelConfig(tp=1, seed=1234))
