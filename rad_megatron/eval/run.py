"""`rad eval` without the argument parsing: task names -> lm-eval tasks, one simple_evaluate call, results out.

Our tasks answer to short names (gsm8k, cruxeval); any other name is looked up among lm-eval's own tasks, which
costs an index of lm-eval's ~15k task files, so it is only built when a name is not ours.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from rad_megatron.errors import RadError, closest
from rad_megatron.eval import TASKS_DIR, data

ALIASES = {"gsm8k": "rad_gsm8k", "cruxeval": "rad_cruxeval_o", "cruxeval_o": "rad_cruxeval_o",
           "crux": "rad_cruxeval_o"}
DATA_OF_TASK = {"rad_gsm8k": "gsm8k", "rad_cruxeval_o": "cruxeval"}
EXECUTES_CODE = {"rad_cruxeval_o"}


def parse_tasks(spec: str) -> list[str]:
    """'gsm8k,cruxeval' -> ['rad_gsm8k', 'rad_cruxeval_o'] (other names pass through for lm-eval to resolve)."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise RadError("--tasks is empty; give e.g. --tasks gsm8k,cruxeval")
    return list(dict.fromkeys(ALIASES.get(n, n) for n in names))


def task_manager(tasks: list[str], sources: dict[str, str | None], include_paths=()):
    """lm-eval's TaskManager over our task folder and `include_paths`, plus lm-eval's own tasks only if a name is
    found in none of those; unknown names fail."""
    from lm_eval.tasks import TaskManager

    for folder in include_paths:
        if not Path(folder).is_dir():
            raise RadError(f"--include-path {folder}: no such folder")
    metadata = {f"{name}_data": src for name, src in sources.items() if src is not None}
    paths = [str(TASKS_DIR), *map(str, include_paths)]
    manager = TaskManager(include_path=paths, include_defaults=False, metadata=metadata)
    if not set(tasks) <= set(manager.all_tasks):
        manager = TaskManager(include_path=paths, include_defaults=True, metadata=metadata)
    known = set(manager.all_tasks)
    for name in tasks:
        if name not in known:
            raise RadError(f"--tasks: unknown task '{name}'{closest(name, [*ALIASES, *known])}; ours are "
                           f"{', '.join(sorted(set(ALIASES) - {'crux', 'cruxeval_o'}))}, or give an lm-eval task name")
    return manager


def check_inputs(tasks: list[str], sources: dict[str, str | None], confirm_unsafe: bool) -> None:
    """Everything about the tasks that can be wrong, checked before a model is loaded."""
    for task in tasks:
        if task in DATA_OF_TASK:
            name = DATA_OF_TASK[task]
            data.check_source(name, sources.get(name))
        if task in EXECUTES_CODE and not confirm_unsafe:
            raise RadError(f"task {task} executes model-written code to score it; pass --confirm-run-unsafe-code "
                           f"to allow that (it runs in a separate, time- and memory-limited Python process)")


def evaluate(lm, tasks: list[str], manager, limit: int | None = None, num_fewshot: int | None = None,
             chat: bool = True, confirm_unsafe: bool = False, log_samples: bool = False,
             gen_kwargs: dict | None = None, seed: int = 1234) -> dict | None:
    """lm-eval's simple_evaluate on a ready model; results on the reporting rank, None elsewhere."""
    import lm_eval

    return lm_eval.simple_evaluate(
        model=lm, tasks=tasks, task_manager=manager, limit=limit, num_fewshot=num_fewshot,
        apply_chat_template=chat, fewshot_as_multiturn=chat, confirm_run_unsafe_code=confirm_unsafe,
        log_samples=log_samples, gen_kwargs=gen_kwargs or None, random_seed=seed, numpy_random_seed=seed,
        torch_random_seed=seed, fewshot_random_seed=seed)


def summary(results: dict) -> dict[str, dict[str, float]]:
    """{task: {metric: value, 'n_docs': N}} without stderr entries or lm-eval's ',<filter>' suffixes."""
    out = {}
    for task, metrics in results["results"].items():
        out[task] = {key.split(",")[0].replace("sample_len", "n_docs"): value for key, value in metrics.items()
                     if isinstance(value, (int, float)) and "_stderr" not in key}
    return out


def write_results(path: Path, results: dict) -> None:
    """JSON (non-JSON values as lm-eval writes them), written to a temporary sibling and renamed into place."""
    from lm_eval.utils import handle_non_serializable

    text = json.dumps(results, indent=2, default=handle_non_serializable)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
