"""The lm-eval model "rad_megatron" against lm-eval's own `hf` backend on the same tiny random Llama folder: per-request
log-likelihoods (multiple choice, rolling perplexity over several windows) equal within 1e-4 and identical greedy
generations, through lm-eval's simple_evaluate on local tasks. Batching is exact for hybrid (Mamba) models too, and
the engine's stop callback ends rows where it says."""

import json
import math

import pytest
import torch

from rad_megatron.eval.lm import RadLM
from tests.helpers import SHARED, tiny_hf_llama, tiny_tokenizer

TOL = 1e-4
GEN_STOPS = ["\n\n", "mm", "oo"]

MC_DOCS = [
    {"q": "The cat sat on the", "choices": [" mat", " hat", " moon"], "label": 0},
    {"q": "2 + 2 =", "choices": [" 4", " 5", " twenty-two"], "label": 0},
    {"q": "Paris is in", "choices": [" France", " Spain"], "label": 0},
]
PPL_DOCS = [{"text": "The quick brown fox jumps over the lazy dog. " * 14},  # 630 chars: three 256-token windows
            {"text": "Short text."}]
GEN_DOCS = [{"prompt": p} for p in ("Once upon a time", "Hi there", "Question: 2+2?\nAnswer:", "def f(x):\n    return",
                                    "A prompt about nothing")]


def write_tiny_tasks(folder):
    """Three local lm-eval tasks (multiple choice, rolling log-likelihood, generate-until) over jsonl files."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, docs in (("mc", MC_DOCS), ("ppl", PPL_DOCS), ("gen", GEN_DOCS)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    common = "dataset_path: json\ntest_split: test\nmetadata:\n  version: 1.0\n"
    (folder / "tiny_mc.yaml").write_text(
        f"task: tiny_mc\n{common}dataset_kwargs:\n  data_files:\n    test: {folder / 'mc.jsonl'}\n"
        "output_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\n"
        "target_delimiter: ''\nmetric_list:\n  - metric: acc\n")
    (folder / "tiny_ppl.yaml").write_text(
        f"task: tiny_ppl\n{common}dataset_kwargs:\n  data_files:\n    test: {folder / 'ppl.jsonl'}\n"
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n")
    stops = "".join(f"    - {json.dumps(s)}\n" for s in GEN_STOPS)
    (folder / "tiny_gen.yaml").write_text(
        f"task: tiny_gen\n{common}dataset_kwargs:\n  data_files:\n    test: {folder / 'gen.jsonl'}\n"
        "output_type: generate_until\ndoc_to_text: '{{prompt}}'\ndoc_to_target: ''\n"
        f"generation_kwargs:\n  until:\n{stops}  max_gen_toks: 24\n  do_sample: false\n"
        "metric_list:\n  - metric: bypass\n")
    return folder


def responses(results) -> dict:
    """{(task, doc_id): [per-request responses]} from simple_evaluate's logged samples."""
    return {(task, s["doc_id"]): [r[0] for r in s["resps"]] for task, samples in results["samples"].items()
            for s in samples}


def assert_same_responses(ours: dict, ref: dict, tol: float = TOL):
    """Strings equal; log-likelihoods within `tol`. A rolling total sums hundreds of tokens and lm-eval's hf backend
    adds them in float32, whose resolution at |x| ~ 3000 is 2.4e-4, so totals get tol + 1e-7 |x| (a few ulp)."""
    assert ours.keys() == ref.keys()
    for key in ref:
        for a, b in zip(ours[key], ref[key], strict=True):
            if isinstance(b, str):
                assert a == b, (key, a, b)
            elif isinstance(b, (list, tuple)):  # (log-likelihood, is_greedy)
                assert abs(a[0] - b[0]) <= tol and bool(a[1]) == bool(b[1]), (key, a, b)
            else:
                assert abs(a - b) <= tol + 1e-7 * abs(b), (key, a, b)


def evaluate_tiny(model, tasks_dir, batch_size, **kw):
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(model=model, tasks=["tiny_mc", "tiny_ppl", "tiny_gen"], batch_size=batch_size,
                                   task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False),
                                   log_samples=True, bootstrap_iters=0, **kw)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    return tiny_hf_llama(root / "hf", seed=3), write_tiny_tasks(root / "tasks")


@pytest.fixture(scope="module")
def hf_reference(tiny):
    folder, tasks = tiny
    return evaluate_tiny("hf", tasks, 1, model_args={"pretrained": str(folder), "dtype": "float32", "device": "cpu"})


def test_parity_with_lm_eval_hf_backend(dist, tiny, hf_reference):
    folder, tasks = tiny
    ours = evaluate_tiny(RadLM(hf=str(folder), batch_size=4), tasks, 4)
    got, ref = responses(ours), responses(hf_reference)
    assert len(ref) == len(MC_DOCS) + len(PPL_DOCS) + len(GEN_DOCS)
    assert_same_responses(got, ref)
    gens = [got[("tiny_gen", i)][0] for i in range(len(GEN_DOCS))]
    assert any(len(g) < 24 for g in gens), "no generation was ended by a stop string; the stops are not tested"
    assert all(g for g in gens)
    assert ours["results"]["tiny_ppl"]["word_perplexity,none"] == pytest.approx(
        hf_reference["results"]["tiny_ppl"]["word_perplexity,none"], rel=1e-4)


def test_greedy_flag_and_empty_context_match_hf(dist, tiny):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    folder, _ = tiny
    ours, hf = RadLM(hf=str(folder), batch_size=3), HFLM(pretrained=str(folder), dtype="float32", device="cpu")
    gen = Instance("generate_until", {}, ("Once upon a time", {"until": ["\n\n"], "max_gen_toks": 6}), 0)
    greedy = ours.generate_until([gen])[0]
    reqs = [Instance("loglikelihood", {}, args, i) for i, args in enumerate(
        [("Once upon a time", greedy), ("Once upon a time", greedy[:-1] + chr(ord(greedy[-1]) ^ 1)),
         ("", "hello world"), ("x" * 300, "yz")])]  # the last one is cut from the left to max_length
    a, b = ours.loglikelihood(reqs), hf.loglikelihood(reqs)
    assert [g for _, g in a] == [g for _, g in b] == [True, False, False, False]
    assert all(abs(x - y) <= TOL and math.isfinite(x) for (x, _), (y, _) in zip(a, b))


def test_batching_is_exact_for_a_hybrid_model(dist):
    from lm_eval.api.instance import Instance

    from rad_megatron.config import ModelConfig
    from rad_megatron.model import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=3, num_attention_heads=4,
                      num_kv_heads=2, layout=["attention", "mamba", "mamba"], mamba={"chunk_size": 8})
    model, tok = build_model(cfg).eval(), tiny_tokenizer()
    texts = ["a", "The cat", "A context over 2 SSM chunks"]  # 1, 7 and 27 tokens: chunk size 8 pads differently
    reqs = [Instance("loglikelihood", {}, (t, " and more"), i) for i, t in enumerate(texts)]
    gens = [Instance("generate_until", {}, (t, {"until": ["zz"], "max_gen_toks": 6}), i) for i, t in enumerate(texts)]
    one = RadLM.from_model(model, tok, dist, batch_size=1)
    many = RadLM.from_model(model, tok, dist, batch_size=3)
    for (x, gx), (y, gy) in zip(one.loglikelihood(reqs), many.loglikelihood(reqs)):
        assert abs(x - y) <= 1e-5 and gx == gy
    assert one.generate_until(gens) == many.generate_until(gens)


def test_engine_stop_callback_ends_each_row_where_it_says(dist):
    from rad_megatron.inference.engine import generate

    from rad_megatron.config import ModelConfig
    from rad_megatron.model import build_model

    torch.manual_seed(1)
    cfg = ModelConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_layers=2, num_attention_heads=4,
                      num_kv_heads=2)
    model = build_model(cfg).eval()
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    full = generate(model, prompts, 12)
    stopped = generate(model, prompts, 12, stop=lambda row, new: len(new) >= 3 + 2 * row)
    assert [len(s) for s in stopped] == [3, 5, 7]
    assert all(s == f[: len(s)] for s, f in zip(stopped, full))


def test_unknown_model_args_are_named(dist, tiny):
    from rad_megatron.errors import RadError

    with pytest.raises(RadError, match="unknown --model_args pretrained for rad_megatron; known: ckpt, hf, tp"):
        RadLM(hf=str(tiny[0]), pretrained="x")


def test_checkpoint_source_scores_like_its_hf_folder_and_a_missing_shard_is_named(dist, tiny, tmp_path):
    from lm_eval.api.instance import Instance
    from transformers import AutoTokenizer

    from rad_megatron.checkpoint.hf_import import model_from_hf
    from rad_megatron.checkpoint.hf_source import HFSource
    from rad_megatron.checkpoint.store import save_model
    from rad_megatron.errors import RadError

    folder = tiny[0]
    ckpt = tmp_path / "ckpt"
    save_model(model_from_hf(HFSource(folder))[0], ckpt, tokenizer=AutoTokenizer.from_pretrained(folder))
    reqs = [Instance("loglikelihood", {}, ("The cat sat", " on the mat"), 0)]
    assert RadLM(ckpt=str(ckpt)).loglikelihood(reqs) == RadLM(hf=str(folder)).loglikelihood(reqs)
    for shard in ckpt.glob("*.distcp"):
        shard.unlink()
    with pytest.raises(RadError, match=f"checkpoint '{ckpt}' is incomplete: shard file"):
        RadLM(ckpt=str(ckpt))


@pytest.mark.skipif(not (SHARED / "data" / "cruxeval" / "cruxeval.jsonl").is_file(), reason="shared CRUXEval absent")
def test_chat_template_parity_with_hf_backend(dist, tiny):
    """With the chat template on: system turn, multi-turn few-shot and CRUX-O's opened answer block (gen_prefix)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from rad_megatron.eval import TASKS_DIR

    folder, tasks = tiny
    crux = str(SHARED / "data" / "cruxeval" / "cruxeval.jsonl")

    def run(model, batch_size, **kw):
        manager = TaskManager(include_path=[str(TASKS_DIR), str(tasks)], include_defaults=False,
                              metadata={"cruxeval_data": crux})
        return responses(lm_eval.simple_evaluate(
            model=model, tasks=["rad_cruxeval_o", "tiny_mc"], task_manager=manager, limit=2, batch_size=batch_size,
            apply_chat_template=True, fewshot_as_multiturn=True, num_fewshot=1, confirm_run_unsafe_code=True,
            log_samples=True, bootstrap_iters=0, gen_kwargs={"max_gen_toks": 12}, **kw))

    ref = run("hf", 1, model_args={"pretrained": str(folder), "dtype": "float32", "device": "cpu"})
    assert_same_responses(run(RadLM(hf=str(folder), batch_size=2), 2), ref)
