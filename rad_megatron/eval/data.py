"""Where our tasks read their documents: a local jsonl (offline) or the Hugging Face hub dataset.

lm-eval hands a task's `custom_dataset` function the run's metadata; the key `<task>_data` (e.g. `gsm8k_data`) holds
a path to a .jsonl / .json / .parquet file, or 'hub' (also the default when the key is absent). `rad eval` sets the
keys from --gsm8k-data / --cruxeval-data; with lm-eval's own CLI pass `--metadata '{"gsm8k_data": "PATH"}'`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rad_megatron.errors import RadError


@dataclass(frozen=True)
class DataSpec:
    """One task's documents."""

    hub: tuple[str, str | None]
    """Hub dataset (path, config name) read when the source is 'hub'."""
    fields: tuple[str, ...]
    """Fields every row must have (the task's templates and scorer read them)."""
    flag: str
    """The `rad eval` option that sets the source (named in error messages)."""
    train_sibling: str | None = None
    """A file next to a local test file that, when present, becomes the few-shot 'train' split."""


SPECS = {
    "gsm8k": DataSpec(hub=("openai/gsm8k", "main"), fields=("question", "answer"), flag="--gsm8k-data",
                      train_sibling="train.jsonl"),
    "cruxeval": DataSpec(hub=("cruxeval-org/cruxeval", None), fields=("code", "input", "output"),
                         flag="--cruxeval-data"),
}
_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def check_source(name: str, source: str | None) -> None:
    """Fail fast (before a model is loaded) on a local source that does not exist or has the wrong type."""
    if source in (None, "", "hub"):
        return
    path, spec = Path(source), SPECS[name]
    if not path.is_file():
        raise RadError(f"{spec.flag} {source}: no such file; give a local .jsonl or 'hub' for {spec.hub[0]}")
    if path.suffix not in _BUILDERS:
        raise RadError(f"{spec.flag} {source}: expected a {', '.join(_BUILDERS)} file or 'hub'")


def load(name: str, source: str | None):
    """The task's documents as a DatasetDict with a 'test' split (and 'train' where there is one)."""
    import datasets

    spec = SPECS[name]
    check_source(name, source)
    if source in (None, "", "hub"):
        try:
            ds = datasets.load_dataset(spec.hub[0], spec.hub[1])
        except Exception as e:  # noqa: BLE001 - offline, gated or renamed: one line that says what to do
            raise RadError(f"{spec.flag} hub: cannot load {spec.hub[0]} ({str(e).splitlines()[0][:200]}); "
                           f"give a local .jsonl instead") from None
    else:
        path = Path(source)
        files = {"test": str(path)}
        if spec.train_sibling and (path.parent / spec.train_sibling).is_file() and path.name != spec.train_sibling:
            files["train"] = str(path.parent / spec.train_sibling)
        ds = datasets.load_dataset(_BUILDERS[path.suffix], data_files=files)
    missing = [f for f in spec.fields if f not in ds["test"].column_names]
    if missing:
        raise RadError(f"{spec.flag} {source or 'hub'}: rows lack the field(s) {', '.join(missing)} "
                       f"(a {name} file needs {', '.join(spec.fields)})")
    return ds
