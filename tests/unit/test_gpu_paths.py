"""GPU code paths checkable without a GPU. Several ranks on one GPU (teacher and student processes sharing a
device): local rank r takes cuda:(r % device_count), and a node with more ranks than GPUs uses gloo (NCCL refuses two
ranks of a communicator on one device), with the teacher -> student stream staged through host memory (checked with
a pretend GPU). mamba_ssm installed without its CUDA extension still gives its Triton SSD scan."""

import sys

import torch

from rad_megatron.distill.stream import wire_device
from rad_megatron.distributed import init as dist_init


def test_ranks_share_gpus_round_robin_and_fall_back_to_gloo(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr("rad_megatron.distributed.cpu.apply_no_te_shims", lambda: None)
    assert dist_init.select_device(1, {"LOCAL_WORLD_SIZE": "2"}) == (torch.device("cuda", 0), "gloo")
    assert dist_init.select_device(0, {"LOCAL_WORLD_SIZE": "1"}) == (torch.device("cuda", 0), "nccl")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert dist_init.select_device(3, {"LOCAL_WORLD_SIZE": "8"}) == (torch.device("cuda", 3), "nccl")
    assert chosen == [0, 0, 3]
    assert dist_init.local_world_size({"SLURM_NTASKS_PER_NODE": "4"}) == 4 and dist_init.local_world_size({}) == 1


def test_stream_stages_cuda_tensors_through_host_over_gloo(dist):
    assert torch.distributed.get_backend() == "gloo"
    assert wire_device(torch.device("cuda", 0)) == torch.device("cpu")
    assert wire_device("cpu") == torch.device("cpu")


def test_fused_scan_found_without_mamba_ssm_package_init(tmp_path, monkeypatch):
    """A mamba_ssm whose package __init__ fails (as without its CUDA extension) but whose Triton SSD module imports."""
    from rad_megatron.ssm import ssd

    pkg = tmp_path / "mamba_ssm"
    (pkg / "ops" / "triton").mkdir(parents=True)
    (pkg / "__init__.py").write_text("import selective_scan_cuda  # the CUDA extension, absent\n")
    (pkg / "ops" / "__init__.py").write_text("")
    (pkg / "ops" / "triton" / "__init__.py").write_text("")
    (pkg / "ops" / "triton" / "ssd_combined.py").write_text("def mamba_chunk_scan_combined(*a, **k):\n"
                                                            "    return 'fused'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    saved = {k: v for k, v in sys.modules.items() if k == "mamba_ssm" or k.startswith("mamba_ssm.")}
    try:
        fn, how = ssd._import_fused_scan()
        assert fn() == "fused" and "package __init__ skipped" in how
    finally:
        for k in [k for k in sys.modules if k == "mamba_ssm" or k.startswith("mamba_ssm.")]:
            del sys.modules[k]
        sys.modules.update(saved)
