"""Where things live and how settings are found: CLI flags > environment > TOML file > defaults."""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    """Root of everything built on first use (model file, indexes, image library, downloads).

    `GENEVOLVE_CACHE` overrides it; otherwise `$XDG_CACHE_HOME/genevolve` or `~/.cache/genevolve`.
    """
    root = os.environ.get("GENEVOLVE_CACHE")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "genevolve")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def config_path() -> Path | None:
    """The TOML config file: `GENEVOLVE_CONFIG`, else ./genevolve.toml, else ~/.config/genevolve/config.toml."""
    explicit = os.environ.get("GENEVOLVE_CONFIG")
    if explicit:
        return Path(explicit)
    for candidate in (Path("genevolve.toml"), Path(os.path.expanduser("~/.config/genevolve/config.toml"))):
        if candidate.is_file():
            return candidate
    return None


@lru_cache(maxsize=4)
def _load_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise SystemExit(f"config file {path}: {exc}") from None
    except OSError as exc:
        raise SystemExit(f"config file {path}: cannot read it ({exc.strerror})") from None


def file_settings() -> dict[str, Any]:
    path = config_path()
    if path is None:
        return {}
    data = _load_toml(str(path))
    for secret in ("api_key", "serper_api_key", "google_api_key", "openai_api_key"):
        if _contains_key(data, secret):
            raise SystemExit(f"config file {path}: '{secret}' found; secrets are read only from "
                             "environment variables, never from files")
    return data


def _contains_key(data: Any, key: str) -> bool:
    if isinstance(data, dict):
        return key in data or any(_contains_key(v, key) for v in data.values())
    return False


def setting(flag_value: Any, env: str | None, section: str, key: str, default: Any = None) -> Any:
    """Resolve one setting: an explicit flag wins, then the environment, then the TOML file."""
    if flag_value is not None:
        return flag_value
    if env and os.environ.get(env):
        return os.environ[env]
    value = file_settings().get(section, {}).get(key)
    return default if value is None else value
