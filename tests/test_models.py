"""Assembling the pinned model from part packages: real files, real imports, small fake parts."""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from genevolve.models import (GGUF_MAGIC, MODEL_PATH_ENV, ModelError, ModelSpec, ensure_model,
                              model_status, pinned_model_path)

_counter = itertools.count()


def _make_parts(root: Path, contents: list[bytes], *, sha256: str | None = None) -> ModelSpec:
    """Write one importable package per part (each with get_part_path()) and a spec pinning them."""
    prefix = f"gvfake{os.getpid()}_{next(_counter)}_part"
    modules = []
    for i, data in enumerate(contents, 1):
        pkg = root / f"{prefix}{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
        (pkg / "__init__.py").write_text(
            "import os\n\ndef get_part_path():\n"
            f"    return os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'part{i:02d}.bin')\n")
        modules.append(f"{prefix}{i}")
    whole = b"".join(contents)
    return ModelSpec(name="fake model", file_name=f"{prefix}.gguf",
                     sha256=sha256 or hashlib.sha256(whole).hexdigest(), size=len(whole),
                     part_modules=tuple(modules), part_version="0.2.0")


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A private cache folder and an import path for the fake part packages."""
    monkeypatch.setenv("GENEVOLVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(MODEL_PATH_ENV, raising=False)
    parts_root = tmp_path / "site"
    parts_root.mkdir()
    monkeypatch.syspath_prepend(str(parts_root))
    return parts_root


CONTENTS = [GGUF_MAGIC + os.urandom(3000), os.urandom(5000), os.urandom(1234)]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


def test_assembles_parts_in_order_and_stamps_the_file(env):
    spec = _make_parts(env, CONTENTS)
    path = ensure_model(spec=spec)
    assert path == pinned_model_path(spec)
    assert path.read_bytes() == b"".join(CONTENTS)
    assert path.with_name(path.name + ".sha256").is_file()
    assert _leftovers(path.parent) == []
    assert model_status(spec=spec) == {"available": True, "path": str(path),
                                       "reason": "fake model, sha256 verified"}


def test_stamp_skips_rehash_until_the_file_changes(env):
    spec = _make_parts(env, CONTENTS)
    path = ensure_model(spec=spec)
    st = path.stat()
    # Same size and mtime: the stamp is trusted, so a silent flip inside the file goes unhashed.
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert ensure_model(spec=spec) == path
    # Once the mtime moves, the file is hashed again and the mismatch is refused with advice.
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(ModelError) as err:
        ensure_model(spec=spec)
    message = str(err.value)
    assert "sha256" in message and "corrupt" in message and f"rm '{path}'" in message
    status = model_status(spec=spec)
    assert status["available"] is False and "rm '" in status["reason"]


def test_truncated_cached_file_is_refused(env):
    spec = _make_parts(env, CONTENTS)
    path = ensure_model(spec=spec)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ModelError, match="100 bytes"):
        ensure_model(spec=spec)


def test_parts_that_do_not_match_the_pin_leave_nothing_behind(env):
    spec = _make_parts(env, CONTENTS, sha256="0" * 64)
    with pytest.raises(ModelError, match="corrupt or of another version") as err:
        ensure_model(spec=spec)
    assert "--force-reinstall" in str(err.value)
    folder = pinned_model_path(spec).parent
    assert not pinned_model_path(spec).exists()
    assert _leftovers(folder) == []


def test_missing_part_package_names_it_and_the_pip_command(env):
    spec = _make_parts(env, CONTENTS)
    missing = spec.part_modules[1]
    (env / missing / "__init__.py").unlink()
    (env / missing / "data" / "part02.bin").unlink()
    (env / missing / "data").rmdir()
    (env / missing).rmdir()
    package = missing.replace("_", "-")
    with pytest.raises(ModelError) as err:
        ensure_model(spec=spec)
    message = str(err.value)
    assert f"1 of 3 are not installed: {package}" in message
    assert f"pip install {package}==0.2.0" in message
    assert MODEL_PATH_ENV in message
    status = model_status(spec=spec)
    assert status["available"] is False and f"pip install {package}==0.2.0" in status["reason"]
    assert not pinned_model_path(spec).exists()


def test_full_disk_mid_write_removes_the_temp_file_and_says_how_much_is_needed(env):
    spec = _make_parts(env, CONTENTS)
    calls = []

    def fill_after_first_chunk(out, chunk):
        calls.append(len(chunk))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        out.write(chunk)

    with pytest.raises(ModelError) as err:
        ensure_model(spec=spec, writer=fill_after_first_chunk)
    message = str(err.value)
    assert "not enough disk space" in message and f"needs {spec.size:,} bytes" in message
    assert "GENEVOLVE_CACHE" in message
    assert len(calls) == 2
    assert not pinned_model_path(spec).exists()
    assert _leftovers(pinned_model_path(spec).parent) == []
    # The next run, with room to write, assembles the file normally.
    assert ensure_model(spec=spec).read_bytes() == b"".join(CONTENTS)


def test_other_write_errors_also_clean_up(env):
    spec = _make_parts(env, CONTENTS)

    def broken(out, chunk):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    with pytest.raises(ModelError, match="could not write the model"):
        ensure_model(spec=spec, writer=broken)
    assert _leftovers(pinned_model_path(spec).parent) == []


def test_stale_temp_file_from_a_killed_run_is_removed(env):
    spec = _make_parts(env, CONTENTS)
    dest = pinned_model_path(spec)
    dest.parent.mkdir(parents=True, exist_ok=True)
    stale = dest.parent / f".{dest.name}.abc123.part"
    stale.write_bytes(b"half a model")
    ensure_model(spec=spec)
    assert not stale.exists()


def test_parts_with_the_wrong_total_size_are_refused_before_writing(env):
    spec = _make_parts(env, CONTENTS)
    (env / spec.part_modules[2] / "data" / "part03.bin").write_bytes(b"short")
    with pytest.raises(ModelError, match="add up to"):
        ensure_model(spec=spec)
    assert not pinned_model_path(spec).exists()


def test_status_before_assembly_reports_parts_ready(env):
    spec = _make_parts(env, CONTENTS)
    status = model_status(spec=spec)
    assert status["available"] is True and "assembled on first use" in status["reason"]
    assert not pinned_model_path(spec).exists()      # asking does not assemble


def test_user_model_path_needs_gguf_magic_but_no_pin(env, tmp_path, monkeypatch):
    good = tmp_path / "mine.gguf"
    good.write_bytes(GGUF_MAGIC + b"\x03\x00\x00\x00anything")
    assert ensure_model(good) == good
    assert model_status(good)["reason"].startswith("user-supplied GGUF")

    bad = tmp_path / "model.bin"
    bad.write_bytes(b"PK\x03\x04 a zip, not a model")
    with pytest.raises(ModelError, match="not a GGUF file"):
        ensure_model(bad)
    assert model_status(bad)["available"] is False
    # The settings layer resolves GENEVOLVE_MODEL_PATH; this module reads no environment.
    monkeypatch.setenv(MODEL_PATH_ENV, str(bad))
    spec = _make_parts(env, CONTENTS)
    assert ensure_model(spec=spec) == pinned_model_path(spec)

    with pytest.raises(ModelError, match="does not exist"):
        ensure_model(tmp_path / "absent.gguf")
    with pytest.raises(ModelError, match="not a file"):
        ensure_model(tmp_path)


_ASSEMBLE = """
import sys
sys.path.insert(0, sys.argv[1])
from genevolve.models import ModelSpec, ensure_model
spec = ModelSpec(name="fake model", file_name=sys.argv[2], sha256=sys.argv[3], size=int(sys.argv[4]),
                 part_modules=tuple(sys.argv[5].split(",")), part_version="0.2.0")
print(ensure_model(spec=spec))
"""


def test_two_processes_assembling_at_once_get_one_whole_file(env):
    spec = _make_parts(env, [GGUF_MAGIC + os.urandom(4 << 20), os.urandom(4 << 20)])
    args = [sys.executable, "-c", _ASSEMBLE, str(env), spec.file_name, spec.sha256, str(spec.size),
            ",".join(spec.part_modules)]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    path = pinned_model_path(spec)
    assert {out.strip() for out, _ in outs} == {str(path)}
    assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256
    assert _leftovers(path.parent) == []
