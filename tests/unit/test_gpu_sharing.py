"""Several ranks on one GPU (teacher and student processes sharing a device): local rank r takes
cuda:(r % device_count), and a node with more ranks than GPUs uses gloo (NCCL refuses two ranks of a communicator on
one device), with the teacher -> student stream staged through host memory. Checked here with a pretend GPU."""

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
