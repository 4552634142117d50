"""torchrun worker, 1 teacher + 1 student: the student also builds the teacher locally and checks that what it
receives equals the teacher's top-k computed on its own rank (bit-exact), for top-k and full-vocabulary streams."""

import json
import sys
from pathlib import Path

import torch

from rad_megatron.checkpoint.hf_import import model_from_hf
from rad_megatron.checkpoint.hf_source import HFSource
from rad_megatron.distill.roles import RoleLayout, init_roles
from rad_megatron.distill.stream import StreamConfig, StudentReceiver, TeacherSender, teacher_targets
from rad_megatron.distributed import destroy_distributed

if __name__ == "__main__":
    out, hf = Path(sys.argv[1]), Path(sys.argv[2])
    role = init_roles(RoleLayout(teacher_ranks=1))
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 128, (2, 16), generator=g) for _ in range(5)]
    labels = [torch.roll(b, -1, 1) for b in batches]
    mask = torch.ones(2, 16)
    result = {}
    for k in (8, 0):
        cfg = StreamConfig(top_k=k, lookahead=2)
        if role.is_student:
            recv = StudentReceiver(role.teacher_for(0), 128, cfg, [(1, i, 2, 16) for i in range(5)])
            model, _ = model_from_hf(HFSource(hf), pg_collection=None)
            ok = True
            for i, b in enumerate(batches):
                vals, idx, nll, tok = recv.receive(1, i, b)
                lv, li, lnll, ltok = teacher_targets(model, b, labels[i], mask, cfg)
                ok &= torch.equal(vals, lv) and (idx is None and li is None or torch.equal(idx, li.long()))
                ok &= nll == lnll and tok == ltok
            result[f"k{k}"] = {"equal": bool(ok), "bytes": recv.bytes_received}
        else:
            model, _ = model_from_hf(HFSource(hf), pg_collection=role.pg_collection)
            sender = TeacherSender(cfg)
            for i, b in enumerate(batches):
                vals, idx, nll, tok = teacher_targets(model, b, labels[i], mask, cfg)
                sender.send(role.student_replica_ranks(0), 1, i, b, vals, idx, nll, tok)
            sender.flush()
    if role.is_main:
        out.write_text(json.dumps(result))
    destroy_distributed()
