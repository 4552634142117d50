"""`rad generate` in one process: plain, self-speculative and draft-model completions of a tiny Llama are the same
text; bad input (draft length < 1, a draft model with another tokenizer, contradictory draft flags) is one line on
stderr, exit 2, and nothing is written."""

from rad_megatron.cli import main
from tests.helpers import last_json, one_torch_thread, tiny_hf_llama  # noqa: F401 (autouse fixture)



def _rad(capsys, *args):
    code = main(["-v", "generate", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, [ln for ln in err.splitlines() if ln.startswith("rad ")]


def test_generate_plain_and_speculative(dist, tmp_path, capsys):
    target = tiny_hf_llama(tmp_path / "target", seed=41)
    draft = tiny_hf_llama(tmp_path / "draft", seed=42)
    common = ("--hf", target, "--prompt", "Tom has 3 apples.", "--max-new-tokens", 10, "--no-chat")
    code, plain, _ = _rad(capsys, *common)
    assert code == 0 and last_json(plain)["new_tokens"] == 10
    completion = plain.splitlines()[1]
    for extra in (("--skip", "1"), ("--draft-hf", draft, "--rollback", "recompute")):
        code, out, _ = _rad(capsys, *common, "--speculative", "--draft-len", 3, *extra)
        stats = last_json(out)["speculative"]
        assert code == 0 and out.splitlines()[1] == completion and stats["tokens"] == 10, extra
        assert 0 <= stats["accepted"] <= stats["drafted"]

    other = tiny_hf_llama(tmp_path / "other_tok", seed=43, vocab_size=100)
    before = sorted(p.name for p in tmp_path.iterdir())
    cases = [
        (("--speculative", "--skip", "1", "--draft-len", 0), "--draft-len 0: the draft length must be >= 1"),
        (("--speculative", "--draft-hf", other), "has another tokenizer (100 tokens"),
        (("--speculative",), "--speculative needs exactly one draft"),
        (("--speculative", "--skip", "1", "--draft-hf", draft), "got --skip and --draft-hf"),
        (("--skip", "1"), "--skip drafts for speculative decoding: add --speculative"),
    ]
    for extra, message in cases:
        code, _, lines = _rad(capsys, *common, *extra)
        assert code == 2 and len(lines) == 1 and message in lines[0], (extra, lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
