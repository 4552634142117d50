"""The task scorers on hand-made right and wrong answers, on the reference answers of the real data, and the
local-or-hub data checks and task-name parsing of `rad eval`."""

import json

import pytest

from rad_megatron.errors import RadError
from rad_megatron.eval import data, scorers
from rad_megatron.eval.run import parse_tasks
from tests.helpers import SHARED

GSM8K = SHARED / "data" / "gsm8k" / "test.jsonl"
CRUX = SHARED / "data" / "cruxeval" / "cruxeval.jsonl"
needs_data = pytest.mark.skipif(not (GSM8K.is_file() and CRUX.is_file()), reason="shared GSM8K/CRUXEval jsonl absent")

GOLD = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18"


@pytest.mark.parametrize("response, flexible, strict", [
    ("She sells 9 eggs, 9 * 2 = 18.\n#### 18", True, True),
    ("The answer is 18.", True, True),
    ("The final answer is: $18.00", True, True),
    ("She makes 18 dollars", True, False),               # last number, no stated answer: flexible only
    ("#### 18\n#### 18\n#### 18", True, True),
    ("9 * 2 = 18, so she makes $19.", False, False),     # the last number is the answer, and it is wrong
    ("#### 17", False, False),
    ("16 - 3 - 4 = 9 eggs, 9 * 2 = 18 ... no wait, 20", False, False),  # last number wins
    ("The answer is 9. Then 18.", False, False),         # a stated answer beats a later bare number
    ("", False, False),
    ("I do not know", False, False),
])
def test_gsm8k_hand_made(response, flexible, strict):
    assert scorers.gsm8k_correct(response, GOLD) is flexible
    assert scorers.gsm8k_correct(response, GOLD, strict=True) is strict


def test_gsm8k_numbers_compare_by_value():
    gold = "... #### 1000"
    for right in ("#### 1,000", "The answer is $1000.", "#### 1000.00", "it costs 1000"):
        assert scorers.gsm8k_correct(right, gold), right
    for wrong in ("#### 100", "#### -1000", "#### 10000"):
        assert not scorers.gsm8k_correct(wrong, gold), wrong
    assert scorers.gsm8k_correct("#### -3", "x #### -3")
    with pytest.raises(ValueError):
        scorers.gsm8k_gold("no marker")


@needs_data
def test_gsm8k_reference_solutions_score_right_and_shifted_ones_wrong():
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()]
    assert len(rows) == 1319
    assert all(scorers.gsm8k_correct(r["answer"], r["answer"], strict=True) for r in rows)
    shifted = [r["answer"].rsplit("####", 1)[0] + "#### " + rows[(i + 1) % len(rows)]["answer"].split("####")[-1]
               for i, r in enumerate(rows)]
    right = sum(scorers.gsm8k_correct(s, r["answer"]) for s, r in zip(shifted, rows))
    # neighbouring problems share an answer only by coincidence
    assert right < 0.02 * len(rows)


@pytest.mark.parametrize("generation, expected", [
    ("'HE!'", True),                           # what the prompt asks for: the bare literal
    ("'HE!'\n[/ANSWER]", True),
    ("assert f('hello', 2) == 'HE!'", True),    # the model repeated the whole assertion
    ("[ANSWER]\nassert f('hello', 2) == 'HE!'\n[/ANSWER]", True),
    ("\"HE!\"", True),                         # same value, other quotes
    ("HE!", False),                            # not a literal
    ("'HE'", False),
    ("'he!'", False),
    ("", False),
    ("1) or (True", False),                    # cannot rewrite the assertion into one that always holds
    ("True or 1", False),
])
def test_crux_hand_made(generation, expected):
    code = "def f(s, n):\n    return s.upper()[:n] + '!'"
    assert scorers.crux_correct(code, "'hello', 2", generation) is expected


def test_crux_time_and_crash_are_wrong():
    assert scorers.crux_correct("def f(x):\n    while True:\n        pass", "1", "1", timeout=1.0) is False
    assert scorers.crux_correct("def f(x):\n    return 1 / x", "0", "0") is False
    assert scorers.crux_correct("def f(x):\n    return [x] * 3", "7", "[7, 7, 7]") is True


@needs_data
def test_crux_reference_outputs_pass_and_swapped_ones_fail():
    rows = [json.loads(line) for line in CRUX.read_text().splitlines()][:12]
    assert all(set(r) >= {"code", "input", "output"} for r in rows)
    assert all(scorers.crux_correct(r["code"], r["input"], r["output"]) for r in rows)
    swapped = [scorers.crux_correct(r["code"], r["input"], rows[(i + 1) % len(rows)]["output"])
               for i, r in enumerate(rows)]
    assert not any(swapped)


def test_data_source_errors_name_the_flag(tmp_path):
    with pytest.raises(RadError, match=r"^--gsm8k-data .*nope.jsonl: no such file; give a local .jsonl or 'hub'"):
        data.check_source("gsm8k", str(tmp_path / "nope.jsonl"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(RadError, match=r"^--cruxeval-data .*x.csv: expected a .jsonl, .json, .parquet file"):
        data.check_source("cruxeval", str(tmp_path / "x.csv"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "solution": "s"}) + "\n")
    with pytest.raises(RadError, match=r"rows lack the field\(s\) answer \(a gsm8k file needs question, answer\)"):
        data.load("gsm8k", str(bad))
    data.check_source("gsm8k", "hub")  # the hub is only contacted when the task loads


def test_local_gsm8k_gets_its_train_split_for_fewshot(tmp_path):
    row = {"question": "1+1?", "answer": "#### 2"}
    (tmp_path / "test.jsonl").write_text(json.dumps(row) + "\n")
    assert set(data.load("gsm8k", str(tmp_path / "test.jsonl"))) == {"test"}
    (tmp_path / "train.jsonl").write_text((json.dumps(row) + "\n") * 3)
    ds = data.load("gsm8k", str(tmp_path / "test.jsonl"))
    assert set(ds) == {"test", "train"} and len(ds["train"]) == 3


def test_task_aliases():
    assert parse_tasks("gsm8k, cruxeval") == ["rad_gsm8k", "rad_cruxeval_o"]
    assert parse_tasks("crux,cruxeval_o,arc_easy") == ["rad_cruxeval_o", "arc_easy"]
    with pytest.raises(RadError, match="--tasks is empty"):
        parse_tasks(" , ")
