"""`rad eval` end to end: under torchrun at TP=2 on a tiny random Llama, every logged response of our GSM8K and
CRUX-O tasks and of local tasks equals lm-eval's own `hf` backend on the same folder (generations identical,
log-likelihoods within 1e-4), the task scores are what the scorers say of the logged responses, rank 0 alone writes
the results; bad input is one line and exit 2."""

import json

import pytest

from rad_megatron.eval import TASKS_DIR, scorers
from tests.helpers import SHARED, last_json, rad, tiny_hf_llama
from tests.unit.test_eval_lm import assert_same_responses, responses, write_tiny_tasks

GSM8K = SHARED / "data" / "gsm8k" / "test.jsonl"
CRUX = SHARED / "data" / "cruxeval" / "cruxeval.jsonl"
LIMIT = 3
GEN_TOKS = 40  # every generation task gets this budget (both backends), to keep the test short


def _error_lines(proc):
    return [ln for ln in proc.stderr.splitlines() if ln.startswith("rad ")]


@pytest.mark.skipif(not (GSM8K.is_file() and CRUX.is_file()), reason="shared GSM8K/CRUXEval jsonl absent")
def test_tp2_matches_hf_backend_and_scores_its_responses(tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    folder = tiny_hf_llama(tmp_path / "hf", seed=5, max_position_embeddings=1024)  # char tokens: room for GSM8K
    tasks = write_tiny_tasks(tmp_path / "tasks")
    out = tmp_path / "results.json"
    names = "gsm8k,cruxeval,tiny_mc,tiny_ppl,tiny_gen"
    proc = rad("eval", "--hf", str(folder), "--tasks", names, "--include-path", str(tasks), "--limit", str(LIMIT),
               "--no-chat", "--gsm8k-data", str(GSM8K), "--cruxeval-data", str(CRUX), "--batch-size", "2",
               "--max-gen-toks", str(GEN_TOKS), "--confirm-run-unsafe-code", "--log-samples", "--out", str(out),
               nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = last_json(proc.stdout)
    assert proc.stdout.count('{"results"') == 1  # rank 0 alone reports
    ours = json.loads(out.read_text())
    assert ours["rad"]["rad_tp"] == 2 and printed["results"] == {
        t: {k.split(",")[0].replace("sample_len", "n_docs"): v for k, v in m.items()
            if isinstance(v, (int, float)) and "_stderr" not in k} for t, m in ours["results"].items()}

    manager = TaskManager(include_path=[str(TASKS_DIR), str(tasks)], include_defaults=False,
                          metadata={"gsm8k_data": str(GSM8K), "cruxeval_data": str(CRUX)})
    ref = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": str(folder), "dtype": "float32",
                                                          "device": "cpu"},
                                  tasks=["rad_gsm8k", "rad_cruxeval_o", "tiny_mc", "tiny_ppl", "tiny_gen"],
                                  task_manager=manager, limit=LIMIT, batch_size=1, log_samples=True,
                                  confirm_run_unsafe_code=True, bootstrap_iters=0,
                                  gen_kwargs={"max_gen_toks": GEN_TOKS})
    assert_same_responses(responses(ours), responses(ref))

    gsm = ours["samples"]["rad_gsm8k"]
    assert len(gsm) == LIMIT and printed["results"]["rad_gsm8k"]["n_docs"] == LIMIT
    for s in gsm:
        assert s["exact_match"] == float(scorers.gsm8k_correct(s["resps"][0][0], s["doc"]["answer"]))
    for s in ours["samples"]["rad_cruxeval_o"]:
        assert s["pass@1"] == float(scorers.crux_correct(s["doc"]["code"], s["doc"]["input"], s["resps"][0][0]))
    assert printed["results"]["rad_gsm8k"]["exact_match"] == sum(s["exact_match"] for s in gsm) / LIMIT


@pytest.mark.parametrize("extra, message", [
    (["--tasks", "gsm8k", "--gsm8k-data", "/nope/test.jsonl"],
     "rad eval: error: --gsm8k-data /nope/test.jsonl: no such file; give a local .jsonl or 'hub' for openai/gsm8k"),
    (["--tasks", "cruxeval"],
     "rad eval: error: task rad_cruxeval_o executes model-written code to score it; pass "
     "--confirm-run-unsafe-code to allow that (it runs in a separate, time- and memory-limited Python process)"),
    (["--tasks", "gsm8k", "--limit", "0"], "rad eval: error: --limit 0: give a positive number of documents per task"),
])
def test_bad_input_is_one_line(extra, message, capsys):
    from rad_megatron.cli import main

    assert main(["-v", "eval", *extra]) == 2  # in-process: these fail before anything heavy is imported
    assert [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("rad ")] == [message]


def test_unknown_task_is_one_line_with_a_suggestion(tmp_path):
    out = tmp_path / "r.json"
    proc = rad("eval", "--tasks", "gsm8k,gsm8kk", "--out", str(out))
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = _error_lines(proc)
    assert len(lines) == 1 and lines[0].startswith("rad eval: error: --tasks: unknown task 'gsm8kk' (did you mean '")
    assert not out.exists()


def test_existing_out_is_not_overwritten(tmp_path, capsys):
    from rad_megatron.cli import main

    out = tmp_path / "r.json"
    out.write_text("keep")
    assert main(["-v", "eval", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"rad eval: error: refusing to overwrite '{out}'; choose another --out or pass --force")
    assert out.read_text() == "keep"
