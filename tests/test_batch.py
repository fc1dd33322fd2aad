"""Batch runs: input rows, resumable results, crash safety, the `genevolve run` command."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fakes.openai_chat import FakeChatServer, answer, tool_call
from genevolve.pipeline.batch import InputError, ResultStore, read_rows

HERE = Path(__file__).parent
UPSTREAM_FIELDS = {"id", "prompt", "gen_prompt", "reference_images", "messages", "termination", "rounds", "error"}


def script(body):
    n = sum(1 for m in body["messages"] if m["role"] == "assistant")
    if n == 0:
        return tool_call("image_search", {"query": "flag australia"})
    return answer("the flag in the first reference image", ["IMG_001"])


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def run_child(out, inp, url, images, parallel=4, stop="-", event=None):
    return subprocess.Popen([sys.executable, str(HERE / "batch_child.py"), stop, str(event or out.parent / "event"),
                             "agent", str(out), str(inp), url, str(images), str(parallel)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(event: Path, child: subprocess.Popen) -> None:
    """Until the child reports it has frozen at its stop point (or dies, which fails the test)."""
    while not event.exists():
        if child.poll() is not None:
            raise AssertionError(f"the child ended before its stop point: {child.communicate()[1][-2000:]}")
        time.sleep(0.02)


def test_read_rows_problems_and_ids(tmp_path):
    p = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x"}, "{not json", [1, 2], {"question": "y"}])
    rows, problems = read_rows(p)
    assert [r.id for r in rows] == ["a", "item_000004"]
    assert [pr.line for pr in problems] == [2, 3]
    assert "in.jsonl:2: not valid JSON" in problems[0].message
    assert "expected a JSON object" in problems[1].message


def test_duplicate_ids_name_both_lines(tmp_path):
    p = write_jsonl(tmp_path / "in.jsonl", [{"id": 7, "prompt": "x"}, {"id": "7", "prompt": "y"}])
    with pytest.raises(InputError, match="duplicate id '7' at line 1 and line 2"):
        read_rows(p)


def test_unreadable_and_non_utf8_files(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        read_rows(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"prompt": "ok"}\n{"prompt": "\xff"}\n')
    with pytest.raises(InputError, match="bad.jsonl:2: the file is not UTF-8"):
        read_rows(bad)


def test_batch_writes_upstream_fields_and_passes_extras(tmp_path, image_folder):
    inp = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "q1", "question": "the Australian flag", "category": "flags", "difficulty": "hard"},
        {"id": "q2", "prompt": "the Australian flag again", "meta": {"k": 1}},
        {"id": "q3", "category": "no text"},
        "{broken",
    ])
    with FakeChatServer(script) as server:
        child = run_child(tmp_path / "out", inp, server.base_url, image_folder)
        out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    by_id = {r["id"]: r for r in results}
    assert set(by_id) == {"q1", "q2", "q3", "line_4"}
    q1 = by_id["q1"]
    assert UPSTREAM_FIELDS <= set(q1)
    assert q1["category"] == "flags" and q1["difficulty"] == "hard" and q1["question"] == "the Australian flag"
    assert q1["prompt"] == "the Australian flag" and q1["termination"] == "answer"
    assert q1["reference_images"][0]["img_id"] == "IMG_001"
    assert set(q1["reference_images"][0]) >= {"img_id", "note", "local_path", "url", "title", "page_url"}
    assert by_id["q2"]["meta"] == {"k": 1}
    assert by_id["q3"]["termination"] == "error" and "no 'prompt' or 'question'" in by_id["q3"]["error"]
    assert "in.jsonl:4" in by_id["line_4"]["error"]
    lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4


@pytest.mark.parametrize("stop", ["add:out:5", "json:out:1", "json:out:2"])
def test_kill_9_mid_run_then_rerun_loses_and_duplicates_nothing(tmp_path, image_folder, stop):
    """Killed right after the 5th item is journaled, or half way through the first (during the run)
    or the last (at the end) rewrite of results.json."""
    n = 12
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i:02d}", "prompt": f"flag {i}"} for i in range(n)])
    out, event = tmp_path / "out", tmp_path / "event"
    with FakeChatServer(script) as server:
        child = run_child(out, inp, server.base_url, image_folder, parallel=1, stop=stop, event=event)
        wait_for(event, child)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        journal = out / "results.jsonl"
        done_before = [json.loads(l)["id"] for l in journal.read_text().splitlines()]
        assert done_before == [f"r{i:02d}" for i in range(len(done_before))] and 0 < len(done_before) <= n
        if stop.startswith("add"):
            assert len(done_before) == 5
        with open(journal, "a") as f:            # a torn line, as a kill during a write would leave
            f.write('{"id": "r99", "prompt": "tor')
        requests_before = len(server.requests)
        child = run_child(out, inp, server.base_url, image_folder)
        _, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        reran = (len(server.requests) - requests_before) // 2
    ids = [json.loads(l)["id"] for l in journal.read_text().splitlines()]
    assert sorted(ids) == [f"r{i:02d}" for i in range(n)]          # none lost, none twice, torn line gone
    results = json.loads((out / "results.json").read_text())
    assert [r["id"] for r in results] == [f"r{i:02d}" for i in range(n)]
    assert reran == n - len(done_before)                            # done items were not run again
    assert not list(out.glob(".*.tmp"))                             # the killed rewrite left nothing behind


def test_error_items_are_retried_on_rerun(tmp_path):
    store = ResultStore(tmp_path, retry=lambda r: r.get("termination") == "error")
    store.add({"id": "a", "termination": "answer"})
    store.add({"id": "b", "termination": "error", "error": "server down"})
    store.close()
    again = ResultStore(tmp_path, retry=lambda r: r.get("termination") == "error")
    assert again.done("a") and not again.done("b")
    again.close()
    assert [json.loads(l)["id"] for l in (tmp_path / "results.jsonl").read_text().splitlines()] == ["a"]


def test_genevolve_run_cli_against_loopback_server(tmp_path, monkeypatch):
    from genevolve.cli import main

    with FakeChatServer([answer("a watercolor lighthouse at dusk", [])]) as server:
        code = main(["run", "--prompt", "a lighthouse", "--base-url", server.base_url, "--model", "M",
                     "--output-dir", str(tmp_path / "d"), "--quiet"])
    assert code == 0
    rows = json.loads((tmp_path / "d" / "results.json").read_text())
    assert rows[0]["gen_prompt"] == "a watercolor lighthouse at dusk" and UPSTREAM_FIELDS <= set(rows[0])
    assert (tmp_path / "d" / "results.jsonl").exists()
    assert server.requests[0]["model"] == "M"
