"""The study's accuracy phase reuses saved scores, reports them before it scores anything new (so the published
report never loses a measured score while the rest runs), and rescores a save made with another budget."""

import json
from types import SimpleNamespace

from rad_megatron.study import accuracy, run


def test_accuracy_phase_reports_saved_scores_first_and_scores_only_the_rest(tmp_path, monkeypatch):
    questions = [{"question": f"q{i}", "answer": "#### 1"} for i in range(2)]
    for name in ["a", "b", "c", "unfinished"]:
        (tmp_path / "runs" / name).mkdir(parents=True)
    for name in ["a", "b", "c"]:
        (tmp_path / "runs" / name / "done.json").write_text("{}")
    saves = {"teacher": 2, "a": 2, "c": 5}  # c was scored with another max_new_tokens: stale
    for name, budget in saves.items():
        (tmp_path / "accuracy").mkdir(exist_ok=True)
        (tmp_path / "accuracy" / f"{name}.json").write_text(json.dumps(
            {"n": 2, "max_new_tokens": budget, "flexible": 0.5, "seconds": 1.0, "from": "saved"}))
    events = []

    def fake_score(model, tok, qs, max_new_tokens, batch_size):
        events.append(("score", model))
        return {"n": len(qs), "max_new_tokens": max_new_tokens, "flexible": 0.0, "seconds": 2.0, "from": "new"}

    monkeypatch.setattr(accuracy, "gsm8k_accuracy", fake_score)
    monkeypatch.setattr(run, "load_student", lambda base, folder: folder.name)
    cfg = SimpleNamespace(accuracy=SimpleNamespace(limit=2, runs=None, max_new_tokens=2, batch_size=4))
    plan = [SimpleNamespace(name=n) for n in ["a", "b", "c", "unfinished"]]
    result = run._accuracy(cfg, "base", None, questions, tmp_path, plan, print,
                           on_result=lambda r: events.append(("report", sorted(r))))

    assert events == [("report", ["a", "teacher"]), ("score", "b"), ("report", ["a", "b", "teacher"]),
                      ("score", "c")]  # the last report is the caller's, with the returned dict
    assert list(result) == ["teacher", "a", "b", "c"]
    assert [result[n]["from"] for n in result] == ["saved", "saved", "new", "new"]
    assert json.loads((tmp_path / "accuracy" / "c.json").read_text())["max_new_tokens"] == 2  # rewritten

    events.clear()  # everything is saved now: nothing scored, and the caller's report is the only one
    again = run._accuracy(cfg, "base", None, questions, tmp_path, plan, print,
                          on_result=lambda r: events.append(("report", sorted(r))))
    assert events == [] and {n: r["from"] for n, r in again.items()} == {n: r["from"] for n, r in result.items()}


def test_study_with_a_wrong_input_path_fails_before_touching_the_folder(tmp_path):
    from tests.helpers import ROOT, rad

    out = tmp_path / "study"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    for field in ["accuracy.path", "data.path"]:
        res = rad("study", "--config", str(ROOT / "configs/study_smollm2.yaml"), "--out", str(out), "--force",
                  f"{field}={tmp_path / 'missing.jsonl'}")
        assert res.returncode == 2 and f"config.{field} " in res.stderr, res.stderr[-2000:]
        assert len(res.stderr.strip().splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["mine.txt"]  # --force deleted nothing
