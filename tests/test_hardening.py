"""What a hostile or careless world sends, end to end through the commands: keys echoed by servers,
keys inside URLs, servers that never answer, output folders that cannot be written, ids that
collide, benchmark files in their own layout. Real commands, real files, loopback servers only.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from fakes.judge_server import FakeJudgeServer, Reply as JudgeReply
from fakes.openai_chat import FakeChatServer, Raw, answer, tool_call
from genevolve.pipeline.batch import read_rows

HERE = Path(__file__).parent


def plain_key(label: str) -> str:
    """A key shaped like no known credential, so that only knowing it can take it out. Each test
    has its own: keys a command registers stay registered in this process."""
    return f"plainkey7788ZZ-{label}-not-shaped-like-any-key"


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path, monkeypatch):
    """No settings leak in from the developer's environment or config file."""
    cfg = tmp_path / "empty.toml"
    cfg.write_text("")
    monkeypatch.setenv("GENEVOLVE_CONFIG", str(cfg))
    for var in ("GENEVOLVE_JUDGE_BASE_URL", "GENEVOLVE_JUDGE_MODEL", "GENEVOLVE_JUDGE_API_KEY", "OPENAI_BASE_URL",
                "OPENAI_API_KEY", "GENEVOLVE_BACKEND", "GENEVOLVE_POLICY", "GENEVOLVE_SEARCH", "GENEVOLVE_IMAGE_SEARCH",
                "SERPER_API_KEY", "SERPER_BASE_URL", "QWEN_EDIT_URLS", "GENEVOLVE_HTTP_TIMEOUT",
                "GENEVOLVE_HTTP_ATTEMPTS", "GENEVOLVE_HTTP_CONNECT_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)


def cli(argv: list[str]) -> int:
    from genevolve.cli import main
    return main(argv)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def everything_written(folder: Path) -> str:
    """The text of every file under `folder` (results, journals, summaries), for leak checks."""
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in sorted(folder.rglob("*")) if p.is_file())


def echoing_401(body, headers, path) -> Raw:
    """A server that refuses the caller and repeats everything that could identify it: the
    Authorization header, the user and password of Basic auth decoded, and the request path with
    its query string."""
    auth = headers.get("Authorization", "")
    decoded = base64.b64decode(auth.split()[-1]).decode() if auth.startswith("Basic ") else ""
    message = f"Incorrect API key provided: {auth} ({decoded}) for {path}; see {auth.split()[-1] if auth else ''}"
    return Raw(json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode(), status=401)


# ------------------------------------------------------------------ A. keys never reach outputs

@pytest.mark.parametrize("where", ["env", "flag", "userinfo", "query"])
def test_a_key_the_policy_server_echoes_is_in_no_output(tmp_path, monkeypatch, capsys, where):
    PLAIN_KEY = plain_key(where)
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "a red apple"}, {"id": "b", "prompt": "a pear"}])
    out = tmp_path / "out"
    with FakeChatServer(["unused"], respond=echoing_401) as server:
        base, extra = server.base_url, []
        if where == "env":
            monkeypatch.setenv("OPENAI_API_KEY", PLAIN_KEY)
        elif where == "flag":
            extra = ["--api-key", PLAIN_KEY]
        elif where == "userinfo":
            base = base.replace("http://", f"http://someone:{PLAIN_KEY}@")
        else:
            base = f"{base}?api_key={PLAIN_KEY}"
        code = cli(["run", "--input", str(inp), "--base-url", base, "--output-dir", str(out), "--quiet", *extra])
        seen = json.dumps(server.headers) + json.dumps(server.requests)
    captured = capsys.readouterr()
    assert code == 1                                     # every item failed: said, and not exit 0
    assert "every item failed (2 of 2)" in captured.err and "HTTP 401" in captured.err
    written = everything_written(out)
    rows = json.loads((out / "results.json").read_text())
    assert [r["id"] for r in rows] == ["a", "b"] and all("HTTP 401" in r["error"] for r in rows)
    assert "Incorrect API key provided" in rows[0]["error"]          # the server's words are kept
    if where in ("env", "flag"):
        assert PLAIN_KEY in seen                         # the key did reach the server, and came back
    for text in (written, captured.err, captured.out):
        assert PLAIN_KEY not in text


def test_a_key_the_judge_echoes_is_in_no_output(tmp_path, monkeypatch, capsys):
    PLAIN_KEY = plain_key("judge")
    gt_root, run = tmp_path / "gt", tmp_path / "render"
    gt_root.mkdir()
    run.mkdir()
    Image.new("RGB", (32, 24), (30, 30, 220)).save(gt_root / "truth.png")
    Image.new("RGB", (32, 24), (220, 30, 30)).save(run / "gen.png")
    results = write_jsonl(run / "results.jsonl", [
        {"id": f"r{i}", "prompt": "a red card", "gt_image": "truth.png", "output_path": str(run / "gen.png"),
         "success": True, "image_status": "ok", "error": None} for i in range(2)])
    monkeypatch.setenv("GENEVOLVE_JUDGE_API_KEY", PLAIN_KEY)
    out = tmp_path / "eval"
    refusal = JudgeReply(status=401, content=f"API key not valid: {PLAIN_KEY}. Bearer {PLAIN_KEY}")
    with FakeJudgeServer(responder=lambda body: refusal) as server:
        code = cli(["judge", "--results", str(results), "--gt-root", str(gt_root), "--output-dir", str(out),
                    "--base-url", server.base_url, "--model", "judge-model", "--quiet"])
        assert all(h.get("Authorization") == f"Bearer {PLAIN_KEY}" for h in server.headers)
    captured = capsys.readouterr()
    assert code == 0
    evals = json.loads((out / "results_eval.json").read_text())
    assert all("HTTP 401" in r["error"] and "API key not valid" in r["error"] for r in evals)
    for text in (everything_written(out), captured.err, captured.out):
        assert PLAIN_KEY not in text


def test_a_password_in_a_generator_service_url_is_in_no_output(tmp_path, monkeypatch, capsys):
    from fakes.qwen_service import QwenServiceFake, error_reply

    PLAIN_KEY = plain_key("qwen")

    agent = tmp_path / "agent"
    agent.mkdir()
    Image.new("RGB", (48, 32), (200, 160, 20)).save(agent / "ref.png")
    ref = {"img_id": "IMG_001", "note": "", "local_path": str(agent / "ref.png"), "url": None, "title": "r",
           "page_url": None}
    results = write_jsonl(agent / "results.jsonl", [
        {"id": name, "prompt": "x", "gen_prompt": "the first reference image on a table", "reference_images": [ref],
         "termination": "answer", "error": None} for name in ("refused", "drawn")])
    out = tmp_path / "render"
    with QwenServiceFake() as fake:
        fake.queue("POST", "/generate", error_reply(401, f"bad credentials someone:{PLAIN_KEY}"))
        monkeypatch.setenv("QWEN_EDIT_URLS", fake.url.replace("http://", f"http://someone:{PLAIN_KEY}@"))
        code = cli(["render", "--input", str(results), "--output-dir", str(out), "--backend",
                    "qwen-image-edit-service", "--backend-opt", "retries=0", "--parallel", "1", "--quiet"])
    captured = capsys.readouterr()
    assert code == 1                                   # render's status when any render failed
    records = {r["id"]: r for r in json.loads((out / "results.json").read_text())}
    assert "HTTP 401" in records["refused"]["error"] and records["drawn"]["success"] is True
    for text in (everything_written(out), captured.err, captured.out):
        assert PLAIN_KEY not in text


def test_a_key_the_web_search_service_echoes_is_in_no_output(tmp_path, monkeypatch, capsys):
    from fakes import Reply
    from fakes.serper import SerperFake

    PLAIN_KEY = plain_key("serper")

    def script(body):
        n = sum(1 for m in body["messages"] if m["role"] == "assistant")
        return tool_call("search", {"queries": ["capital of Australia"]}) if n == 0 else answer("a koala", [])

    out = tmp_path / "out"
    with SerperFake(api_key=PLAIN_KEY) as serper, FakeChatServer(script) as policy:
        serper.queue("POST", "/search", *[Reply.json({"message": f"Key {PLAIN_KEY} is over quota",
                                                      "statusCode": 403}, status=403)] * 4)
        monkeypatch.setenv("SERPER_API_KEY", PLAIN_KEY)
        monkeypatch.setenv("SERPER_BASE_URL", serper.url)
        code = cli(["run", "--prompt", "a koala", "--base-url", policy.base_url, "--output-dir", str(out),
                    "--search", "serper", "--search-opt", "cache=false", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0
    row = json.loads((out / "results.json").read_text())[0]
    assert row["termination"] == "answer"
    assert "403" in row["tool_calls"][0]["error"] and "over quota" in row["tool_calls"][0]["error"]
    for text in (everything_written(out), captured.err, captured.out):
        assert PLAIN_KEY not in text


# ------------------------------------------------------------------ C. a server that never answers

def test_a_policy_server_that_never_answers_costs_the_timeout_times_the_attempts(tmp_path, capsys):
    out = tmp_path / "out"
    with FakeChatServer(["unused"], respond=lambda body, headers, path: Raw(hang=True)) as server:
        code = cli(["run", "--prompt", "a lighthouse", "--base-url", server.base_url, "--output-dir", str(out),
                    "--timeout", "0.3", "--attempts", "2", "--quiet"])
        asked = len(server.requests)
    assert code == 1 and asked == 2
    row = json.loads((out / "results.json").read_text())[0]
    assert row["termination"] == "error" and "failed after 2 attempts" in row["error"]
    assert "Timeout" in row["error"]
    assert "every item failed (1 of 1)" in capsys.readouterr().err


def test_policy_http_defaults_fit_an_interactive_run_and_each_source_sets_them(tmp_path):
    from genevolve.settings import build_policy, resolve_settings

    def client(flags=None, env=None, toml=None):
        flags = {"policy.base_url": "http://127.0.0.1:9/v1", **(flags or {})}
        return build_policy(resolve_settings(flags, env or {}, toml or {})).client

    default = client()
    assert default.retry.attempts == 3
    assert default._sessions.timeout.sock_read == 120 and default._sessions.timeout.sock_connect == 10
    assert client({"http.attempts": 1, "http.timeout_s": 5.0}).retry.attempts == 1
    by_env = client(env={"GENEVOLVE_HTTP_ATTEMPTS": "2", "GENEVOLVE_HTTP_TIMEOUT": "7"})
    assert by_env.retry.attempts == 2 and by_env._sessions.timeout.sock_read == 7
    by_file = client(toml={"http": {"attempts": 4, "timeout": 9, "connect_timeout": 2}})
    assert by_file.retry.attempts == 4 and by_file._sessions.timeout.sock_read == 9
    assert by_file._sessions.timeout.sock_connect == 2


# ------------------------------------------------------------------ D. output folders that cannot be used

def one_line_exit_2(code: int, err: str, *words: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("genevolve: ") and all(w in lines[0] for w in words), lines[0]


@pytest.mark.parametrize("case", ["a file", "under a file", "journal is a folder", "array is a folder"])
def test_an_output_folder_that_cannot_hold_results_is_one_line_and_exit_2(tmp_path, capsys, case):
    blocker = tmp_path / "blocker"
    blocker.write_text("I am a file\n")
    out = {"a file": blocker, "under a file": blocker / "out"}.get(case, tmp_path / "out")
    if case == "journal is a folder":
        (out / "results.jsonl").mkdir(parents=True)
    elif case == "array is a folder":
        (out / "results.json").mkdir(parents=True)
    with FakeChatServer([answer("a lighthouse", [])]) as server:
        code = cli(["run", "--prompt", "a lighthouse", "--base-url", server.base_url, "--output-dir", str(out),
                    "--quiet"])
    words = {"a file": ["it is a file, not a folder"], "under a file": ["a part of the path is a file"],
             "journal is a folder": ["results.jsonl", "folder"], "array is a folder": ["results.json", "folder"]}
    one_line_exit_2(code, capsys.readouterr().err, str(blocker if case.endswith("file") else out), *words[case])
    assert blocker.read_text() == "I am a file\n"


def test_a_render_into_a_file_is_one_line_and_exit_2(tmp_path, capsys):
    results = write_jsonl(tmp_path / "results.jsonl", [{"id": "a", "gen_prompt": "a lighthouse"}])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "images").write_text("not a folder")
    code = cli(["render", "--input", str(results), "--output-dir", str(tmp_path / "out"), "--quiet"])
    one_line_exit_2(code, capsys.readouterr().err, "images folder", "it is a file, not a folder")


def read_only_run(out: Path, base_url: str) -> subprocess.CompletedProcess:
    """`genevolve run` into `out` while `out` cannot be written. As root (these tests' usual user)
    file modes do not stop writes, so the folder is bind-mounted read-only in a private mount
    namespace that ends with the child; as another user, its mode does it."""
    argv = [sys.executable, "-c", "import sys; from genevolve.cli import main; sys.exit(main(sys.argv[1:]))",
            "run", "--prompt", "a lighthouse", "--base-url", base_url, "--output-dir", str(out), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    if os.geteuid() != 0:
        out.chmod(0o555)
        try:
            return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
        finally:
            out.chmod(0o755)
    if not shutil.which("unshare"):
        pytest.skip("running as root without unshare(1): no way to make a folder read-only for this process")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"running as root and cannot make a private mount namespace: {probe.stderr.decode()[:200]}")
    script = 'mount --bind -o ro "$1" "$1" && shift && exec "$@"'
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(out), *argv], capture_output=True,
                          text=True, env=env, timeout=120)


@pytest.mark.parametrize("existing", [False, True])
def test_a_read_only_output_folder_is_one_line_and_exit_2(tmp_path, existing):
    out = tmp_path / "out"
    out.mkdir()
    if existing:                  # a finished earlier run: the journal is there, the folder is read-only
        (out / "results.jsonl").write_text(json.dumps({"id": "old", "termination": "answer"}) + "\n")
    with FakeChatServer([answer("a lighthouse", [])]) as server:
        done = read_only_run(out, server.base_url)
    one_line_exit_2(done.returncode, done.stderr, str(out), "Read-only file system" if os.geteuid() == 0
                    else "Permission denied")
    assert sorted(p.name for p in out.iterdir()) == (["results.jsonl"] if existing else [])


# ------------------------------------------------------------------ E. made-up ids never collide with given ones

def test_ids_the_reader_makes_up_never_equal_ids_the_file_gives(tmp_path):
    p = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "item_000004", "prompt": "given"},       # the id row 4 would get
        "{not json",                                    # line 2: a problem, id line_2 ...
        {"id": "line_2", "prompt": "a real row"},       # ... but a real row has that id
        {"prompt": "no id"},
    ])
    rows, problems = read_rows(p)
    ids = [r.id for r in rows] + [pr.id for pr in problems]
    assert len(set(ids)) == len(ids) == 4
    assert [r.id for r in rows][:2] == ["item_000004", "line_2"]
    assert problems[0].id.startswith("line_2") and problems[0].id != "line_2"
    assert rows[2].id.startswith("item_000004") and rows[2].id != "item_000004"
    assert read_rows(p)[1][0].id == problems[0].id and read_rows(p)[0][2].id == rows[2].id   # stable on rerun


def test_a_real_row_named_like_a_problem_still_runs(tmp_path, capsys):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "first"}, "{broken",
                                               {"id": "line_2", "prompt": "the row that used to be skipped"}])
    out = tmp_path / "out"
    with FakeChatServer([answer("a lighthouse", [])]) as server:
        assert cli(["run", "--input", str(inp), "--base-url", server.base_url, "--output-dir", str(out),
                    "--quiet"]) == 0
        asked = [b["messages"][1]["content"] for b in server.requests]
    assert "the row that used to be skipped" in asked
    rows = {r["id"]: r for r in json.loads((out / "results.json").read_text())}
    assert rows["line_2"]["termination"] == "answer"
    problem = next(r for i, r in rows.items() if i.startswith("line_2") and i != "line_2")
    assert "in.jsonl:2: not valid JSON" in problem["error"]


# ------------------------------------------------------------------ F. benchmark files as they are published

def test_run_reads_a_wise_prompt_file_as_it_is(tmp_path, capsys):
    wise = tmp_path / "cultural_common_sense.json"
    wise.write_text(json.dumps([
        {"Prompt": "Traditional food of the Mid-Autumn Festival", "Explanation": "Mooncakes.",
         "Category": "Cultural knowledge", "Subcategory": "Festival", "prompt_id": 1},
        {"Prompt": "The animal on the flag of Sri Lanka", "Explanation": "A lion holding a sword.",
         "Category": "Cultural knowledge", "Subcategory": "Animal", "prompt_id": 2}]))
    out = tmp_path / "out"
    with FakeChatServer([answer("a plate of mooncakes", [])]) as server:
        code = cli(["run", "--input", str(wise), "--base-url", server.base_url, "--output-dir", str(out), "--quiet"])
        asked = sorted(b["messages"][1]["content"] for b in server.requests)
    assert code == 0
    assert asked == ["The animal on the flag of Sri Lanka", "Traditional food of the Mid-Autumn Festival"]
    rows = json.loads((out / "results.json").read_text())
    assert [r["id"] for r in rows] == ["1", "2"] and all(r["termination"] == "answer" for r in rows)
    assert rows[0]["prompt"] == "Traditional food of the Mid-Autumn Festival" and rows[0]["Subcategory"] == "Festival"


def test_a_run_in_which_every_item_failed_exits_1_with_one_summary_line(tmp_path, capsys):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": "no prompt field"}, {"id": "b", "title": "none"}])
    out = tmp_path / "out"
    with FakeChatServer([answer("unused", [])]) as server:
        code = cli(["run", "--input", str(inp), "--base-url", server.base_url, "--output-dir", str(out), "--quiet"])
        assert server.requests == []
    err = capsys.readouterr().err
    assert code == 1
    summary = [line for line in err.splitlines() if "every item failed" in line]
    assert len(summary) == 1 and "(2 of 2)" in summary[0] and "no 'prompt' or 'question' field" in summary[0]
    with FakeChatServer([answer("a lighthouse", [])]) as server:     # one good row: the run is not a failure
        write_jsonl(inp, [{"id": "a", "text": "no prompt field"}, {"id": "b", "prompt": "a lighthouse"}])
        assert cli(["run", "--input", str(inp), "--base-url", server.base_url, "--output-dir", str(out),
                    "--quiet"]) == 0


# -- JSON lines whose strings hold line-breaking characters -----------------------------------------

ODD_BREAKS = "a\u2028b\u2029c\u0085d\x1ce\x1df\x1eg\x0bh\x0ci"


def test_json_lines_readers_split_records_only_at_newlines(tmp_path):
    """Our records are written with ensure_ascii=False, so a search snippet's U+2028, U+2029 or
    U+0085 reaches the file unescaped; str.splitlines() would cut the record there."""
    from genevolve.jsonio import JsonlAppender, dumps, jsonl_lines
    from genevolve.train.metrics import read_metrics, truncate_jsonl
    from genevolve.train.rollouts import load_rows

    rows = [{"id": f"r{i}", "step": i, "question": f"{ODD_BREAKS} {i}", "gt_image": "gt.png"} for i in (1, 2, 3)]
    path = tmp_path / "rows.jsonl"
    with JsonlAppender(path) as out:
        for row in rows:
            out.append(row)
    text = path.read_text(encoding="utf-8")
    assert "\u2028" in text and "\x85" in text                   # unescaped on disk
    assert len(text.splitlines()) > 3 and [ln for ln in jsonl_lines(text) if ln] == [dumps(r) for r in rows]
    read, problems = read_rows(path)
    assert not problems and [r.data["question"] for r in read] == [r["question"] for r in rows]
    assert [r["question"] for r in load_rows(path)] == [r["question"] for r in rows]
    assert read_metrics(path) == rows
    truncate_jsonl(path, 2)
    assert read_metrics(path) == rows[:2]


def test_training_metrics_are_strict_json(tmp_path):
    """A diverged step (NaN loss, infinite gradient norm) is written as null, not as the NaN token
    strict JSON readers refuse; values JSON has no type for are written as text."""
    from genevolve.jsonio import loads_strict
    from genevolve.train.metrics import MetricsLog, read_metrics
    log = MetricsLog(tmp_path, tensorboard=False)
    log.write({"step": 1, "loss": float("nan"), "grad_norm": float("inf"), "lr": 1e-5, "run": tmp_path})
    line = (tmp_path / "metrics.jsonl").read_text(encoding="utf-8").strip()
    assert loads_strict(line) == {"step": 1, "loss": None, "grad_norm": None, "lr": 1e-5, "run": str(tmp_path)}
    assert read_metrics(tmp_path / "metrics.jsonl")[0]["loss"] is None


def test_an_appender_mends_a_torn_last_line_and_keeps_a_whole_one(tmp_path):
    """A kill mid-append leaves a file without its last newline; the next record must not be glued
    to it, and a last record that is whole (only its newline lost) must not be dropped."""
    from genevolve.jsonio import JsonlAppender, read_jsonl_tolerant

    torn = tmp_path / "torn.jsonl"
    torn.write_bytes(b'{"id": "a"}\n{"id": "b", "text": "half a rec')
    whole = tmp_path / "whole.jsonl"
    whole.write_bytes(b'{"id": "a"}\n' + b'{"id": "b", "pad": "' + b"x" * 100_000 + b'"}')
    for path in (torn, whole):
        with JsonlAppender(path) as out:
            out.append({"id": "c"})
    assert [r["id"] for r in read_jsonl_tolerant(torn)] == ["a", "c"]
    assert [r["id"] for r in read_jsonl_tolerant(whole)] == ["a", "b", "c"]
    assert torn.read_bytes().endswith(b'\n{"id": "c"}\n') and whole.read_bytes().count(b"\n") == 3
