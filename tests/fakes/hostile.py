"""A loopback OpenAI-compatible server that answers with generated hostile replies, for the fuzz test
(tests/test_fuzz_runtime.py) and its benchmark (benchmarks/fuzz_runtime.py).

Each input item names its class of hostile input in its request ("fuzz item 17 class nan_infinity");
the server answers that item's first turns with replies of the class, drawn from a generator seeded
by the item, then with a plain answer so that the item can end. Classes of HTTP faults (a 500, a 429
with Retry-After, a body cut short, a 200 that is not JSON or has no choices) strike the first tries
of a turn and then let a reply through, as a flaky server does; a client that retries gets past them.
Every reply sent is counted per class (`sent`).
"""

from __future__ import annotations

import json
import random
import re
import threading
from collections import Counter
from typing import Any, Callable

from .openai_chat import FakeChatServer, Raw, answer, tool_call

_ITEM = re.compile(r"^fuzz item (\d+) class (\w+)")


def chat_body(content: Any, *, usage: Any = None, ensure_ascii: bool = True) -> bytes:
    """A chat-completions reply whose message content is `content` (any JSON value)."""
    reply = {"id": "chatcmpl-fuzz", "object": "chat.completion", "model": "fuzz",
             "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
             "usage": usage if usage is not None else {"prompt_tokens": 10, "completion_tokens": 5}}
    return json.dumps(reply, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")


def _nested(depth: int, leaf: str = "1") -> str:
    return '{"a": ' * depth + leaf + "}" * depth


def _noise(rng: random.Random, n: int) -> str:
    """Text of any code points: controls, NUL, lone surrogates, private use, emoji, RTL marks."""
    pools = [(0, 0x20), (0x20, 0x7F), (0x80, 0x800), (0xD800, 0xE000), (0xE000, 0xF900), (0x1F300, 0x1FAFF),
             (0x200E, 0x2010)]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(pools)
        out.append(chr(rng.randrange(lo, hi)))
    return "".join(out)


# Each generator: (rng, secret) -> the text of one assistant reply, or a Raw HTTP reply.
def lone_surrogate_escape(rng: random.Random, secret: str) -> bytes:
    """A lone surrogate sent as a JSON escape ("\\ud800"): json.loads turns it into a code point no
    UTF-8 writer accepts. In the reply text, in tool arguments, in an answer."""
    s = chr(rng.choice([0xD800, 0xDBFF, 0xDC00, 0xDFFF, 0xD83D]))
    text = rng.choice([
        f"<think>{s}</think>\n" + tool_call("search", {"queries": [f"flag {s} of Peru"]}),
        f"<think>ok</think>\n<tool_call>{{\"name\": \"image_search\", \"arguments\": {{\"query\": \"\\u{ord(s):04x}x\"}}}}"
        "</tool_call>",
        f"<think>{s}{s}</think>\n" + answer(f"a lighthouse {s} at dusk", [], think=s),
        f"{s}" * rng.randint(1, 50),
    ])
    return chat_body(text)                         # ensure_ascii: the surrogate goes out as \udXXX


def lone_surrogate_raw(rng: random.Random, secret: str) -> Raw:
    """The UTF-8 form of a surrogate, which is not valid UTF-8, raw in the body (a transient fault:
    the client cannot decode the reply and asks again)."""
    body = chat_body("<think>x</think>", ensure_ascii=False).replace(b"x</think>", b"\xed\xa0\x80</think>")
    return Raw(body)


def nul_bytes(rng: random.Random, secret: str) -> str:
    z = "\x00" * rng.randint(1, 8)
    return rng.choice([
        f"<think>{z}</think>\n" + tool_call("search", {"queries": [f"capital{z}of Peru"]}),
        f"<think>x</think>\n<answer>{{\"gen_prompt\": \"a cat{z}\", \"reference_images\": [\"{z}\"]}}</answer>",
        f"<tool_call>{z}</tool_call>",
        z + answer(f"a dog {z}", [{"img_id": f"IMG_001{z}", "note": z}]),
    ])


def deep_nesting(rng: random.Random, secret: str) -> str:
    depth = rng.choice([40, 500, 5_000, 50_000])
    return rng.choice([
        f"<answer>{_nested(depth)}</answer>",
        f"<tool_call>{{\"name\": \"search\", \"arguments\": {_nested(depth)}}}</tool_call>",
        "<answer>" + "[" * depth + "]" * depth + "</answer>",
        "<answer>{\"gen_prompt\": \"x\", \"reference_images\": " + "[" * depth + "</answer>",
    ])


def nan_infinity(rng: random.Random, secret: str) -> str:
    value = rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
    return rng.choice([
        f"<tool_call>{{\"name\": \"search\", \"arguments\": {{\"queries\": [\"x\", {value}]}}}}</tool_call>",
        f"<answer>{{\"gen_prompt\": {value}, \"reference_images\": [{value}]}}</answer>",
        f"<tool_call>{{\"name\": \"image_search\", \"arguments\": {{\"query\": {value}}}}}</tool_call>",
        f"<answer>{{\"gen_prompt\": \"three apples\", \"reference_images\": [], \"score\": {value}}}</answer>",
    ])


def huge_strings(rng: random.Random, secret: str) -> str:
    n = rng.choice([20_000, 100_000, 400_000])
    word = rng.choice(["apple ", "IMG_001 ", "the first reference image ", "https://x.example/ "])
    big = (word * (n // len(word) + 1))[:n]
    return rng.choice([
        answer(big, []),
        tool_call("search", {"queries": [big, big[:1000]]}),
        tool_call("image_search", {"query": big[:50_000]}),
        "<think>" + big + "</think>",
    ])


def many_references(rng: random.Random, secret: str) -> str:
    n = rng.choice([3, 50, 1_000, 10_000])
    refs = [rng.choice([{"img_id": f"IMG_{rng.randint(0, 9999):03d}", "note": "n"}, f"IMG_{i:03d}", None, 7,
                        {"img_id": None}, {"note": "no id"}]) for i in range(n)]
    return f"<think>many</think>\n<answer>{json.dumps({'gen_prompt': 'the first reference image', 'reference_images': refs})}</answer>"


def unknown_tools(rng: random.Random, secret: str) -> str:
    name = rng.choice(["rm_rf", "", "SEARCH", "search ", "image-search", "query_knowledge\x00", "__import__", "é"])
    args = rng.choice([{}, {"query": "x"}, [], "a string", None, 12, {"skill_name": "../../etc/passwd"}])
    return f"<tool_call>{json.dumps({'name': name, 'arguments': args})}</tool_call>"


def broken_tags(rng: random.Random, secret: str) -> str:
    return rng.choice([
        "<tool_call>{\"name\": \"search\"",
        "<answer>",
        "</answer></tool_call><answer>",
        "<think>" * 100,
        "<answer>{\"gen_prompt\": \"x\", \"reference_images\": []</tool_call>",
        "<tool_call><tool_call><answer>{}</answer></tool_call>",
        "<TOOL_CALL>{\"name\": \"search\", \"arguments\": {\"query\": \"x\"}}</TOOL_CALL>",
        "<answer>```json\n{\"gen_prompt\": \"a cat\",}\n```",
        "<think>unclosed thinking <tool_call>{\"name\": \"search\", \"arguments\": {\"query\": \"q\"}}</tool_call>",
        "",
    ])


def random_bytes(rng: random.Random, secret: str) -> str | Raw:
    if rng.random() < 0.3:                         # the whole body: a 200 that is not JSON (transient)
        return Raw(bytes(rng.randrange(256) for _ in range(rng.randint(0, 300))))
    return _noise(rng, rng.randint(1, 2_000))


def http_faults(rng: random.Random, secret: str) -> Raw:
    """The faults of a flaky server; the next try of the turn gets a reply."""
    ok = chat_body(tool_call("search", {"query": "x"}))
    return rng.choice([
        Raw(b'{"error": {"message": "internal"}}', status=500, headers={"Retry-After": "0"}),
        Raw(b'{"error": {"message": "overloaded"}}', status=503),
        Raw(b'{"error": {"message": "slow down"}}', status=429, headers={"Retry-After": "0"}),
        Raw(b"Too Many Requests", status=429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),
        Raw(ok, cut=True),
        Raw(b"<html>Bad Gateway</html>", status=200, headers={"Content-Type": "text/html"}),
        Raw(b'{"choices": []}'),
        Raw(b'{"choices": [{"message": "not an object"}]}'),
        Raw(b"[1, 2, 3]"),
        Raw(b""),
    ])


def odd_shapes(rng: random.Random, secret: str) -> bytes:
    """Well-formed JSON of odd shapes: null, list or number content, usage that is not an object."""
    return rng.choice([
        chat_body(None), chat_body(["a", {"type": "text", "text": "x"}]), chat_body(12),
        chat_body(tool_call("search", {"query": "x"}), usage="lots"), chat_body("<think>x</think>", usage=[1, 2]),
        chat_body(answer("a fox", []), usage={"prompt_tokens": "many", "prompt_tokens_details": 5}),
    ])


def echo_secret(rng: random.Random, secret: str) -> str | Raw:
    """The key in the model's words (a prompt injection's result) or in an error body."""
    return rng.choice([
        f"<think>my key is {secret}</think>\n" + tool_call("search", {"queries": [f"Bearer {secret}", secret]}),
        answer(f"a poster reading {secret}", [{"img_id": "IMG_001", "note": secret}]),
        tool_call(secret, {secret: secret}),
        Raw(json.dumps({"error": {"message": f"Incorrect API key provided: {secret}"}}).encode(), status=400),
    ])


CLASSES: dict[str, Callable[[random.Random, str], Any]] = {
    "lone_surrogate_escape": lone_surrogate_escape, "lone_surrogate_raw": lone_surrogate_raw,
    "nul_bytes": nul_bytes, "deep_nesting": deep_nesting, "nan_infinity": nan_infinity,
    "huge_strings": huge_strings, "many_references": many_references, "unknown_tools": unknown_tools,
    "broken_tags": broken_tags, "random_bytes": random_bytes, "http_faults": http_faults,
    "odd_shapes": odd_shapes, "echo_secret": echo_secret,
}
# Classes whose replies are transport faults: they strike the first tries of a turn only.
TRANSIENT = {"lone_surrogate_raw", "http_faults"}


def item_request(index: int, name: str) -> str:
    return f"fuzz item {index} class {name}: a lighthouse on a cliff at dusk"


class HostileServer(FakeChatServer):
    """FakeChatServer whose replies come from CLASSES (see the module docstring)."""

    def __init__(self, secret: str, *, hostile_turns: tuple[int, int] = (2, 6), seed: int = 0):
        self.secret = secret
        self.hostile_turns = hostile_turns
        self.seed = seed
        self.sent: Counter[str] = Counter()
        self._tries: Counter[tuple[str, int]] = Counter()
        self._count_lock = threading.Lock()
        super().__init__(["unused"], respond=self._respond, keep_requests=False)

    def _respond(self, body: dict[str, Any], headers: dict[str, str], path: str) -> Raw:
        messages = body.get("messages") or []
        request = next((m.get("content", "") for m in messages if m.get("role") == "user"), "")
        match = _ITEM.match(request if isinstance(request, str) else "")
        turn = sum(1 for m in messages if m.get("role") == "assistant")
        if not match:
            return Raw(chat_body(answer("a plain picture", [])))
        index, name = int(match.group(1)), match.group(2)
        with self._count_lock:
            tries = self._tries[(request, turn)]
            self._tries[(request, turn)] += 1
        rng = random.Random(f"{self.seed}/{index}/{turn}/{tries}")
        hostile = random.Random(f"{self.seed}/{index}").randint(*self.hostile_turns)
        transient = name in TRANSIENT
        if (turn < hostile and not transient) or (transient and turn < hostile and tries < 2):
            made = CLASSES[name](rng, self.secret)
            with self._count_lock:
                self.sent[name] += 1
            if isinstance(made, Raw):
                return made
            return Raw(made if isinstance(made, bytes) else chat_body(made))
        if transient and turn < hostile:            # the fault has passed: an ordinary turn
            return Raw(chat_body(tool_call("query_knowledge", {"skill_name": "spatial_layout"})))
        return Raw(chat_body(answer("a lighthouse on a cliff at dusk, warm light", [])))


# ---------------------------------------------------------------------------------------------
# Running `genevolve run` against the server and checking what it wrote

_LONE = re.compile(r"[\ud800-\udfff]")
# An error that names a Python exception class: the agent's catch-all for a bug, not a policy error.
CRASH = re.compile(r"^[A-Z][A-Za-z]*(Error|Exception)\b")


def _refuse(name: str) -> Any:
    raise ValueError(f"{name} is not strict JSON")


def strict_loads(raw: bytes) -> Any:
    """Parse as a strict parser would (JavaScript's JSON.parse, jq): UTF-8 only, no NaN/Infinity,
    and no lone surrogate in any string (ValueError otherwise)."""
    value = json.loads(raw.decode("utf-8"), parse_constant=_refuse)
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if _LONE.search(v):
                raise ValueError("a lone surrogate in a string")
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return value


def check_outputs(out_dir, expected_ids: list[str], secrets: list[str], stderr: str) -> tuple[list[str], dict[str, str | None]]:
    """(problems with the run as a whole, {item id: why this item fails the check, or None}).

    An item passes when it has exactly one record in the journal and in the array, both strict
    JSON, holding no secret, and its error (if any) is not a crash."""
    from pathlib import Path

    out_dir = Path(out_dir)
    problems: list[str] = []
    verdict: dict[str, str | None] = {i: None for i in expected_ids}
    for path in sorted(out_dir.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if any(s.encode() in data for s in secrets):
                problems.append(f"a secret in {path.name}")
    if any(s in stderr for s in secrets):
        problems.append("a secret on stderr")
    journal: Counter[str] = Counter()
    for n, line in enumerate((out_dir / "results.jsonl").read_bytes().splitlines(), 1):
        try:
            rec = strict_loads(line)
        except ValueError as exc:
            problems.append(f"results.jsonl line {n}: {exc}")
            continue
        journal[str(rec.get("id"))] += 1
        if str(rec.get("id")) in verdict and rec.get("error") and CRASH.match(str(rec["error"])):
            verdict[str(rec["id"])] = f"crash: {str(rec['error'])[:200]}"
    try:
        array = strict_loads((out_dir / "results.json").read_bytes())
    except ValueError as exc:
        problems.append(f"results.json: {exc}")
        array = []
    in_array = Counter(str(r.get("id")) for r in array)
    for item_id in expected_ids:
        if journal[item_id] != 1 or in_array[item_id] != 1:
            verdict[item_id] = verdict[item_id] or f"{journal[item_id]} journal and {in_array[item_id]} array records"
    extra = set(journal) - set(verdict)
    if extra:
        problems.append(f"records for ids not in the input: {sorted(extra)[:5]}")
    return problems, verdict
