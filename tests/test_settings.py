"""Settings resolved once: flag > environment > TOML file > default; the config file never holds a secret."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from fakes.openai_chat import FakeChatServer, answer
from genevolve.config import ConfigError, load_config
from genevolve.settings import AREAS, build_generator, build_judge, resolve_settings

ROOT = Path(__file__).resolve().parents[1]
SECRET = "s3cr3t-VALUE-9f2"


def resolve(flags=None, env=None, toml_text=None, tmp_path=None, **kw):
    toml = {}
    path = None
    if toml_text is not None:
        path = tmp_path / "genevolve.toml"
        path.write_text(toml_text)
        toml = load_config(path)
    return resolve_settings(flags or {}, env or {}, toml, config_file=str(path) if path else None, **kw)


def get(settings, path):
    area, _, name = path.partition(".")
    return getattr(getattr(settings, area), name)


# ------------------------------------------------------------------ precedence

CASES = [
    # path, flag value, environment, TOML text, (flag, env, file, default) results
    ("policy.base_url", "http://flag/v1", {"OPENAI_BASE_URL": "http://env/v1"},
     '[policy]\nbase_url = "http://file/v1"', ("http://flag/v1", "http://env/v1", "http://file/v1", None)),
    ("policy.model", "flag-model", {"GENEVOLVE_MODEL": "env-model"}, '[policy]\nmodel = "file-model"',
     ("flag-model", "env-model", "file-model", None)),
    ("tools.search", "searxng", {"GENEVOLVE_SEARCH": "serper"}, '[tools]\nsearch = "offline"',
     ("searxng", "serper", "offline", "offline")),
    ("generator.backend", "openai-images", {"GENEVOLVE_BACKEND": "nano-banana-pro"},
     '[generator]\nbackend = "qwen-image-edit-service"',
     ("openai-images", "nano-banana-pro", "qwen-image-edit-service", "offline")),
    ("judge.model", "flag-judge", {"GENEVOLVE_JUDGE_MODEL": "env-judge"}, '[judge]\nmodel = "file-judge"',
     ("flag-judge", "env-judge", "file-judge", None)),
    ("http.timeout_s", 7.5, {"GENEVOLVE_HTTP_TIMEOUT": "30"}, "[http]\ntimeout = 60", (7.5, 30.0, 60.0, None)),
    ("http.attempts", 2, {"GENEVOLVE_HTTP_ATTEMPTS": "3"}, "[http]\nattempts = 5", (2, 3, 5, None)),
    ("tools.search_semantic", True, {"GENEVOLVE_SEARCH_SEMANTIC": "no"}, "[tools]\nsearch_semantic = true",
     (True, False, True, None)),
    ("sampling.temperature", 0.0, {}, "[sampling]\ntemperature = 0.3", (0.0, 0.3, 0.3, None)),
    ("agent.protocol", "strict", {}, '[agent]\nprotocol = "released"', ("strict", "released", "released", "default")),
    ("downloads.per_host_concurrency", 1, {}, "[downloads]\nper_host_concurrency = 3", (1, 3, 3, None)),
    ("tools.serper_base_url", "http://flag", {"SERPER_BASE_URL": "http://env"}, '[serper]\nbase_url = "http://file"',
     ("http://flag", "http://env", "http://file", None)),
    ("generator.font", "/flag.ttf", {"GENEVOLVE_FONT": "/env.ttf"}, '[generator]\nfont = "/file.ttf"',
     ("/flag.ttf", "/env.ttf", "/file.ttf", None)),
]


@pytest.mark.parametrize("path, flag, env, toml_text, expected", CASES, ids=[c[0] for c in CASES])
def test_flag_beats_env_beats_file_beats_default(tmp_path, path, flag, env, toml_text, expected):
    want_flag, want_env, want_file, want_default = expected
    assert get(resolve({path: flag}, env, toml_text, tmp_path), path) == want_flag
    assert get(resolve({path: None}, env, toml_text, tmp_path), path) == want_env
    assert get(resolve({}, {}, toml_text, tmp_path), path) == want_file
    assert get(resolve(), path) == want_default


def test_judge_endpoint_order_and_command_defaults(tmp_path):
    toml = '[judge]\nbase_url = "http://file/v1"'
    env = {"GENEVOLVE_JUDGE_BASE_URL": "http://judge-env/v1", "OPENAI_BASE_URL": "http://openai-env/v1"}
    assert resolve({}, env, toml, tmp_path).judge.base_url == "http://judge-env/v1"
    assert resolve({}, {"OPENAI_BASE_URL": "http://openai-env/v1"}, toml, tmp_path).judge.base_url == \
        "http://openai-env/v1"
    assert resolve({}, {}, toml, tmp_path).judge.base_url == "http://file/v1"
    # a command's own default (bench judges offline) loses to the file, wins over the built-in one
    assert resolve(defaults={"judge.name": "offline"}).judge.name == "offline"
    assert resolve({}, {}, '[judge]\nname = "kscore"', tmp_path, defaults={"judge.name": "offline"}).judge.name == \
        "kscore"
    # empty environment variables count as unset
    assert resolve({}, {"GENEVOLVE_JUDGE_BASE_URL": "", "OPENAI_BASE_URL": ""}, toml, tmp_path).judge.base_url == \
        "http://file/v1"


def test_lists_and_option_tables_merge_file_then_flags(tmp_path):
    toml = ('[downloads]\nallow_hosts = ["mirror.local:8080"]\n'
            '[generator.qwen_image_edit_service]\nsteps = 20\nseed = 1\n'
            '[search.searxng]\nurl = "http://searx.file"\n'
            '[policy]\ntool_call_budget = 3\nobservation_chars = 500')
    s = resolve({"downloads.allow_hosts": ["127.0.0.1:9"], "generator.backend": "qwen-image-edit-service",
                 "generator.options": {"steps": 4}, "tools.search": "searxng",
                 "policy.budget": {"tool_call_budget": 5}}, {}, toml, tmp_path)
    assert s.downloads.allow_hosts == ["mirror.local:8080", "127.0.0.1:9"]
    assert s.generator.options == {"steps": 4, "seed": 1}
    assert s.tools.search_options == {"url": "http://searx.file"}
    assert s.policy.budget == {"tool_call_budget": 5, "observation_chars": 500}
    assert resolve({"generator.backend": "offline"}, {}, toml, tmp_path).generator.options == {}


def test_bad_values_name_where_they_came_from(tmp_path):
    with pytest.raises(ConfigError, match="environment variable GENEVOLVE_HTTP_ATTEMPTS: expected an integer"):
        resolve({}, {"GENEVOLVE_HTTP_ATTEMPTS": "many"})
    with pytest.raises(ConfigError, match="environment variable GENEVOLVE_SEARCH_SEMANTIC: .*true or false"):
        resolve({}, {"GENEVOLVE_SEARCH_SEMANTIC": "perhaps"})
    with pytest.raises(ConfigError, match=r"genevolve.toml: \[agent\] max_rounds: expected an integer, got 'ten'"):
        resolve({}, {}, '[agent]\nmax_rounds = "ten"', tmp_path)
    with pytest.raises(ConfigError, match=r"\[agent\] has no setting 'max_round'"):
        resolve({}, {}, "[agent]\nmax_round = 3", tmp_path)
    with pytest.raises(ConfigError, match=r"\[agent\] protocol: 'loose' is not one of default, strict, released"):
        resolve({}, {}, '[agent]\nprotocol = "loose"', tmp_path)
    with pytest.raises(ConfigError, match=r"\[search\] serper must be a table"):
        resolve({}, {}, '[search]\nserper = "x"', tmp_path)
    with pytest.raises(ConfigError, match=r"genevolve.toml: .*line 2"):
        resolve({}, {}, "[agent]\nmax_rounds = = 3", tmp_path)
    unknown_table = resolve({}, {}, "[train]\nlearning_rate = 1e-5", tmp_path)      # other parts' tables pass
    assert unknown_table.agent.max_rounds is None


# ------------------------------------------------------------------ secrets never come from the file

SECRET_FILES = {
    "api_key": f'[policy]\napi_key = "{SECRET}"',
    "gemini_api_key": f'[generator.nano_banana_pro]\ngemini_api_key = "{SECRET}"',
    "judge_api_key": f'[judge]\njudge_api_key = "{SECRET}"',
    "token": f'[serper]\ntoken = "{SECRET}"',
    "api-key top level": f'api-key = "{SECRET}"',
    "header table": f'[policy.headers]\n"X-Api-Key" = "{SECRET}"',
    "authorization header": f'[policy.headers]\nAuthorization = "Bearer {SECRET}"',
    "inline table": f'[policy]\nheaders = {{ apiKey = "{SECRET}" }}',
    "array of tables": f'[[search.hosts]]\nname = "a"\n[[search.hosts]]\npassword = "{SECRET}"',
    "userinfo in a URL": f'[judge]\nbase_url = "https://user:{SECRET}@judge.example/v1"',
    "token in a URL list": f'[downloads]\nallow_hosts = ["https://{SECRET}@mirror.local"]',
    "secret": f'[generator.openai_images]\nclient_secret = "{SECRET}"',
    "key in a query string": f'[searxng]\nurl = "https://searx.example/?token={SECRET}"',
    "key-shaped value": '[generator.openai_images]\nextra = "sk-' + SECRET + '"',
}


@pytest.mark.parametrize("text", list(SECRET_FILES.values()), ids=list(SECRET_FILES))
def test_config_file_with_a_secret_is_refused_without_echoing_it(tmp_path, text):
    path = tmp_path / "genevolve.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "environment" in message and str(path) in message and SECRET not in message


def test_harmless_names_are_not_secrets(tmp_path):
    path = tmp_path / "genevolve.toml"
    path.write_text('[sampling]\nmax_tokens = 512\ntop_k = 20\n[judge]\nbase_url = "https://judge.example/v1"\n'
                    '[policy]\nmax_gen_prompt_chars = 300\n')
    assert load_config(path)["sampling"]["max_tokens"] == 512


def test_secrets_stay_out_of_reprs():
    s = resolve({}, {"OPENAI_API_KEY": SECRET, "SERPER_API_KEY": SECRET, "GOOGLE_API_KEY": SECRET,
                     "GENEVOLVE_JUDGE_API_KEY": SECRET})
    assert s.policy.api_key == SECRET and s.judge.api_key == SECRET and s.generator.gemini_api_key == SECRET
    assert SECRET not in repr(s) and SECRET not in json.dumps(s.to_dict())
    assert s.to_dict()["tools"]["search"] == "offline"


# ------------------------------------------------------------------ built objects get what was resolved

def test_builders_pass_the_resolved_values():
    s = resolve({}, {"GENEVOLVE_JUDGE_BASE_URL": "http://judge.local/v1", "GENEVOLVE_JUDGE_MODEL": "jm",
                     "GENEVOLVE_JUDGE_API_KEY": SECRET})
    judge = build_judge(s)
    assert (judge.endpoint.base_url, judge.endpoint.model, judge.endpoint.api_key) == \
        ("http://judge.local/v1", "jm", SECRET)
    assert build_judge(s, "offline").name == "offline"
    s = resolve({"generator.backend": "nano-banana-pro"}, {"GEMINI_API_KEY": SECRET, "GEMINI_BASE_URL": "http://g"})
    gen = build_generator(s)
    assert gen.base_url == "http://g" and gen.api_key == SECRET
    with pytest.raises(ValueError, match="GOOGLE_API_KEY or GEMINI_API_KEY"):
        build_generator(resolve({"generator.backend": "nano-banana-pro"}))
    with pytest.raises(ConfigError, match="no judge endpoint"):
        build_judge(resolve())


def run_cli(argv):
    from genevolve.cli import main
    return main(argv)


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    cfg = tmp_path / "genevolve.toml"
    cfg.write_text("")
    monkeypatch.setenv("GENEVOLVE_CONFIG", str(cfg))
    for var in ("OPENAI_BASE_URL", "GENEVOLVE_MODEL", "OPENAI_API_KEY", "GENEVOLVE_POLICY"):
        monkeypatch.delenv(var, raising=False)
    return cfg


def test_command_reads_flag_env_and_file_in_order(tmp_path, monkeypatch, clean_env):
    """Through `genevolve run` to a loopback server: which model name reaches it."""
    with FakeChatServer(lambda body: answer("a lighthouse at dusk", [])) as server:
        clean_env.write_text(f'[policy]\nbase_url = "{server.base_url}"\nmodel = "file-model"\n')
        out = tmp_path / "out"
        assert run_cli(["run", "--prompt", "a lighthouse", "--output-dir", str(out / "a"), "--quiet"]) == 0
        monkeypatch.setenv("GENEVOLVE_MODEL", "env-model")
        assert run_cli(["run", "--prompt", "a lighthouse", "--output-dir", str(out / "b"), "--quiet"]) == 0
        assert run_cli(["run", "--prompt", "a lighthouse", "--output-dir", str(out / "c"), "--model", "flag-model",
                        "--quiet"]) == 0
        models = [r["model"] for r in server.requests]
    assert models[0] == "file-model" and models[-1] == "flag-model" and "env-model" in models


def test_bad_config_is_one_line_and_exit_2(tmp_path, capsys, clean_env):
    clean_env.write_text(f'[policy]\nbase_url = "http://127.0.0.1:9/v1"\napi_key = "{SECRET}"\n')
    assert run_cli(["run", "--prompt", "x", "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("genevolve: config file") and SECRET not in err
    clean_env.write_text("[http]\nattempts = 0.5\n")
    assert run_cli(["run", "--prompt", "x", "--output-dir", str(tmp_path / "o")]) == 2
    assert "[http] attempts" in capsys.readouterr().err


# ------------------------------------------------------------------ guards on the whole package

def env_names() -> set[str]:
    """Every variable the settings read, and every one the command-line modules read themselves."""
    names = {"GENEVOLVE_CACHE", "GENEVOLVE_CONFIG", "XDG_CACHE_HOME"}
    for cls in AREAS.values():
        for f in dataclasses.fields(cls):
            names.update(f.metadata["env"])
    for path in [ROOT / "genevolve" / "config.py", *(ROOT / "genevolve" / "cli").glob("*.py")]:
        names.update(re.findall(r"""environ(?:\.get\(|\[)\s*["']([A-Z][A-Z0-9_]+)["']""",
                                path.read_text(encoding="utf-8")))
    return names


def test_every_variable_the_program_reads_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| variable |"):]
    missing = sorted(n for n in env_names() if f"`{n}`" not in table)
    assert not missing, f"README's variable table lacks {missing}"


def test_library_modules_read_no_environment_and_raise_no_systemexit():
    # reading a setting; handing the whole environment to a child process is not one
    reads = re.compile(r"os\.environ\.get\(|os\.environ\[|\bgetenv\(|\bin os\.environ(?!\.)|from os import environ")
    hf_offline = re.compile(r"""environ(\.setdefault\(|\[)\s*["']HF_HUB_OFFLINE""")
    offenders = []
    for path in sorted((ROOT / "genevolve").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text(encoding="utf-8")
        if hf_offline.search(text):
            offenders.append(f"{rel}: sets HF_HUB_OFFLINE for the whole process")
        if rel.startswith("genevolve/cli/") or rel == "genevolve/config.py":
            continue
        if reads.search(text):
            offenders.append(f"{rel}: reads the environment")
        if re.search(r"raise SystemExit", text):
            offenders.append(f"{rel}: raises SystemExit")
    assert not offenders, offenders


def test_the_hf_policy_is_built_from_a_checkpoint_folder(tmp_path):
    pytest.importorskip("transformers")
    from genevolve.policies.hf import HFPolicy
    from genevolve.settings import build_policy, resolve_settings
    from genevolve.train.tiny import build_tiny_checkpoint

    folder = build_tiny_checkpoint(tmp_path / "tiny")
    settings = resolve_settings({"policy.name": "hf", "policy.model_path": str(folder),
                                 "policy.budget": {"tool_call_budget": 4}})
    policy = build_policy(settings)
    assert isinstance(policy, HFPolicy) and policy.tool_call_budget == 4
    assert isinstance(build_policy(resolve_settings({"policy.name": f"hf:{folder}"})), HFPolicy)
    with pytest.raises(ConfigError, match="--model-path"):
        build_policy(resolve_settings({"policy.name": "hf"}))
    with pytest.raises(ConfigError, match="unknown policy"):
        build_policy(resolve_settings({"policy.name": "gpt"}))
