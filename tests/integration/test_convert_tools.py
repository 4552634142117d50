"""tools/ conversion scripts are `rad convert` pinned to one direction: run as a real process, an incomplete
checkpoint is one line on stderr, exit 2, nothing written."""

import subprocess
import sys

from rad_megatron.checkpoint.store import save_model
from rad_megatron.config import ModelConfig
from rad_megatron.model import build_model
from tests.helpers import ROOT


def test_export_tool_refuses_incomplete_checkpoint(dist, tmp_path):
    ck = tmp_path / "ck"
    save_model(build_model(ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=2,
                                       num_attention_heads=4, num_kv_heads=2)), ck)
    (ck / "__0_0.distcp").unlink()
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "tools/convert_mcore_to_hf.py"), "--ckpt", str(ck), "--to", "hf",
                           "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("rad ")]
    assert proc.returncode == 2 and lines == [
        f"rad convert: error: checkpoint '{ck}' is incomplete: shard file '__0_0.distcp' is missing (1 of 1 shard "
        f"files); copy the whole folder again or re-create it with rad convert"], proc.stderr[-2000:]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
