"""Options shared by several subcommands, and how they become objects.

Precedence everywhere: command-line flag > environment variable > TOML config file > default.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..config import setting


def add_policy_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("policy")
    g.add_argument("--policy", choices=["local", "openai", "scripted"], default=None,
                   help="which policy drives the agent (default: openai when a base URL is set, else local)")
    g.add_argument("--base-url", default=None, help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 "
                   "(env OPENAI_BASE_URL)")
    g.add_argument("--model", default=None, help="model name on that server (env GENEVOLVE_MODEL)")
    g.add_argument("--api-key", default=None, help="API key for the server (prefer env OPENAI_API_KEY)")
    g.add_argument("--model-path", default=None, help="GGUF file for the local policy "
                   "(env GENEVOLVE_MODEL_PATH; default: the pinned Qwen2.5-Coder-1.5B-Instruct)")
    g.add_argument("--script", default=None, help="JSON list of assistant turns for --policy scripted")
    g.add_argument("--no-grammar", action="store_true",
                   help="turn off constrained decoding of the protocol (local policy)")
    g.add_argument("--grammar", choices=["llama.cpp", "vllm"], default=None,
                   help="constrain a remote policy's output to the protocol grammar, sent in the field "
                        "this kind of server reads (off by default for remote policies)")
    g.add_argument("--n-ctx", type=int, default=None, help="context size of the local policy (default 8192)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads of the local policy (default: all)")
    g.add_argument("--no-prefix-cache", action="store_true",
                   help="do not save/restore the local policy's system-prompt KV cache on disk")
    g.add_argument("--policy-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="per-request budget of the local policy, e.g. tool_call_budget=5, "
                        "observation_chars=2000, max_gen_prompt_chars=800 (repeatable; also [policy] in "
                        "the config file)")
    g.add_argument("--temperature", type=float, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--max-tokens", type=int, default=None, help="tokens per turn")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--max-rounds", type=int, default=None)
    g.add_argument("--max-tool-calls", type=int, default=None)
    g.add_argument("--max-references", type=int, default=None)


def add_tool_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tools")
    g.add_argument("--search", default=None, help="search backend: offline | serper | searxng "
                   "(env GENEVOLVE_SEARCH; default offline)")
    g.add_argument("--image-search", default=None, help="image search backend: offline | serper | searxng "
                   "(env GENEVOLVE_IMAGE_SEARCH; default offline)")
    g.add_argument("--search-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="option for the search backend, e.g. url=http://searx.local (SearXNG), "
                        "refresh=true, cache=false (repeatable)")
    g.add_argument("--image-search-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="option for the image search backend (repeatable)")
    g.add_argument("--allow-download-host", action="append", default=[], metavar="HOST[:PORT]",
                   help="let image downloads reach this host even if it is private or loopback "
                        "(a local mirror); repeatable")
    g.add_argument("--allow-private-downloads", action="store_true",
                   help="let image downloads reach any private address (never cloud metadata)")


def add_backend_args(p: argparse.ArgumentParser, default: str | None = "offline") -> None:
    g = p.add_argument_group("generator")
    g.add_argument("--backend", default=None, help=f"generator backend (default {default}): offline | "
                   "qwen-image-edit | qwen-image-edit-service | nano-banana-pro | openai-images")
    g.add_argument("--backend-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="option passed to the generator backend, e.g. steps=20 (repeatable)")


def parse_options(pairs: list[str], flag: str = "--backend-opt") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag} {pair!r}: expected KEY=VALUE")
        out[key.replace("-", "_")] = _coerce(value)
    return out


def _coerce(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(value.lower(), value)


def build_policy(args: argparse.Namespace):
    from ..policies import make_policy

    base_url = setting(args.base_url, "OPENAI_BASE_URL", "policy", "base_url")
    name = args.policy or setting(None, "GENEVOLVE_POLICY", "policy", "name") or ("openai" if base_url else "local")
    if name == "openai":
        return make_policy("openai", base_url=base_url,
                           model=setting(args.model, "GENEVOLVE_MODEL", "policy", "model"),
                           api_key=args.api_key, grammar=setting(args.grammar, None, "policy", "grammar"))
    if name == "local":
        options = {"model_path": setting(args.model_path, "GENEVOLVE_MODEL_PATH", "policy", "model_path"),
                   "constrained": not args.no_grammar, "prefix_cache": not args.no_prefix_cache}
        for key, value in (("n_ctx", args.n_ctx), ("n_threads", args.threads)):
            value = setting(value, None, "policy", key)
            if value is not None:
                options[key] = value
        from ..policies.local import LocalGGUFPolicy
        budget = {key: setting(None, None, "policy", key) for key in LocalGGUFPolicy.DEFAULT_BUDGET}
        budget = {key: value for key, value in budget.items() if value is not None}
        budget.update(parse_options(getattr(args, "policy_opt", []), "--policy-opt"))
        unknown = sorted(set(budget) - set(LocalGGUFPolicy.DEFAULT_BUDGET))
        if unknown:
            raise SystemExit(f"--policy-opt {', '.join(unknown)}: not a local policy option; known: "
                             f"{', '.join(LocalGGUFPolicy.DEFAULT_BUDGET)}")
        return make_policy("local", **options, **budget)
    if name == "scripted":
        if not args.script:
            raise SystemExit("--policy scripted needs --script FILE (a JSON list of assistant turns)")
        return make_policy("scripted", script_path=args.script)
    raise SystemExit(f"unknown policy {name!r}")


def build_agent_config(args: argparse.Namespace):
    from ..agent import AgentConfig
    from ..policies.base import Sampling

    cfg = AgentConfig()
    s = Sampling()
    for attr, flag in (("temperature", "temperature"), ("top_p", "top_p"), ("max_tokens", "max_tokens"),
                       ("seed", "seed")):
        value = getattr(args, flag, None)
        if value is None:
            value = setting(None, None, "sampling", attr)
        if value is not None:
            setattr(s, attr, value)
    cfg.sampling = s
    for attr in ("max_rounds", "max_tool_calls", "max_references", "answer_retries"):
        value = getattr(args, attr, None)
        if value is None:
            value = setting(None, None, "agent", attr)
        if value is not None:
            setattr(cfg, attr, int(value))
    return cfg


def build_tools(args: argparse.Namespace):
    from ..tools import default_tools, make_image_search_backend, make_search_backend

    search = setting(args.search, "GENEVOLVE_SEARCH", "tools", "search", "offline")
    image_search = setting(args.image_search, "GENEVOLVE_IMAGE_SEARCH", "tools", "image_search", "offline")
    search_opts = dict(setting(None, None, "search", search, {}) or {})
    search_opts.update(parse_options(args.search_opt, "--search-opt"))
    image_opts = dict(setting(None, None, "image_search", image_search, {}) or {})
    image_opts.update(parse_options(args.image_search_opt, "--image-search-opt"))
    allow_hosts = list(args.allow_download_host) + list(setting(None, None, "downloads", "allow_hosts", []) or [])
    if image_search != "offline":          # web image backends download through the safe downloader
        if allow_hosts:
            image_opts["allow_hosts"] = allow_hosts
        if args.allow_private_downloads:
            image_opts["allow_private"] = True
    return default_tools(make_search_backend(search, **search_opts),
                         make_image_search_backend(image_search, **image_opts))


def build_generator(args: argparse.Namespace, default: str = "offline"):
    from ..generators import make_generator

    name = setting(args.backend, "GENEVOLVE_BACKEND", "generator", "backend", default)
    options = dict(setting(None, None, "generator", name.replace("-", "_"), {}) or {})
    options.update(parse_options(args.backend_opt))
    return make_generator(name, **options)


def fail(message: str, code: int = 2) -> int:
    print(f"genevolve: {message}", file=sys.stderr)
    return code
