"""Side by side: our agent in `--protocol released` mode against the released GenEvolve runtime.

The same scripted requests run through the released runtime's own agent class (imported at run
time from the user's copy of MeiGen-AI/GenEvolve, `--upstream DIR`; nothing of it lives in this
repository) and through ours (`genevolve.agent.Agent` with `AgentConfig(protocol="released",
released_assets=DIR)`, `OpenAICompatPolicy`, the Serper search backends), one after the other
against loopback fakes from tests/fakes: the OpenAI-compatible chat fake replaying the script (a
fresh one for each run), a Serper fake and one image host (shared; a case that scripts Serper's
replies queues them again before each run).

Per request it compares what the policy was sent on every call (the messages, exactly, after
run-specific text is replaced by placeholders: ports, download folders and file names), the
number of policy calls, and the outcome: termination, rounds, error, gen_prompt, references (id,
note, title, url, page url), the final message list, and whether each reference's local file
holds the bytes its URL served. A second table compares what went over the wire but never reached
the policy: sampling fields of the chat request, Serper request bodies, image downloads.

    .venv/bin/python benchmarks/released_parity.py --upstream /tmp/upstream [--n 40 | --all] [--cli]
        [--json out.jsonl] [--only CLASS]

`--n` requests are taken from the behaviour classes in turn (the default 40 covers every class);
`--all` runs every case once. `--cli` also runs both command lines on one batch of the cases that
need no per-run service scripting: the released runtime's `scripts/run_agent.py` and our
`genevolve run --protocol released --released-assets DIR`, and compares their results.json rows.

The released runtime needs the `openai` and `requests` packages (not dependencies of this
project: install them for this check only). It reads SERPER_API_KEY and SERPER_BASE_URL from the
environment, so this script sets both to the Serper fake.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import hashlib
import importlib.util
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from fakes import Reply  # noqa: E402
from fakes.image_host import ImageHostFake  # noqa: E402
from fakes.openai_chat import FakeChatServer, answer, tool_call  # noqa: E402
from fakes.serper import SerperFake  # noqa: E402
from genevolve.agent import Agent, AgentConfig  # noqa: E402
from genevolve.policies.openai_compat import OpenAICompatPolicy  # noqa: E402
from genevolve.tools import default_tools  # noqa: E402
from genevolve.tools.web_search import SerperImageBackend, SerperSearchBackend  # noqa: E402

KEY = "parity-serper-key"
MODEL = "GenEvolve"
UPSTREAM_PACKAGE = "released_genevolve"   # our package is also called genevolve: load theirs under another name

# The fields compared per request; the first group is what the policy saw and what the run recorded.
BEHAVIOUR_FIELDS = ("calls", "policy_messages", "termination", "rounds", "error", "gen_prompt", "references",
                    "messages", "reference_files")
WIRE_FIELDS = ("sampling", "serper_requests", "downloads")


# ------------------------------------------------------------------------------------------- cases

@dataclass
class Case:
    klass: str
    name: str
    request: str
    script: list[str] | Callable[[dict], str]
    # Replies the Serper fake gives before its normal behaviour, per run: (path, [Reply, ...]).
    serper_queue: list[tuple[str, list[Reply]]] | None = None
    chat_fail: tuple[int, int] | None = None      # (first N chat requests fail, with this status)
    chat_raw: bytes | None = None                 # the chat fake answers every request with these bytes


def tc(name: str, arguments: Any, think: str = "I need more information.") -> str:
    return tool_call(name, arguments, think)


def ans(gen_prompt: Any, refs: list, think: str = "I have enough.") -> str:
    if all(isinstance(r, (str, dict)) for r in refs):
        return answer(gen_prompt, refs, think)
    return f"<think>{think}</think>\n<answer>{json.dumps({'gen_prompt': gen_prompt, 'reference_images': refs})}</answer>"


def raw_answer(payload: dict, think: str = "I have enough.") -> str:
    return f"<think>{think}</think>\n<answer>{json.dumps(payload)}</answer>"


def assistant_count(body: dict) -> int:
    return sum(1 for m in body["messages"] if m["role"] == "assistant")


def never_answers_mixed(body: dict) -> str:
    n = assistant_count(body)
    kind = n % 3
    if kind == 0:
        return tc("search", {"queries": [f"fact number {n}"]})
    if kind == 1:
        return tc("image_search", {"query": f"subject {n}", "top_k": 2})
    return tc("query_knowledge", {"skill_name": "spatial_layout"})


def never_answers_images(body: dict) -> str:
    return tc("image_search", {"query": f"landmark view {assistant_count(body)}"})


def ten_calls_then(final: str) -> Callable[[dict], str]:
    def script(body: dict) -> str:
        n = assistant_count(body)
        if n < 10:
            return tc("search", {"queries": [f"step {n}"]}) if n % 2 else tc("image_search", {"query": f"item {n}"})
        return final
    return script


def image_items(host: str, slug: str, paths: list[str], **extra: Any) -> dict:
    """A Serper /images body whose results point at `paths` on the image host."""
    items = []
    for i, path in enumerate(paths, 1):
        item = {"title": f"{slug} picture {i}", "imageUrl": f"{host}{path}?q={slug}&n={i}",
                "link": f"https://example.org/{slug}/page{i}", "position": i}
        item.update(extra.get(i, {}))
        items.append({k: v for k, v in item.items() if v is not None})
    return {"images": items}


def build_cases(host: str) -> list[Case]:
    """Every behaviour class of issue 11's table, plus ordinary good runs and the edges found on the way."""
    flag = "A poster with the flag of the country whose capital is Canberra and the words 'G'DAY MATE' at the top"
    both_tool_first = ('<think>Search first.</think>\n<tool_call>{"name": "search", "arguments": {"queries": '
                       '["Canberra"]}}</tool_call>\n<answer>{"gen_prompt": "A red apple on a table", '
                       '"reference_images": []}</answer>')
    both_answer_first = ('<think>Done.</think>\n<answer>{"gen_prompt": "A green pear", "reference_images": []}</answer>'
                         '\n<tool_call>{"name": "image_search", "arguments": {"query": "pear"}}</tool_call>')
    in_think = ('<think>Let me look it up: <tool_call>{"name": "search", "arguments": {"queries": '
                '["tallest tower in Tokyo"]}}</tool_call> and then decide.</think>')
    in_think_and_after = ('<think>Maybe <tool_call>{"name": "search", "arguments": {"queries": ["option one"]}}'
                          '</tool_call></think>\n<tool_call>{"name": "image_search", "arguments": '
                          '{"query": "option two"}}</tool_call>')
    good = ans("A poster of the flag in the first reference image with the words 'G'DAY MATE' at the top.",
               [{"img_id": "IMG_001", "note": "the flag"}])
    cases = [
        # ordinary good runs
        Case("good_run", "image_search then answer", flag,
             [tc("image_search", {"query": "flag of Australia"}), good]),
        Case("good_run", "search, image_search, skill, answer (refs unsorted)", flag,
             [tc("search", {"queries": ["capital Canberra country"]}),
              tc("image_search", {"query": "flag of Australia", "top_k": 3}),
              tc("query_knowledge", {"skill_name": "text_rendering"}),
              ans("The flag from the first reference image waving under the sky of the second reference image, "
                  "with 'G'DAY MATE' in bold letters at the top.",
                  [{"img_id": "IMG_003", "note": "sky"}, {"img_id": "IMG_001", "note": "the flag"}])]),
        Case("good_run", "two subjects, two searches", "A koala hugging the Sydney Opera House",
             [tc("image_search", {"query": "koala"}), tc("image_search", {"query": "Sydney Opera House"}),
              ans("The koala of the first reference image hugging the building of the second reference image.",
                  [{"img_id": "IMG_006", "note": "building"}, {"img_id": "IMG_002", "note": "koala"}])]),
        Case("good_run", "answer at once, no references", "A plain blue square",
             [ans("A plain blue square on white.", [])]),
        # a policy that never answers
        Case("never_answers", "search / image_search / skill forever", "A map of the moon", never_answers_mixed),
        Case("never_answers", "image_search forever", "A castle at dawn", never_answers_images),
        # a reply with an answer and a tool call
        Case("answer_and_tool_call", "tool call written before the answer", "A red apple", [both_tool_first]),
        Case("answer_and_tool_call", "answer written before the tool call", "A green pear", [both_answer_first]),
        Case("tool_call_in_think", "tool call only inside <think>", "The tallest tower in Tokyo at night",
             [in_think, ans("A tall tower at night.", [])]),
        Case("tool_call_in_think", "one inside <think>, another after it", "Option one or two",
             [in_think_and_after, ans("Option one.", [])]),
        # JSON in tags is strict
        Case("strict_json", "answer with a trailing comma", "A cat",
             ['<think>x</think>\n<answer>{"gen_prompt": "a cat", "reference_images": [],}</answer>',
              ans("a cat", [])]),
        Case("strict_json", "answer without </answer>", "A dog",
             ['<think>x</think>\n<answer>{"gen_prompt": "a dog", "reference_images": []}', ans("a dog", [])]),
        Case("strict_json", "tool call with a trailing comma", "A bird",
             ['<think>x</think>\n<tool_call>{"name": "search", "arguments": {"queries": ["bird"],}}</tool_call>',
              ans("a bird", [])]),
        Case("strict_json", "answer JSON in a code fence", "A fish",
             ['<think>x</think>\n<answer>```json\n{"gen_prompt": "a fish", "reference_images": []}\n```</answer>',
              ans("a fish", [])]),
        # replies with surrounding whitespace
        Case("whitespace", "tool call and answer padded with blank lines", "A lighthouse",
             ["\n\n  " + tc("image_search", {"query": "lighthouse"}) + "\n\t\n",
              "\n" + ans("The lighthouse of the first reference image.", ["IMG_002"]) + "   \n"]),
        Case("whitespace", "whitespace inside the tags", "A windmill",
             ['<think>\n  windmill  \n</think>\n\n<tool_call>\n  {"name": "image_search", "arguments": '
              '{"query": "  windmill  "}}  \n</tool_call>\n',
              '  <think>ok</think><answer>\n{"gen_prompt": "  A windmill.  ", "reference_images": '
              '[{"img_id": " IMG_001 ", "note": "  the mill  "}]}\n</answer>']),
        # reference resolution
        Case("reference_resolution", "[003, 009, 001, 001, 002] with 003/009 unknown", "Two apples",
             [tc("image_search", {"query": "apple", "top_k": 2}),
              ans("Two apples like IMG_001, see the fifth reference image",
                  ["IMG_003", "IMG_009", "IMG_001", "IMG_001", "IMG_002"])]),
        Case("reference_resolution", "three known ids, reversed", "Three bells",
             [tc("image_search", {"query": "bell", "top_k": 4}),
              ans("Bells like the first and second reference images.", ["IMG_004", "IMG_002", "IMG_003"])]),
        # an unusable answer is accepted as written
        Case("unusable_answer", "ids and an out-of-range ordinal in gen_prompt", "A vase",
             [tc("image_search", {"query": "vase"}),
              ans("The vase IMG_001 next to the object in the third reference image, see https://x.org/a.png",
                  ["IMG_001"])]),
        Case("unusable_answer", "empty gen_prompt", "A lamp",
             [tc("image_search", {"query": "lamp"}), ans("", ["IMG_001"])]),
        Case("unusable_answer", "bare ids and a non-list", "A chair",
             [tc("image_search", {"query": "chair"}),
              raw_answer({"gen_prompt": "A chair like the first reference image.", "reference_images": ["IMG_001"]}),
              ]),
        Case("unusable_answer", "reference_images is a string", "A table",
             [tc("image_search", {"query": "table"}),
              raw_answer({"gen_prompt": "A table.", "reference_images": "IMG_001"})]),
        # observations
        Case("image_search_observation", "top_k 3", "A tulip field",
             [tc("image_search", {"query": "tulip field", "top_k": 3}), ans("Tulips.", ["IMG_001"])]),
        Case("image_search_observation", "the same search twice", "A panda",
             [tc("image_search", {"query": "panda"}), tc("image_search", {"query": "panda"}),
              tc("image_search", {"query": "panda", "top_k": 7}), ans("A panda.", ["IMG_001"])]),
        Case("search_observation", "three queries, top_k 3", "The mascot of the 1972 Olympics",
             [tc("search", {"queries": ["1972 Olympics mascot", "Waldi dachshund", "Munich 1972"], "top_k": 3}),
              ans("A dachshund mascot.", [])]),
        Case("search_observation", "queries as one string", "The capital of Peru",
             [tc("search", {"queries": "capital of Peru"}), ans("Lima.", [])]),
        Case("search_observation", "default top_k", "Who painted the Mona Lisa",
             [tc("search", {"queries": ["Mona Lisa painter"]}), ans("Leonardo.", [])]),
        Case("skill_observation", "every skill and an unknown one", "A crowded market, precise counts",
             [tc("query_knowledge", {"skill_name": s}) for s in
              ("spatial_layout", "aesthetic_drawing", "text_rendering", "creative_drawing",
               "anatomy_body_coherence", "attribute_binding", "physical_material_consistency",
               "quantity_counting", "juggling")] + [ans("A market.", [])]),
        # the final step
        Case("final_step", "ten tool calls, then the answer", "A harbour at dusk",
             ten_calls_then(ans("A harbour like the first reference image.", ["IMG_001"]))),
        Case("final_step", "ten tool calls, then no action", "A desert road",
             ten_calls_then("I am still not sure what to do.")),
        Case("final_step", "ten tool calls, then a tool call", "A snowy village",
             ten_calls_then(tc("search", {"queries": ["one more"]}))),
        Case("format_error", "prose, then an answer", "A sailboat",
             ["I think a sailboat would be nice.", ans("A sailboat.", [])]),
        Case("format_error", "tool call with list arguments", "A kite",
             ['<think>x</think>\n<tool_call>{"name": "search", "arguments": ["kite"]}</tool_call>',
              ans("A kite.", [])]),
        # edges of the tools
        Case("search_edge", "an empty query among others", "A violin",
             [tc("search", {"queries": ["violin maker", "", "Stradivari"]}), ans("A violin.", [])]),
        Case("search_edge", "top_k 20", "A cello",
             [tc("search", {"queries": ["cello"], "top_k": 20}), ans("A cello.", [])]),
        Case("search_edge", "no queries", "A drum",
             [tc("search", {"queries": []}), ans("A drum.", [])]),
        Case("search_edge", "top_k as a string", "A flute",
             [tc("search", {"queries": ["flute"], "top_k": "2"}), ans("A flute.", [])]),
        Case("image_search_edge", "top_k 20", "A zebra",
             [tc("image_search", {"query": "zebra", "top_k": 20}), ans("A zebra.", ["IMG_001"])]),
        Case("image_search_edge", "empty query", "A giraffe",
             [tc("image_search", {"query": ""}), ans("A giraffe.", [])]),
        Case("image_search_edge", "a broken download among the first five", "A heron",
             [tc("image_search", {"query": "heron"}), ans("A heron.", ["IMG_001"])],
             serper_queue=[("/images", [Reply.json(image_items(host, "heron", [
                 "/good.jpg", "/missing.jpg", "/good.png", "/good.webp", "/good.gif", "/good.jpg", "/good.png"]))])]),
        Case("image_search_edge", "an HTML page and a mislabelled PNG", "An owl",
             [tc("image_search", {"query": "owl"}), ans("An owl.", ["IMG_001"])],
             serper_queue=[("/images", [Reply.json(image_items(host, "owl", [
                 "/page.html", "/mislabeled.jpg", "/good.jpg"]))])]),
        Case("image_search_edge", "a repeated URL and a result with only a thumbnail", "A swan",
             [tc("image_search", {"query": "swan"}), ans("A swan.", ["IMG_001"])],
             serper_queue=[("/images", [Reply.json({"images": [
                 {"title": "swan 1", "imageUrl": f"{host}/good.jpg?q=swan", "link": "https://example.org/s1"},
                 {"title": "swan 2", "imageUrl": f"{host}/good.jpg?q=swan", "link": "https://example.org/s2"},
                 {"title": "swan 3", "thumbnailUrl": f"{host}/good.png?q=swan", "link": "https://example.org/s3"},
                 {"imageUrl": f"{host}/good.webp?q=swan", "source": "Example"}]})])]),
        Case("tool_errors", "unknown tool", "A robot",
             [tc("draw", {"what": "robot"}), ans("A robot.", [])]),
        Case("tool_errors", "queries that are not strings", "A train",
             [tc("search", {"queries": [1, 2]}), ans("A train.", [])]),
        Case("tool_errors", "missing skill_name", "A bus",
             [tc("query_knowledge", {}), ans("A bus.", [])]),
        Case("malformed_action", "tool name that is a number", "A tram",
             ['<think>x</think>\n<tool_call>{"name": 5, "arguments": {}}</tool_call>', ans("A tram.", [])]),
        Case("malformed_action", "gen_prompt that is a number", "A boat",
             [raw_answer({"gen_prompt": 42, "reference_images": []}), ans("A boat.", [])]),
        Case("malformed_action", "note that is a number", "A plane",
             [tc("image_search", {"query": "plane"}),
              raw_answer({"gen_prompt": "A plane.", "reference_images": [{"img_id": "IMG_001", "note": 7}]})]),
        Case("service_failure", "Serper /search answers 500", "A comet",
             [tc("search", {"queries": ["comet"]}), ans("A comet.", [])],
             serper_queue=[("/search", [Reply.json({"message": "boom"}, status=500)] * 6)]),
        Case("service_failure", "Serper /images answers 500", "A nebula",
             [tc("image_search", {"query": "nebula"}), ans("A nebula.", [])],
             serper_queue=[("/images", [Reply.json({"message": "boom"}, status=500)] * 6)]),
        Case("policy_server_error", "chat server answers 400", "A star", [ans("A star.", [])],
             chat_fail=(100, 400)),
        Case("policy_server_error", "chat server answers 500 every time", "A moon", [ans("A moon.", [])],
             chat_fail=(100, 500)),
        Case("policy_server_error", "first chat request answers 500, then fine", "A sun",
             [tc("search", {"queries": ["sun"]}), ans("A sun.", [])], chat_fail=(1, 500)),
        Case("empty_reply", "content null on every call", "A planet", [""], chat_raw=json.dumps(
            {"id": "x", "object": "chat.completion", "model": MODEL, "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": None}}]}).encode()),
        Case("empty_reply", "an empty reply, then an answer", "A galaxy", ["", "   \n", ans("A galaxy.", [])]),
        Case("search_edge", "six queries", "An orchestra",
             [tc("search", {"queries": [f"section {k}" for k in range(6)]}), ans("An orchestra.", [])]),
        Case("search_edge", "top_k 0", "A harp", [tc("search", {"queries": ["harp"], "top_k": 0}), ans("A harp.", [])]),
        Case("search_edge", "results without a link, one with url instead", "A lute",
             [tc("search", {"queries": ["lute"]}), ans("A lute.", [])],
             serper_queue=[("/search", [Reply.json({"organic": [
                 {"title": "Lute - Wikipedia", "link": "https://en.wikipedia.org/wiki/Lute", "snippet": "A lute is..."},
                 {"title": "A lute with no link", "snippet": "No address given."},
                 {"title": "Lute by url", "url": "https://example.org/lute", "snippet": "Given as url."},
                 {"link": "https://example.org/untitled", "snippet": "No title."}]})])]),
        Case("search_edge", "an observation over 12,000 characters", "A long history of the piano",
             [tc("search", {"queries": ["piano history"], "top_k": 10}), ans("A piano.", [])],
             serper_queue=[("/search", [Reply.json({"organic": [
                 {"title": f"Piano history part {k}", "link": f"https://example.org/piano/{k}",
                  "snippet": " ".join(["The piano developed from the harpsichord over centuries."] * 25)}
                 for k in range(1, 11)]})])]),
        Case("image_search_edge", "top_k as a string", "A tiger",
             [tc("image_search", {"query": "tiger", "top_k": "3"}), ans("A tiger.", ["IMG_001"])]),
        Case("reference_resolution", "ids in other spellings", "A fox",
             [tc("image_search", {"query": "fox", "top_k": 2}),
              ans("A fox.", ["img_001", "IMG_1", "IMG_0002", "IMG-002", "IMG_002"])]),
        Case("format_error", "arguments double-encoded as a string", "A yacht",
             ['<think>x</think>\n<tool_call>{"name": "search", "arguments": "{\\"queries\\": [\\"yacht\\"]}"}</tool_call>',
              ans("A yacht.", [])]),
    ]
    return cases


def pick(cases: list[Case], n: int) -> list[Case]:
    """n cases, taking classes in turn so that a small n still covers every class."""
    by_class: dict[str, list[Case]] = {}
    for c in cases:
        by_class.setdefault(c.klass, []).append(c)
    out, round_ = [], 0
    while len(out) < n:
        added = False
        for group in by_class.values():
            if round_ < len(group) and len(out) < n:
                out.append(group[round_])
                added = True
        if not added:            # more requests than cases: run them again, with a marked request
            extra = [Case(c.klass, f"{c.name} (again {len(out)})", f"{c.request} (again {len(out)})", c.script,
                          c.serper_queue, c.chat_fail, c.chat_raw) for c in cases]
            cases, by_class, round_ = extra, {}, -1
            for c in extra:
                by_class.setdefault(c.klass, []).append(c)
        round_ += 1
    return out


# ------------------------------------------------------------------------------------ the two runs

def load_upstream(root: Path):
    package = root / "genevolve"
    if not (package / "agent.py").is_file():
        raise SystemExit(f"{package / 'agent.py'}: not found; --upstream must be a copy of MeiGen-AI/GenEvolve")
    spec = importlib.util.spec_from_file_location(UPSTREAM_PACKAGE, package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[UPSTREAM_PACKAGE] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class Fakes:
    host: ImageHostFake
    serper: SerperFake


def prepare_serper(fakes: Fakes, case: Case) -> None:
    with fakes.serper._lock:
        fakes.serper._scripted.clear()      # what the other side left unused
    for path, replies in case.serper_queue or []:
        fakes.serper.queue("POST", path, *replies)


def run_upstream(up, case: Case, fakes: Fakes, work: Path) -> tuple[dict, FakeChatServer]:
    tools = sys.modules[f"{UPSTREAM_PACKAGE}.tools"]       # loaded with the package
    download_dir = work / "up_images"
    fail_first, fail_status = case.chat_fail or (0, 500)
    with FakeChatServer(case.script, fail_first=fail_first, fail_status=fail_status, raw_reply=case.chat_raw) as chat:
        agent = up.GenEvolveAgent(model=MODEL, base_url=chat.base_url, api_key="EMPTY",
                                  text_search_tool=tools.WebTextSearchTool(),
                                  image_search_tool=tools.ImageSearchTool(download_dir=str(download_dir)))
        try:
            res = agent.run(case.request)
            record = {"termination": res.termination, "rounds": res.rounds, "error": res.error,
                      "gen_prompt": res.gen_prompt, "messages": res.messages,
                      "references": [{k: r.get(k) or "" for k in ("img_id", "note", "title", "url", "page_url",
                                                                   "local_path")} for r in res.reference_images]}
        except Exception as exc:         # what its scripts/run_agent.py records for a run that raised
            record = {"termination": "error", "rounds": 0, "error": f"{exc}", "gen_prompt": "", "messages": [],
                      "references": [], "raised": f"{type(exc).__name__}: {exc}"}
    return record, chat


async def _run_ours(case: Case, chat: FakeChatServer, fakes: Fakes, work: Path, upstream: Path):
    # Two retries, as the `openai` client the released runtime uses makes by default.
    policy = OpenAICompatPolicy(chat.base_url, MODEL, api_key="EMPTY", retries=2, backoff_s=0.05)
    tools = default_tools(
        SerperSearchBackend(base_url=fakes.serper.url, api_key=KEY, cache=False, cache_root=work / "ours"),
        SerperImageBackend(base_url=fakes.serper.url, api_key=KEY, cache=False, cache_root=work / "ours",
                           allow_hosts=[fakes.host.host_port]))
    agent = Agent(policy, tools, AgentConfig(protocol="released", released_assets=str(upstream)))
    try:
        return await agent.run(case.request)
    finally:
        await agent.aclose()


def run_ours(case: Case, fakes: Fakes, work: Path, upstream: Path) -> tuple[dict, FakeChatServer]:
    fail_first, fail_status = case.chat_fail or (0, 500)
    with FakeChatServer(case.script, fail_first=fail_first, fail_status=fail_status, raw_reply=case.chat_raw) as chat:
        traj = asyncio.run(_run_ours(case, chat, fakes, work, upstream))
    program = traj.program
    refs = [{"img_id": r.img_id, "note": r.note or "", "title": r.title or "", "url": r.url or "",
             "page_url": r.page_url or "", "local_path": r.local_path or ""} for r in (program.references if program
                                                                                        else [])]
    record = {"termination": str(traj.termination), "rounds": traj.rounds, "error": traj.error,
              "gen_prompt": program.gen_prompt if program else "", "messages": traj.messages, "references": refs,
              "program_issues": [f"{i.kind}: {i.detail}" for i in traj.program_issues],
              "turn_notes": [t.note for t in traj.turns if t.note]}
    return record, chat


# ------------------------------------------------------------------------------------- comparison

def reference_files_ok(refs: list[dict], fakes: Fakes) -> list[str]:
    """For each reference: does its local file hold the bytes its URL served?"""
    out = []
    for r in refs:
        path, url = r.get("local_path"), r.get("url") or ""
        served = fakes.host.files.get(urlsplit(url).path)
        if not path or not Path(path).is_file():
            out.append(f"{r['img_id']}: no file")
        elif served is None:
            out.append(f"{r['img_id']}: url not on the image host")
        else:
            same = hashlib.sha256(Path(path).read_bytes()).digest() == hashlib.sha256(served[0]).digest()
            out.append(f"{r['img_id']}: {'ok' if same else 'bytes differ'}")
    return out


class Normaliser:
    """Replaces what differs between two runs by construction: the chat fake's port, the download
    folder and the file names in it (kept: the extension)."""

    def __init__(self, fakes: Fakes, chat: FakeChatServer, download_roots: list[Path]):
        self.subs: list[tuple[re.Pattern, Callable[[re.Match], str]]] = []
        for root in download_roots:
            self.subs.append((re.compile(re.escape(str(root)) + r"/[^\s\"'<>]*"),
                              lambda m: f"<local_path{Path(m.group(0)).suffix}>"))
        chat_host = chat.base_url.split("//", 1)[1].split("/", 1)[0]
        for text, name in ((fakes.host.host_port, "<image-host>"), (fakes.serper.host_port, "<serper>"),
                           (chat_host, "<chat>")):
            self.subs.append((re.compile(re.escape(text)), lambda m, name=name: name))

    def __call__(self, obj: Any) -> Any:
        if isinstance(obj, str):
            for pattern, repl in self.subs:
                obj = pattern.sub(repl, obj)
            return obj
        if isinstance(obj, list):
            return [self(x) for x in obj]
        if isinstance(obj, dict):
            return {k: self(v) for k, v in obj.items()}
        return obj


def side_record(record: dict, chat: FakeChatServer, fakes: Fakes, serper_from: int, host_from: int,
                norm: Normaliser) -> dict:
    bodies = list(chat.requests)
    out = {
        "calls": len(bodies),
        "policy_messages": [b.get("messages") for b in bodies],
        "termination": record["termination"], "rounds": record["rounds"], "error": record["error"],
        "gen_prompt": record["gen_prompt"],
        "references": [{k: v for k, v in r.items() if k != "local_path"} for r in record["references"]],
        "messages": record["messages"],
        "reference_files": reference_files_ok(record["references"], fakes),
        "sampling": [{k: v for k, v in b.items() if k != "messages"} for b in bodies],
        "serper_requests": [f"{r.path} {_canonical_json(r.body)}" for r in fakes.serper.requests[serper_from:]],
        "downloads": sorted(f"{r.path}?{'&'.join(f'{k}={v[0]}' for k, v in sorted(r.query.items()))}"
                            for r in fakes.host.requests[host_from:]),
    }
    out = norm(out)
    out["extra"] = norm({k: v for k, v in record.items() if k in ("raised", "program_issues", "turn_notes") and v})
    return out


def _canonical_json(body: bytes) -> str:
    try:
        return json.dumps(json.loads(body), sort_keys=True, ensure_ascii=False)
    except ValueError:
        return body.decode("utf-8", "replace")


def short_diff(field: str, a: Any, b: Any, width: int = 160) -> list[str]:
    """A few lines saying where `a` (released) and `b` (ours) part."""
    if field in ("policy_messages",):
        for i, (ma, mb) in enumerate(zip(a, b)):
            if ma != mb:
                return [f"call {i + 1}: " + line for line in _message_diff(ma, mb, width)]
        return [f"released made {len(a)} calls, ours {len(b)}"]
    if field == "messages":
        return _message_diff(a, b, width)
    if isinstance(a, list) and isinstance(b, list) and all(isinstance(x, str) for x in a + b):
        return _text_diff("\n".join(a), "\n".join(b), width)
    return [f"released: {_clip(json.dumps(a, ensure_ascii=False), width)}",
            f"ours:     {_clip(json.dumps(b, ensure_ascii=False), width)}"]


def _message_diff(a: list[dict], b: list[dict], width: int) -> list[str]:
    for j, (ma, mb) in enumerate(zip(a, b)):
        if ma != mb:
            head = f"message {j} ({ma.get('role')}): "
            return [head] + ["  " + line for line in _text_diff(ma.get("content", ""), mb.get("content", ""), width)]
    extra_a, extra_b = a[len(b):], b[len(a):]
    lines = [f"released has {len(a)} messages, ours {len(b)}"]
    for m in extra_a:
        lines.append(f"  only released: {m['role']}: {_clip(m['content'], width)}")
    for m in extra_b:
        lines.append(f"  only ours:     {m['role']}: {_clip(m['content'], width)}")
    return lines


def _text_diff(a: str, b: str, width: int, per_side: int = 5) -> list[str]:
    """The lines only the released text has (-) and those only ours has (+), a few of each."""
    lines = list(difflib.unified_diff(a.splitlines(), b.splitlines(), n=0, lineterm=""))[2:]   # no file header
    removed = [line for line in lines if line.startswith("-")]
    added = [line for line in lines if line.startswith("+")]
    shown = []
    for group in (removed, added):
        shown += [_clip(line, width) for line in group[:per_side]]
        if len(group) > per_side:
            shown.append(f"{group[0][0]} ... {len(group) - per_side} more lines")
    return shown


def _clip(text: str, width: int) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[:width - 1] + "…"


# ------------------------------------------------------------------------------ the two CLIs

def cli_batch(cases: list[Case]) -> list[Case]:
    """The cases one batch can run (no per-run service scripting), each with its own request text."""
    usable = [c for c in cases if not (c.serper_queue or c.chat_fail or c.chat_raw)]
    return [Case(c.klass, c.name, f"{c.request} [{k}]", c.script) for k, c in enumerate(usable)]


def dispatch(by_request: dict[str, Case]) -> Callable[[dict], str]:
    """One chat fake for a whole batch: the reply follows the script of the request being run."""
    def script(body: dict) -> str:
        request = next(m["content"] for m in body["messages"] if m["role"] == "user")
        s = by_request[request].script
        return s(body) if callable(s) else s[min(assistant_count(body), len(s) - 1)]
    return script


def run_clis(upstream: Path, cases: list[Case], fakes: Fakes, tmp: Path, parallel: int) -> None:
    """The released runtime's scripts/run_agent.py and our `genevolve run --protocol released` on the
    same batch against the same fakes; their results.json rows compared per id."""
    import subprocess

    batch = cli_batch(cases)
    by_request = {c.request: c for c in batch}
    rows_in = tmp / "cli_input.jsonl"
    rows_in.write_text("".join(json.dumps({"id": f"r{k:03d}", "prompt": c.request}) + "\n"
                               for k, c in enumerate(batch)), encoding="utf-8")
    env = {**os.environ, "SERPER_API_KEY": KEY, "SERPER_BASE_URL": fakes.serper.url,
           "IMAGE_DOWNLOAD_DIR": str(tmp / "cli_up_images"), "GENEVOLVE_CACHE": str(tmp / "cli_ours_cache"),
           "NO_PROXY": "127.0.0.1,localhost"}
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "GENEVOLVE_MODEL", "GENEVOLVE_CONFIG"):
        env.pop(name, None)
    ours_bin = Path(sys.executable).parent / "genevolve"
    out: dict[str, tuple[list[dict], FakeChatServer, float]] = {}
    for side in ("released", "ours"):
        with FakeChatServer(dispatch(by_request)) as chat:
            folder = tmp / f"cli_{side}"
            if side == "released":
                cmd = [sys.executable, str(upstream / "scripts" / "run_agent.py"), "--input", str(rows_in),
                       "--output-dir", str(folder), "--base-url", chat.base_url, "--model", MODEL,
                       "--api-key", "EMPTY", "--parallel", str(parallel)]
            else:
                cmd = [str(ours_bin), "run", "--input", str(rows_in), "--output-dir", str(folder),
                       "--base-url", chat.base_url, "--model", MODEL, "--protocol", "released",
                       "--released-assets", str(upstream), "--search", "serper", "--image-search", "serper",
                       "--allow-download-host", fakes.host.host_port, "--parallel", str(parallel), "--quiet"]
            t0 = time.perf_counter()
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            seconds = time.perf_counter() - t0
            print(f"{side} CLI: exit {done.returncode}, {seconds:.1f} s: {' '.join(cmd[:3])} ...")
            if done.returncode != 0:
                print(done.stdout[-2000:] + done.stderr[-2000:])
            rows = json.loads((folder / "results.json").read_text("utf-8")) if (folder / "results.json").is_file() else []
            out[side] = (rows, chat, seconds)

    print(f"\n## `scripts/run_agent.py` against `genevolve run --protocol released` ({len(batch)} requests, "
          f"--parallel {parallel})\n")
    (up_rows, up_chat, _), (our_rows, our_chat, _) = out["released"], out["ours"]
    up_by_id = {r["id"]: r for r in up_rows}
    our_by_id = {r["id"]: r for r in our_rows}
    missing_keys = sorted({k for r in up_rows for k in r} - {k for r in our_rows for k in r})
    print(f"rows: released {len(up_rows)}, ours {len(our_rows)}; keys of released rows missing from ours: "
          f"{missing_keys or 'none'}")
    per_class: dict[str, list[dict]] = {}
    details = []
    for k, case in enumerate(batch):
        rid = f"r{k:03d}"
        recs = {}
        for side, rows, chat, root in (("released", up_by_id, up_chat, tmp / "cli_up_images"),
                                       ("ours", our_by_id, our_chat, tmp / "cli_ours_cache" / "downloads")):
            row = rows.get(rid) or {}
            bodies = [b for b in chat.requests
                      if next(m["content"] for m in b["messages"] if m["role"] == "user") == case.request]
            norm = Normaliser(fakes, chat, [root])
            recs[side] = norm({
                "calls": len(bodies), "policy_messages": sorted((b["messages"] for b in bodies), key=len),
                "termination": row.get("termination"), "rounds": row.get("rounds"), "error": row.get("error"),
                "gen_prompt": row.get("gen_prompt"),
                "references": [{f: r.get(f) or "" for f in ("img_id", "note", "title", "url", "page_url")}
                               for r in row.get("reference_images") or []],
                "messages": row.get("messages")})
        a, b = recs["released"], recs["ours"]
        diffs = {f: short_diff(f, a[f], b[f]) for f in a if a[f] != b[f]}
        per_class.setdefault(case.klass, []).append(diffs)
        if diffs:
            details.append((case, diffs))
    print(f"\n| {'behaviour class':<26} | requests | identical | differing |")
    print(f"| {'-' * 26} | -------- | --------- | --------- |")
    for klass, items in per_class.items():
        same = sum(1 for d in items if not d)
        print(f"| {klass:<26} | {len(items):>8} | {same:>9} | {len(items) - same:>9} |")
    total = sum(len(v) for v in per_class.values())
    same = sum(1 for v in per_class.values() for d in v if not d)
    print(f"| {'all':<26} | {total:>8} | {same:>9} | {total - same:>9} |")
    for case, diffs in details:
        print(f"\n### CLI {case.klass}: {case.name}  (request {case.request!r})")
        for field, lines in diffs.items():
            print(f"- {field}:")
            for line in lines:
                print(f"    {line}")


# -------------------------------------------------------------------------------------------- main

def report(rows: list, results: dict) -> None:
    print("\n## What the policy saw and what the run recorded\n")
    print(f"| {'behaviour class':<26} | requests | identical | differing |")
    print(f"| {'-' * 26} | -------- | --------- | --------- |")
    for klass, items in results.items():
        same = sum(1 for _, d, _ in items if not d)
        print(f"| {klass:<26} | {len(items):>8} | {same:>9} | {len(items) - same:>9} |")
    total_same = sum(1 for _, d, _, _, _ in rows if not d)
    print(f"| {'all':<26} | {len(rows):>8} | {total_same:>9} | {len(rows) - total_same:>9} |")

    print("\n## Over the wire only (the policy never sees it)\n")
    print(f"| {'behaviour class':<26} | requests | identical | differing | fields |")
    print(f"| {'-' * 26} | -------- | --------- | --------- | ------ |")
    for klass, items in results.items():
        same = sum(1 for _, _, w in items if not w)
        fields = sorted({f for _, _, w in items for f in w})
        print(f"| {klass:<26} | {len(items):>8} | {same:>9} | {len(items) - same:>9} | {', '.join(fields)} |")

    print("\n## Differences\n")
    for case, diffs, wire, a, b in rows:
        if not diffs and not wire:
            continue
        print(f"### {case.klass}: {case.name}  (request {case.request!r})")
        script = case.script if isinstance(case.script, list) else [f"<function {case.script.__name__}>"]
        print("script: " + _clip(json.dumps(script, ensure_ascii=False), 400))
        for label, group in (("", diffs), ("wire ", wire)):
            for field, lines in group.items():
                print(f"- {label}{field}:")
                for line in lines:
                    print(f"    {line}")
        for side, rec in (("released", a), ("ours", b)):
            if rec["extra"]:
                print(f"- {side} also: {_clip(json.dumps(rec['extra'], ensure_ascii=False), 400)}")
        print()



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--upstream", required=True, type=Path, help="a copy of MeiGen-AI/GenEvolve")
    ap.add_argument("--n", type=int, default=40, help="requests (classes are taken in turn)")
    ap.add_argument("--all", action="store_true", help="every case once (overrides --n)")
    ap.add_argument("--json", type=Path, help="write both records of every request here (JSON lines)")
    ap.add_argument("--only", help="run only the classes whose name contains this")
    ap.add_argument("--cli", action="store_true", help="also run both command lines (the released runtime's "
                    "scripts/run_agent.py and `genevolve run --protocol released`) on one batch of the cases")
    ap.add_argument("--parallel", type=int, default=4, help="--parallel of both command lines (with --cli)")
    args = ap.parse_args()
    upstream = args.upstream.resolve()
    up = load_upstream(upstream)

    with ImageHostFake() as host, SerperFake(api_key=KEY, image_urls=[
            f"{host.url}/good.{ext}?q={{slug}}&n={n}" for n, ext in enumerate(("jpg", "png", "webp", "gif") * 3)]
            ) as serper, tempfile.TemporaryDirectory(prefix="released-parity-") as tmp:
        fakes = Fakes(host, serper)
        os.environ["SERPER_API_KEY"] = KEY           # the released runtime reads both at each request
        os.environ["SERPER_BASE_URL"] = serper.url
        os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
        cases = [c for c in build_cases(host.url) if not args.only or args.only in c.klass]
        cases = pick(cases, len(cases) if args.all else args.n)
        rows, results = [], {}
        for i, case in enumerate(cases):
            work = Path(tmp) / f"r{i:03d}"
            sides = {}
            for side in ("released", "ours"):
                prepare_serper(fakes, case)
                serper_from, host_from = len(serper.requests), len(host.requests)
                t0 = time.perf_counter()
                record, chat = (run_upstream(up, case, fakes, work) if side == "released"
                                else run_ours(case, fakes, work, upstream))
                norm = Normaliser(fakes, chat, [work / "up_images", work / "ours" / "downloads"])
                sides[side] = side_record(record, chat, fakes, serper_from, host_from, norm)
                sides[side]["seconds"] = round(time.perf_counter() - t0, 2)
            a, b = sides["released"], sides["ours"]
            diffs = {f: short_diff(f, a[f], b[f]) for f in BEHAVIOUR_FIELDS if a[f] != b[f]}
            wire = {f: short_diff(f, a[f], b[f]) for f in WIRE_FIELDS if a[f] != b[f]}
            rows.append((case, diffs, wire, a, b))
            results.setdefault(case.klass, []).append((case, diffs, wire))
            mark = "same" if not diffs else "DIFFERS: " + ", ".join(diffs)
            print(f"[{i + 1:>2}/{len(cases)}] {case.klass}: {case.name}: {mark}", flush=True)
            if args.json:
                with args.json.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"class": case.klass, "name": case.name, "request": case.request,
                                         "released": a, "ours": b, "differs": sorted(diffs),
                                         "wire_differs": sorted(wire)}, ensure_ascii=False) + "\n")
        report(rows, results)
        if args.cli:
            run_clis(upstream, cases, fakes, Path(tmp), args.parallel)


if __name__ == "__main__":
    main()
