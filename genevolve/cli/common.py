"""Flags shared by several subcommands, and the one place a command's settings are resolved.

A flag's argparse destination is the dotted path of the setting it sets ("policy.base_url"), its
help text comes from that setting's field, and `command_settings(args)` hands every such flag to
`genevolve.settings.resolve_settings` together with the environment and the config file:
flag > environment variable > TOML file > default.
"""

from __future__ import annotations

import argparse
import os
import sys
import typing
from typing import Any

from ..config import ConfigError, config_path, load_config
from ..settings import Settings, describe, field_info, resolve_settings


def flag(group: Any, *names: str, path: str, **kw: Any) -> None:
    """A flag that sets the setting `path`; type, choices and help come from its field. A command that
    already has a flag of that name keeps its own (the setting is then left to env, file and default)."""
    if any(name in group._option_string_actions for name in names):
        return
    f, hint = field_info(path)
    kw.setdefault("help", describe(path))
    kw.setdefault("default", None)
    if "action" not in kw:
        args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        if args[0] in (int, float):
            kw.setdefault("type", args[0])
        if f.metadata.get("choices"):
            kw.setdefault("choices", list(f.metadata["choices"]))
        if "choices" not in kw:
            kw.setdefault("metavar", names[0].lstrip("-").replace("-", "_").upper())
    group.add_argument(*names, dest=path, **kw)


class KeyValues(argparse.Action):
    """Repeatable KEY=VALUE flags gathered into one dict."""

    def __call__(self, parser, namespace, value, option_string=None):
        try:
            given = parse_options([value], option_string or "")
        except ConfigError:
            raise argparse.ArgumentError(self, f"{value!r}: expected KEY=VALUE") from None
        setattr(namespace, self.dest, {**(getattr(namespace, self.dest, None) or {}), **given})


def parse_options(pairs: list[str], flag: str = "--backend-opt") -> dict[str, Any]:
    """KEY=VALUE pairs as a dict ('-' in keys read as '_'); values read as numbers, true/false or none
    when they look so, else kept as text."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} {pair!r}: expected KEY=VALUE")
        out[key.replace("-", "_")] = _coerce(value)
    return out


def _coerce(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(value.lower(), value)


def add_policy_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("policy")
    flag(g, "--policy", path="policy.name")
    flag(g, "--base-url", path="policy.base_url")
    flag(g, "--model", path="policy.model")
    flag(g, "--api-key", path="policy.api_key")
    flag(g, "--model-path", path="policy.model_path")
    flag(g, "--lora-path", path="policy.lora_path")
    flag(g, "--script", path="policy.script")
    flag(g, "--no-grammar", path="policy.constrained", action="store_const", const=False,
         help="turn off constrained decoding of the protocol (local policy)")
    flag(g, "--grammar", path="policy.grammar")
    flag(g, "--n-ctx", path="policy.n_ctx")
    flag(g, "--threads", path="policy.n_threads")
    flag(g, "--no-prefix-cache", path="policy.prefix_cache", action="store_const", const=False,
         help="do not save/restore the local policy's system-prompt KV cache on disk")
    flag(g, "--policy-opt", path="policy.budget", action=KeyValues, metavar="KEY=VALUE",
         help=describe("policy.budget") + "; repeatable")
    flag(g, "--temperature", path="sampling.temperature")
    flag(g, "--top-p", path="sampling.top_p")
    flag(g, "--top-k", path="sampling.top_k")
    flag(g, "--max-tokens", path="sampling.max_tokens")
    flag(g, "--seed", path="sampling.seed")
    a = p.add_argument_group("agent")
    flag(a, "--max-rounds", path="agent.max_rounds")
    flag(a, "--max-tool-calls", path="agent.max_tool_calls")
    flag(a, "--max-references", path="agent.max_references")
    flag(a, "--answer-retries", path="agent.answer_retries")
    flag(a, "--protocol", path="agent.protocol")
    flag(a, "--released-assets", path="agent.released_assets", metavar="DIR")
    add_http_args(p)


def add_http_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("HTTP to the policy server and judge endpoint")
    flag(g, "--timeout", path="http.timeout_s", metavar="SECONDS")
    flag(g, "--connect-timeout", path="http.connect_timeout_s", metavar="SECONDS")
    flag(g, "--attempts", path="http.attempts", metavar="N")


def add_tool_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tools")
    flag(g, "--search", path="tools.search")
    flag(g, "--image-search", path="tools.image_search")
    flag(g, "--search-opt", path="tools.search_options", action=KeyValues, metavar="KEY=VALUE",
         help=describe("tools.search_options") + "; repeatable")
    flag(g, "--image-search-opt", path="tools.image_search_options", action=KeyValues, metavar="KEY=VALUE",
         help=describe("tools.image_search_options") + "; repeatable")
    flag(g, "--allow-download-host", path="downloads.allow_hosts", action="append", metavar="HOST[:PORT]",
         help=describe("downloads.allow_hosts") + "; repeatable")
    flag(g, "--allow-private-downloads", path="downloads.allow_private", action="store_const", const=True)
    flag(g, "--download-per-host", path="downloads.per_host_concurrency", metavar="N")
    flag(g, "--download-rate", path="downloads.per_host_rate", metavar="R")


def add_backend_args(p: argparse.ArgumentParser, default: str | None = None) -> None:
    """--backend and --backend-opt; `default` is this command's backend when no flag, variable or file names one."""
    if default is not None:
        command_defaults(p, {"generator.backend": default})
    g = p.add_argument_group("generator")
    flag(g, "--backend", path="generator.backend")
    flag(g, "--backend-opt", path="generator.options", action=KeyValues, metavar="KEY=VALUE",
         help=describe("generator.options") + "; repeatable")


def add_judge_endpoint_args(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """--base-url, --model, ... (or --judge-base-url, ... where the command also has a policy)."""
    g = p.add_argument_group("judge endpoint (OpenAI-compatible chat with images)")
    flag(g, f"--{prefix}base-url", path="judge.base_url")
    flag(g, f"--{prefix}model", path="judge.model")
    flag(g, f"--{prefix}api-key", path="judge.api_key")
    flag(g, f"--{prefix}rpm", path="judge.rpm")
    if not prefix:
        flag(g, "--max-attempts", path="judge.max_attempts")
        flag(g, "--max-side", path="judge.max_side")
        add_http_args(p)


def command_defaults(p: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    """A command's own defaults by setting path, e.g. {"judge.name": "offline"}: below flags, the
    environment and the file, above the settings' built-in defaults."""
    current = p.get_default("setting_defaults") or {}
    p.set_defaults(setting_defaults={**current, **defaults})


def command_settings(args: argparse.Namespace) -> Settings:
    """The command's settings from its flags, the environment and the config file, resolved once."""
    path = config_path(os.environ)
    return resolve_settings(vars(args), os.environ, load_config(path),
                            defaults=getattr(args, "setting_defaults", None), config_file=str(path) if path else None)


def build_policy(args: argparse.Namespace) -> Any:
    """The policy the command's settings name (for commands that need only the policy)."""
    from .. import settings
    return settings.build_policy(command_settings(args))


def build_generator(args: argparse.Namespace) -> Any:
    """The generator the command's settings name (for commands that need only the generator)."""
    from .. import settings
    return settings.build_generator(command_settings(args))


def warn_unless_loopback(host: str, exposure: str) -> None:
    """A service without authentication on a non-loopback address: say what that exposes."""
    import ipaddress
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        say(f"warning: serving on {host} without authentication; {exposure}")


def say(message: str) -> None:
    """A note for the person at the terminal (stderr, so stdout stays machine-readable); keys a
    server echoed into an error never reach the terminal."""
    from ..secrets import scrub
    print(f"genevolve: {scrub(str(message))}", file=sys.stderr)


def fail(message: str, code: int = 2) -> int:
    say(message)
    return code
