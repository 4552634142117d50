"""torchrun worker: drive a fixed task list through probe.work_queue.run_tasks over every rank as one replica each.

argv[1]: output JSON (rank 0 writes which replica did which task, in the order results arrived); argv[2]: 'ok', or
'fail' (replica 1 raises on its second task: every rank must stop with an error instead of waiting forever)."""

import json
import sys
import time

import torch.distributed as dist

from rad_megatron.probe.work_queue import run_tasks


class Source:
    def __init__(self, n):
        self.todo, self.done = list(range(n)), []

    def next_task(self, replica):
        return {"i": self.todo.pop(0)} if self.todo else None

    def on_result(self, replica, task, result):
        self.done.append({"replica": replica, **task, **result})


if __name__ == "__main__":
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    calls = []

    def work(task):
        calls.append(task["i"])
        if sys.argv[2] == "fail" and rank == 1 and len(calls) == 2:
            raise ValueError("bad set")
        # replica 1 is ten times slower: it must get fewer tasks, not hold others up (the wide margin keeps the
        # outcome independent of scheduling noise on a loaded machine)
        time.sleep(0.02 if rank == 0 else 0.2)
        return {"square": task["i"] ** 2, "by": rank}

    source = Source(12) if rank == 0 else None
    run_tasks(source, work, dp=world, dp_rank=rank, is_main=rank == 0)
    if rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(source.done, f)
    dist.destroy_process_group()
