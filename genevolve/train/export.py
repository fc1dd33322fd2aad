"""A trained policy back to llama.cpp: a GGUF file, or a LoRA adapter GGUF over the base model.

The converters are llama.cpp's own (`convert_hf_to_gguf.py`, `convert_lora_to_gguf.py`, with the
`conversion/` package and the gguf-py they were written against). They ship in the source
distribution of llama-cpp-python 0.3.36, which `ensure_converters()` fetches once with pip (a
registry download, hash-pinned) and unpacks under `cache_dir()/llama.cpp-convert/`. They run in
a child process with this interpreter, since they read their own command line.

The result loads with the embedded policy: `genevolve run --policy local --model-path FILE`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ..config import cache_dir

SDIST_VERSION = "0.3.36"
SDIST_NAME = f"llama_cpp_python-{SDIST_VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
OUTTYPES = ("f16", "bf16", "q8_0", "f32")
_WANTED = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/")


class ExportError(RuntimeError):
    """The export could not run; the message says why and what to do."""


def converters_dir() -> Path:
    return cache_dir() / "llama.cpp-convert" / SDIST_VERSION


def ensure_converters(python: str = sys.executable) -> Path:
    """The folder with llama.cpp's converters, fetched and unpacked on first use."""
    dest = converters_dir()
    if (dest / "convert_hf_to_gguf.py").is_file() and (dest / "convert_lora_to_gguf.py").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        done = subprocess.run([python, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                               f"llama-cpp-python=={SDIST_VERSION}", "-d", tmp], capture_output=True, text=True)
        archive = Path(tmp) / SDIST_NAME
        if done.returncode != 0 or not archive.is_file():
            raise ExportError(f"could not fetch the llama-cpp-python {SDIST_VERSION} source distribution with pip "
                              f"(it holds llama.cpp's converters): {done.stderr.strip()[-500:]}")
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != SDIST_SHA256:
            raise ExportError(f"{SDIST_NAME} has sha256 {digest}, expected {SDIST_SHA256}; refusing to run it")
        unpacked = Path(tmp) / "unpacked"
        prefix = f"llama_cpp_python-{SDIST_VERSION}/vendor/llama.cpp/"
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix) and
                       any(m.name[len(prefix):].startswith(w) for w in _WANTED) and (m.isfile() or m.isdir())]
            tar.extractall(unpacked, members=members, filter="data")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(unpacked / prefix, dest)
    return dest


def export_gguf(policy_dir: str | os.PathLike, out: str | os.PathLike | None = None, *, outtype: str = "f16",
                base: str | os.PathLike | None = None, python: str = sys.executable) -> Path:
    """Convert a policy directory (full weights, or a LoRA adapter) to GGUF; returns the file.

    A LoRA adapter converts to an adapter GGUF, applied over the base model's GGUF at load time;
    `base` is the base checkpoint directory (default: the one the adapter names).
    """
    src = Path(policy_dir)
    if outtype not in OUTTYPES:
        raise ExportError(f"outtype must be one of {', '.join(OUTTYPES)}")
    is_lora = (src / "adapter_config.json").is_file()
    if not is_lora and not (src / "config.json").is_file():
        raise ExportError(f"{src} is neither a transformers checkpoint (config.json) nor a LoRA adapter "
                          "(adapter_config.json)")
    target = Path(out) if out is not None else src / (f"{src.name}-lora-{outtype}.gguf" if is_lora
                                                      else f"{src.name}-{outtype}.gguf")
    tools = ensure_converters(python)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    if is_lora:
        base_dir = Path(base) if base else Path(json.loads((src / "adapter_config.json").read_text())
                                                ["base_model_name_or_path"])
        if not (base_dir / "config.json").is_file():
            raise ExportError(f"the adapter's base {base_dir} is not a checkpoint directory; pass --base")
        cmd = [python, str(tools / "convert_lora_to_gguf.py"), str(src), "--base", str(base_dir),
               "--outfile", str(partial), "--outtype", outtype]
    else:
        cmd = [python, str(tools / "convert_hf_to_gguf.py"), str(src), "--outfile", str(partial), "--outtype", outtype]
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}   # use the gguf-py they ship with
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise ExportError(f"llama.cpp's converter failed on {src}:\n{done.stderr.strip()[-2000:]}")
    os.replace(partial, target)
    return target
