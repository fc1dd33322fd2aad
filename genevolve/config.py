"""Where things live and how the TOML config file is found, read and checked.

The settings of a command are resolved once, in `genevolve.settings` (flags > environment > this
file > defaults); this module only locates and validates the file. `cache_dir()` and
`GENEVOLVE_CONFIG` are the two places that still consult the environment directly, because every
part of the program needs them before any settings exist.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """A setting or the config file cannot be used. The message names the file, table and key (or the
    flag or environment variable) so the command can print it as one line and exit 2."""


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def parse_bool(value: Any, name: str = "value") -> bool:
    """A yes/no setting from a flag, the environment, TOML or a model's JSON.

    Accepts booleans, 0/1 and the words true/false, yes/no, on/off (any case; "" is false).
    Anything else raises ValueError naming the setting, rather than guessing.
    """
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
    raise ValueError(f"{name} must be true or false, got {value!r}")


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


def config_path(environ: Mapping[str, str] | None = None) -> Path | None:
    """The TOML config file: `GENEVOLVE_CONFIG`, else ./genevolve.toml, else ~/.config/genevolve/config.toml."""
    environ = os.environ if environ is None else environ
    explicit = environ.get("GENEVOLVE_CONFIG")
    if explicit:
        return Path(explicit)
    for candidate in (Path("genevolve.toml"), Path(os.path.expanduser("~/.config/genevolve/config.toml"))):
        if candidate.is_file():
            return candidate
    return None


def load_config(path: str | os.PathLike | None) -> dict[str, Any]:
    """The parsed TOML file ({} for None), refused when it holds anything that looks like a secret."""
    if path is None:
        return {}
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    for where, key, why in find_secrets(data):
        line = _line_of(raw.decode("utf-8"), key)
        at = f" (line {line})" if line else ""
        raise ConfigError(f"config file {path}{at}: {where}: {why}; secrets are read only from environment "
                          "variables (OPENAI_API_KEY, SERPER_API_KEY, GOOGLE_API_KEY, GENEVOLVE_JUDGE_API_KEY, ...), "
                          "never from files")
    return data


# Words that make a key name look like a credential. Names are split at '_', '-', '.' and spaces, so
# "max_tokens" is harmless while "api_key", "x-api-key", "judge_api_key" and "apiKey" are not.
_SECRET_WORDS = frozenset({"key", "apikey", "token", "secret", "password", "passwd", "pwd", "passphrase",
                           "authorization", "auth", "bearer", "credential", "credentials", "cookie"})
_SECRET_ENDINGS = ("key", "token", "secret", "password", "passwd", "credential", "credentials")


def is_secret_name(name: str) -> bool:
    words = [w for w in re.split(r"[^a-z0-9]+", str(name).lower()) if w]
    return any(w in _SECRET_WORDS or w.endswith(_SECRET_ENDINGS) for w in words)


def find_secrets(data: Any, where: str = "") -> Iterator[tuple[str, str, str]]:
    """(table path, key, why) for every key-like name and every credential-bearing value, at any depth:
    tables, inline tables, arrays of tables, header tables. Values are never included in the answer."""
    if isinstance(data, dict):
        for key, value in data.items():
            path = f"{where}.{key}" if where else str(key)
            table = f"[{where}] " if where else ""
            if is_secret_name(key):
                yield f"{table}{key}", str(key), "a key-like name"
            elif isinstance(value, str) and _credential_value(value):
                yield f"{table}{key}", str(key), f"the value {_credential_value(value)}"
            else:
                yield from find_secrets(value, path)
    elif isinstance(data, list):
        for i, value in enumerate(data, 1):
            if isinstance(value, str) and _credential_value(value):
                yield f"[{where}] item {i}", "", f"the value {_credential_value(value)}"
            else:
                yield from find_secrets(value, f"{where}#{i}")


def _credential_value(value: str) -> str | None:
    from .secrets import scrub          # the credential shapes the program keeps out of its outputs

    text = value.strip()
    if "://" in text:
        try:
            parts = urlsplit(text)
        except ValueError:
            parts = None
        if parts is not None and parts.netloc and "@" in parts.netloc:
            return "carries a user name or password in its URL"
    if scrub(text) != text:
        return "looks like a credential (an Authorization value, an API key or a key in a URL)"
    return None


def _line_of(text: str, key: str) -> int | None:
    if not key:
        return None
    pattern = re.compile(rf"""^\s*["']?{re.escape(key)}["']?\s*=|[{{,]\s*["']?{re.escape(key)}["']?\s*=""")
    for number, line in enumerate(text.splitlines(), 1):
        if pattern.search(line):
            return number
    return None
