"""Every setting of a command, resolved once: command-line flag > environment variable > TOML file > default.

One dataclass per area (policy, sampling, agent, tools, downloads, generator, judge, http); each field
carries its help text, the environment variables it reads and its place in the TOML file, in the
spirit of TRL's config dataclasses. `resolve_settings(flags, environ, toml)` builds the one
`Settings` object of a command; the `build_*` functions turn it into the objects that do the work.
Library modules take what they need as constructor arguments and never read the environment.

Flags are given as a mapping from a field's dotted path ("policy.base_url") to the value the user
typed, None when the flag was not given (the CLI names its argparse destinations that way).
Secrets (API keys) come from flags or the environment only; `config.load_config` refuses a file
that holds one, and no settings object prints them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from .config import ConfigError, parse_bool
from .secrets import register as register_secrets, register_urls


def opt(default: Any, help: str, *, env: tuple[str, ...] | str = (), toml: str | tuple[str, str] | None = "",
        secret: bool = False, choices: tuple[str, ...] | None = None, merge: bool = False) -> Any:
    """A settings field. `toml`: the key in the area's table ("" = the field name), a (table, key)
    pair for keys kept elsewhere, or None when the file cannot set it. `merge`: lists and tables add
    the flag's entries to the file's instead of replacing them."""
    meta = {"help": help, "env": (env,) if isinstance(env, str) else tuple(env), "secret": secret,
            "toml": None if secret else toml, "choices": choices, "merge": merge}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta, repr=not secret)
    return field(default=default, metadata=meta, repr=not secret)


@dataclass
class PolicySettings:
    table: ClassVar[str] = "policy"
    name: str | None = opt(None, "which policy drives the agent: local (a GGUF in llama.cpp), openai (a server), "
                               "hf:DIR (a transformers checkpoint in this process; or hf with --model-path DIR) "
                               "or scripted (default: openai when a base URL is set, else local)",
                               env="GENEVOLVE_POLICY")
    base_url: str | None = opt(None, "OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1",
                                   env="OPENAI_BASE_URL")
    model: str | None = opt(None, "model name on that server", env="GENEVOLVE_MODEL")
    api_key: str = opt("", "API key for the policy server (prefer the environment)", env="OPENAI_API_KEY",
                           secret=True)
    model_path: str | None = opt(None, "GGUF file for the local policy (default: the pinned "
                                     "Qwen2.5-Coder-1.5B-Instruct), or the checkpoint folder of the hf policy",
                                     env="GENEVOLVE_MODEL_PATH")
    lora_path: str | None = opt(None, "LoRA adapter GGUF applied over the local policy's model at load time "
                                    "(`genevolve export gguf` of a LoRA run)", env="GENEVOLVE_LORA_PATH")
    script: str | None = opt(None, "JSON list of assistant turns for the scripted policy")
    grammar: str | None = opt(None, "constrain a remote policy's output to the protocol grammar, sent in "
                                  "the field this kind of server reads (off by default for remote policies)",
                                  choices=("llama.cpp", "vllm"))
    constrained: bool = opt(True, "constrained decoding of the protocol (local policy)")
    prefix_cache: bool = opt(True, "save and restore the local policy's system-prompt KV cache on disk")
    n_ctx: int | None = opt(None, "context size of the local policy (default 8192)")
    n_threads: int | None = opt(None, "CPU threads of the local policy (default: all)")
    budget: dict[str, Any] = opt({}, "per-request budget of the local policy, e.g. tool_call_budget=5, "
                                     "observation_chars=2000 (other keys of [policy] in the config file)",
                                     merge=True)


@dataclass
class SamplingSettings:
    table: ClassVar[str] = "sampling"
    temperature: float | None = opt(None, "sampling temperature (default 0.6)")
    top_p: float | None = opt(None, "nucleus sampling mass (default 0.9)")
    top_k: int | None = opt(None, "keep only the k most likely tokens (default: no cut)")
    max_tokens: int | None = opt(None, "tokens per turn (default 4096)")
    seed: int | None = opt(None, "sampling seed")


@dataclass
class AgentSettings:
    table: ClassVar[str] = "agent"
    max_tool_calls: int | None = opt(None, "tool calls per request (default: the policy's own budget, else 10)")
    max_rounds: int | None = opt(None, "policy calls per request (default: the tool calls, one for the "
                                     "answer, and the answer retries)")
    max_references: int | None = opt(None, "reference images in a program (default 2)")
    answer_retries: int | None = opt(None, "times an unusable answer goes back to the policy (default 1)")
    tool_timeout_s: float | None = opt(None, "seconds one tool call may take (default 120)",
                                           toml="tool_timeout")
    protocol: str = opt("default", "how answers are checked and repaired: default, strict, or released (the "
                            "upstream runtime's behaviour)", choices=("default", "strict", "released"))
    released_assets: str | None = opt(None, "folder with the released runtime's prompt assets (protocol "
                                          "released)")


@dataclass
class ToolSettings:
    table: ClassVar[str] = "tools"
    search: str = opt("offline", "search backend: offline, serper or searxng", env="GENEVOLVE_SEARCH")
    image_search: str = opt("offline", "image search backend: offline, serper or searxng",
                                env="GENEVOLVE_IMAGE_SEARCH")
    search_options: dict[str, Any] = opt({}, "options of the search backend, e.g. url=http://searx.local, "
                                             "refresh=true, cache=false ([search.<backend>] in the file)",
                                             toml=None, merge=True)
    image_search_options: dict[str, Any] = opt({}, "options of the image search backend "
                                                   "([image_search.<backend>] in the file)", toml=None, merge=True)
    serper_api_key: str = opt("", "Serper API key", env="SERPER_API_KEY", secret=True)
    serper_base_url: str | None = opt(None, "Serper API address", env="SERPER_BASE_URL",
                                          toml=("serper", "base_url"))
    searxng_url: str | None = opt(None, "SearXNG instance", env="SEARXNG_URL", toml=("searxng", "url"))
    search_index_dir: str | None = opt(None, "folder of the offline search index (default: in the cache)",
                                           env="GENEVOLVE_SEARCH_INDEX_DIR")
    search_semantic: bool | None = opt(None, "re-rank offline search results with the MiniLM encoder",
                                           env="GENEVOLVE_SEARCH_SEMANTIC")
    image_library_dir: str | None = opt(None, "folder of the offline image library (default: in the cache)",
                                            env="GENEVOLVE_IMAGE_LIBRARY")
    emoji_font: str | None = opt(None, "colour emoji font the image library is drawn from",
                                     env="GENEVOLVE_EMOJI_FONT")


@dataclass
class DownloadSettings:
    table: ClassVar[str] = "downloads"
    allow_hosts: list[str] = opt([], "hosts (HOST[:PORT]) image downloads may reach even if private or "
                                     "loopback (a local mirror)", merge=True)
    allow_private: bool = opt(False, "let image downloads reach any private address (never cloud metadata)")
    per_host_concurrency: int | None = opt(None, "image downloads at once from one host")
    per_host_rate: float | None = opt(None, "image downloads per second from one host")


@dataclass
class GeneratorSettings:
    table: ClassVar[str] = "generator"
    backend: str = opt("offline", "generator backend: offline, qwen-image-edit, qwen-image-edit-service, "
                           "nano-banana-pro or openai-images", env="GENEVOLVE_BACKEND")
    options: dict[str, Any] = opt({}, "options of the generator backend, e.g. steps=20 "
                                      "([generator.<backend>] in the file, '-' written '_')", toml=None, merge=True)
    font: str | None = opt(None, "TrueType font of the offline renderer's text", env="GENEVOLVE_FONT")
    qwen_edit_urls: str | None = opt(None, "Qwen-Image-Edit services, comma-separated", env="QWEN_EDIT_URLS")
    gemini_api_key: str = opt("", "Gemini API key (nano-banana-pro)", env=("GOOGLE_API_KEY", "GEMINI_API_KEY"),
                                  secret=True)
    gemini_base_url: str | None = opt(None, "Gemini API address", env="GEMINI_BASE_URL")
    openai_api_key: str = opt("", "OpenAI API key (openai-images)", env="OPENAI_API_KEY", secret=True)
    openai_base_url: str | None = opt(None, "OpenAI images API address", env="OPENAI_BASE_URL", toml=None)


@dataclass
class JudgeSettings:
    table: ClassVar[str] = "judge"
    name: str = opt("kscore", "kscore (a VLM endpoint) or offline (no model service; a proxy)",
                        choices=("kscore", "offline"))
    base_url: str | None = opt(None, "judge endpoint, e.g. https://generativelanguage.googleapis.com/v1beta/"
                                   "openai", env=("GENEVOLVE_JUDGE_BASE_URL", "OPENAI_BASE_URL"))
    model: str | None = opt(None, "judge model, e.g. gemini-3.1-pro-preview", env="GENEVOLVE_JUDGE_MODEL")
    api_key: str = opt("", "judge API key (prefer the environment)",
                           env=("GENEVOLVE_JUDGE_API_KEY", "OPENAI_API_KEY"), secret=True)
    rpm: float | None = opt(None, "at most this many judge requests per minute")
    max_attempts: int = opt(4, "asks per item when the judge's reply is unreadable or out of range")
    max_side: int = opt(4096, "images are re-encoded with this long side at most")


@dataclass
class HttpSettings:
    table: ClassVar[str] = "http"
    timeout_s: float | None = opt(None, "seconds to wait for a policy or judge reply (default: 120 for the "
                                        "policy, 300 for judges)", env="GENEVOLVE_HTTP_TIMEOUT", toml="timeout")
    connect_timeout_s: float | None = opt(None, "seconds to connect to the policy server or judge endpoint "
                                              "(default 10)",
                                              env="GENEVOLVE_HTTP_CONNECT_TIMEOUT", toml="connect_timeout")
    attempts: int | None = opt(None, "tries per policy or judge request, the first included, on timeouts, "
                                   "connection errors, 429 and 5xx (default: 3 for the policy, 7 for judges)",
                                   env="GENEVOLVE_HTTP_ATTEMPTS")


@dataclass
class Settings:
    policy: PolicySettings = field(default_factory=PolicySettings)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    agent: AgentSettings = field(default_factory=AgentSettings)
    tools: ToolSettings = field(default_factory=ToolSettings)
    downloads: DownloadSettings = field(default_factory=DownloadSettings)
    generator: GeneratorSettings = field(default_factory=GeneratorSettings)
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    config_file: str | None = None          # the TOML file that was read, for messages

    def to_dict(self) -> dict[str, Any]:
        """Every setting except the secrets: safe to write next to a run's results."""
        out: dict[str, Any] = {"config_file": self.config_file}
        for area in AREAS:
            part = getattr(self, area)
            out[area] = {f.name: getattr(part, f.name) for f in dataclasses.fields(part) if not f.metadata["secret"]}
        return out


AREAS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(Settings)   # type: ignore[misc]
                          if f.name != "config_file"}


def field_info(path: str) -> tuple[dataclasses.Field, Any]:
    """(field, its type) of a dotted path such as "judge.base_url"."""
    area, _, name = path.partition(".")
    cls = AREAS.get(area)
    fields = {f.name: f for f in dataclasses.fields(cls)} if cls else {}
    if name not in fields:
        raise KeyError(f"no setting {path!r}")
    return fields[name], typing.get_type_hints(cls)[name]


def describe(path: str) -> str:
    """A field's help text with where else it can be set, for --help."""
    f, _ = field_info(path)
    area = path.partition(".")[0]
    where = [f"env {' or '.join(f.metadata['env'])}"] if f.metadata["env"] else []
    toml = f.metadata["toml"]
    if toml is not None:
        table, key = toml if isinstance(toml, tuple) else (AREAS[area].table, toml or f.name)
        where.append(f"[{table}] {key}")
    return f.metadata["help"] + (f" ({'; '.join(where)})" if where else "")


# ---------------------------------------------------------------------------------------------
# Resolution

def resolve_settings(flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None,
                     toml: Mapping[str, Any] | None = None, *, defaults: Mapping[str, Any] | None = None,
                     config_file: str | None = None) -> Settings:
    """The settings of one command. `defaults` overrides the built-in default of a path for this
    command (e.g. `bench` judges offline by default); it still loses to the file."""
    flags = {k: v for k, v in (flags or {}).items() if "." in k}
    environ, toml, defaults = environ or {}, toml or {}, defaults or {}
    unknown = [k for k in list(flags) + list(defaults) if k.partition(".")[0] not in AREAS]
    if unknown:
        raise KeyError(f"no setting {unknown[0]!r}")
    source = f"config file {config_file}" if config_file else "config file"
    _check_tables(toml, source)
    values: dict[str, Any] = {}
    for area, cls in AREAS.items():
        kwargs = {}
        for f in dataclasses.fields(cls):
            path = f"{area}.{f.name}"
            if path in ("tools.search_options", "tools.image_search_options", "generator.options", "policy.budget"):
                continue                      # their file tables depend on a backend chosen above
            kwargs[f.name] = _resolve(path, f, flags, environ, toml, defaults, source)
        values[area] = kwargs
    tools, gen = values["tools"], values["generator"]
    tools["search_options"] = _options(flags, "tools.search_options", toml, ("search", tools["search"]), source)
    tools["image_search_options"] = _options(flags, "tools.image_search_options", toml,
                                             ("image_search", tools["image_search"]), source)
    gen["options"] = _options(flags, "generator.options", toml,
                              ("generator", gen["backend"].replace("-", "_")), source)
    known = {f.name for f in dataclasses.fields(PolicySettings)}
    budget = {k: v for k, v in (toml.get("policy") or {}).items() if k not in known}
    values["policy"]["budget"] = {**budget, **dict(flags.get("policy.budget") or {})}
    settings = Settings(**{area: AREAS[area](**kwargs) for area, kwargs in values.items()}, config_file=config_file)
    # Every writer of this process now takes the configured keys out of what it writes, and the
    # credentials inside any configured URL (a key in --base-url's user info or query string).
    register_secrets(*(getattr(getattr(settings, area), f.name) for area, cls in AREAS.items()
                       for f in dataclasses.fields(cls) if f.metadata["secret"]))
    register_urls(*_configured_urls(settings))
    return settings


def _configured_urls(settings: Settings) -> list[str]:
    """Every URL-like text among the settings (addresses, lists of them, backend options)."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            found.extend(part for part in value.split(",") if "://" in part)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)

    for area in AREAS:
        part = getattr(settings, area)
        for f in dataclasses.fields(part):
            walk(getattr(part, f.name))
    return found


def _resolve(path: str, f: dataclasses.Field, flags: Mapping[str, Any], environ: Mapping[str, str],
             toml: Mapping[str, Any], defaults: Mapping[str, Any], source: str) -> Any:
    hint = typing.get_type_hints(AREAS[path.partition(".")[0]])[f.name]
    meta = f.metadata
    file_value, file_where = _file_value(path, f, toml, source)
    if meta["merge"]:                               # lists: the file's entries, then the flag's
        merged = list(_coerce(file_value, hint, file_where) or []) if file_value is not None else []
        for item in _coerce(flags.get(path), hint, f"flag for {path}") or []:
            if item not in merged:
                merged.append(item)
        return merged
    if flags.get(path) is not None:
        return _check_choice(_coerce(flags[path], hint, f"flag for {path}"), meta, f"flag for {path}")
    for name in meta["env"]:
        if environ.get(name):
            where = f"environment variable {name}"
            return _check_choice(_coerce(environ[name], hint, where), meta, where)
    if file_value is not None:
        return _check_choice(_coerce(file_value, hint, file_where), meta, file_where)
    if path in defaults:
        return defaults[path]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default   # type: ignore[misc]


def _file_value(path: str, f: dataclasses.Field, toml: Mapping[str, Any], source: str) -> tuple[Any, str]:
    spec = f.metadata["toml"]
    if spec is None:
        return None, ""
    table, key = spec if isinstance(spec, tuple) else (AREAS[path.partition(".")[0]].table, spec or f.name)
    return (toml.get(table) or {}).get(key), f"{source}: [{table}] {key}"


def _options(flags: Mapping[str, Any], path: str, toml: Mapping[str, Any], place: tuple[str, str],
             source: str) -> dict[str, Any]:
    table, key = place
    from_file = (toml.get(table) or {}).get(key) or {}
    if not isinstance(from_file, dict):
        raise ConfigError(f"{source}: [{table}] {key} must be a table of options, got {from_file!r}")
    return {**from_file, **dict(flags.get(path) or {})}


def _check_choice(value: Any, meta: Mapping[str, Any], where: str) -> Any:
    choices = meta.get("choices")
    if choices and value is not None and value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(choices)}")
    return value


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """`value` as the field's type; ConfigError naming `where` when it cannot be."""
    if value is None:
        return None
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    origin = typing.get_origin(hint) or hint
    try:
        if origin is bool:
            return parse_bool(value, where)
        if origin is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if origin is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if origin is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        if origin is list:
            items = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)):
                raise ValueError
            return [str(v) for v in items if str(v)]
        if origin is dict:
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
    except (TypeError, ValueError):
        kind = {bool: "true or false", int: "an integer", float: "a number", str: "text", list: "a list",
                dict: "a table"}.get(origin, str(origin))
        raise ConfigError(f"{where}: expected {kind}, got {value!r}") from None
    return value


def _check_tables(toml: Mapping[str, Any], source: str) -> None:
    """Unknown keys in the tables these settings own are typos: say so rather than ignore them.
    Tables other parts of the program own ([train], [data], ...) are left alone."""
    owned: dict[str, set[str]] = {}
    for area, cls in AREAS.items():
        for f in dataclasses.fields(cls):
            spec = f.metadata["toml"]
            if spec is None:
                continue
            table, key = spec if isinstance(spec, tuple) else (cls.table, spec or f.name)
            owned.setdefault(table, set()).add(key)
    for table, keys in owned.items():
        if table == "policy":                  # its other keys are the local policy's budget
            continue
        section = toml.get(table)
        if section is None:
            continue
        if not isinstance(section, dict):
            raise ConfigError(f"{source}: '{table}' must be a table ([{table}])")
        for key, value in section.items():
            if key in keys:
                continue
            if table == "generator" and isinstance(value, dict):
                continue                       # [generator.<backend>] option tables
            raise ConfigError(f"{source}: [{table}] has no setting '{key}' (known: {', '.join(sorted(keys))})")
    for table in ("search", "image_search"):
        for key, value in (toml.get(table) or {}).items():
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: [{table}] {key} must be a table of options ([{table}.{key}])")


# ---------------------------------------------------------------------------------------------
# Building the objects a command needs

def build_sampling(s: Settings):
    from .policies.base import Sampling

    given = {k: v for k, v in dataclasses.asdict(s.sampling).items() if v is not None}
    return Sampling(**given)


def build_agent_config(s: Settings):
    from .agent import AgentConfig

    given = {k: v for k, v in dataclasses.asdict(s.agent).items() if v is not None}
    return AgentConfig(sampling=build_sampling(s), **given)


def build_policy(s: Settings):
    from .policies import make_policy

    p = s.policy
    name = p.name or ("openai" if p.base_url else "local")
    name, _, checkpoint = name.partition(":")          # "hf:runs/grpo/model"
    if checkpoint and name != "hf":
        raise ConfigError(f"--policy {p.name!r}: only hf takes a folder after ':'")
    if p.lora_path and name != "local":
        raise ConfigError(f"--lora-path applies to the local policy (llama.cpp), not to {name}")
    if name == "openai":
        if not p.base_url:
            raise ConfigError("the openai policy needs a server: pass --base-url (e.g. http://127.0.0.1:8000/v1), "
                              "set OPENAI_BASE_URL or [policy] base_url")
        return make_policy("openai", base_url=p.base_url, model=p.model or "default", api_key=p.api_key,
                           grammar=p.grammar, **http_options(s))
    if name in ("local", "hf"):
        from .policies.local import LocalGGUFPolicy

        unknown = sorted(set(p.budget) - set(LocalGGUFPolicy.DEFAULT_BUDGET))
        if unknown:
            raise ConfigError(f"policy option {', '.join(unknown)} (--policy-opt or [policy]): not a {name} policy "
                              f"option; known: {', '.join(LocalGGUFPolicy.DEFAULT_BUDGET)}")
        if name == "hf":               # the same budget keys as the embedded policy
            if not (checkpoint or p.model_path):
                raise ConfigError("--policy hf needs a checkpoint folder: --policy hf:DIR or --model-path DIR")
            return make_policy("hf", path=checkpoint or p.model_path, constrained=p.constrained,
                               n_threads=p.n_threads, **p.budget)
        options = {"model_path": p.model_path, "lora_path": p.lora_path, "constrained": p.constrained,
                   "prefix_cache": p.prefix_cache}
        if p.n_ctx is not None:
            options["n_ctx"] = p.n_ctx
        if p.n_threads is not None:
            options["n_threads"] = p.n_threads
        return make_policy("local", **options, **p.budget)
    if name == "scripted":
        if not p.script:
            raise ConfigError("--policy scripted needs --script FILE (a JSON list of assistant turns)")
        return make_policy("scripted", script_path=p.script)
    raise ConfigError(f"unknown policy {name!r} (choose from local, openai, hf, scripted)")


def build_tools(s: Settings):
    """The protocol's three tools over the settings' search and image search backends."""
    from .tools import default_tools

    return default_tools(build_search_backend(s), build_image_search_backend(s))


def build_search_backend(s: Settings, name: str | None = None):
    from .tools import make_search_backend

    name = name or s.tools.search
    return make_search_backend(name, **_backend_options(s, name, False))


def build_image_search_backend(s: Settings, name: str | None = None):
    from .tools import make_image_search_backend

    name = name or s.tools.image_search
    return make_image_search_backend(name, **_backend_options(s, name, True))


def _backend_options(s: Settings, name: str, images: bool) -> dict[str, Any]:
    """The options of a search backend: the user's (for the configured backend), plus the addresses,
    folders and download rules the settings resolved for that kind of backend."""
    t, d = s.tools, s.downloads
    extra: dict[str, Any] = {}
    if name == "offline":
        if images:
            extra.update(library_dir=t.image_library_dir, emoji_font=t.emoji_font)
        else:
            extra.update(index_dir=t.search_index_dir, semantic=t.search_semantic)
    elif name == "serper":
        extra.update(api_key=t.serper_api_key or None, base_url=t.serper_base_url)
    elif name == "searxng":
        extra["url"] = t.searxng_url
    if images and name != "offline":            # web image backends download through the safe downloader
        extra.update(allow_hosts=d.allow_hosts or None, allow_private=d.allow_private or None,
                     per_host_concurrency=d.per_host_concurrency, per_host_rate=d.per_host_rate)
    given = (t.image_search_options if name == t.image_search else {}) if images else \
        (t.search_options if name == t.search else {})
    return {**{k: v for k, v in extra.items() if v is not None}, **given}


def build_generator(s: Settings):
    from .generators import make_generator

    g = s.generator
    extra: dict[str, Any] = {}
    if g.backend == "offline":
        extra["font"] = g.font
    elif g.backend == "qwen-image-edit-service":
        extra["urls"] = g.qwen_edit_urls
    elif g.backend == "nano-banana-pro":
        extra.update(api_key=g.gemini_api_key or None, base_url=g.gemini_base_url)
    elif g.backend == "openai-images":
        extra.update(api_key=g.openai_api_key or None, base_url=g.openai_base_url)
    return make_generator(g.backend, **{**{k: v for k, v in extra.items() if v is not None}, **g.options})


def build_judge(s: Settings, name: str | None = None):
    """The image judge `name` (default: the settings' judge); model-free judges take no options."""
    from .judges import make_judge

    name = name or s.judge.name
    if name == "offline":
        return make_judge("offline")
    return make_judge(name, **endpoint_options(s))


def endpoint_options(s: Settings) -> dict[str, Any]:
    """What every judge over an OpenAI-compatible endpoint is built with (KScore, program, WISE)."""
    j = s.judge
    options: dict[str, Any] = {"base_url": j.base_url, "model": j.model, "api_key": j.api_key, "rpm": j.rpm,
                               "max_attempts": j.max_attempts, "max_side": j.max_side}
    if not j.base_url:
        raise ConfigError("no judge endpoint: pass --base-url (e.g. http://127.0.0.1:8000/v1) or set "
                          "GENEVOLVE_JUDGE_BASE_URL or OPENAI_BASE_URL, or [judge] base_url")
    if not j.model:
        raise ConfigError("no judge model: pass --model (the paper used gemini-3.1-pro-preview) or set "
                          "GENEVOLVE_JUDGE_MODEL, or [judge] model")
    return {**options, **http_options(s)}


def http_options(s: Settings) -> dict[str, Any]:
    """Timeouts and tries the user set for the policy server and judge endpoints (else theirs)."""
    h = s.http
    options: dict[str, Any] = {"timeout_s": h.timeout_s, "connect_timeout_s": h.connect_timeout_s,
                               "retries": None if h.attempts is None else max(0, h.attempts - 1)}
    return {k: v for k, v in options.items() if v is not None}


def build_agent(s: Settings, progress: Any = None):
    """Policy, tools and agent configuration, put together."""
    from .agent import Agent

    return Agent(build_policy(s), build_tools(s), build_agent_config(s), progress=progress)
