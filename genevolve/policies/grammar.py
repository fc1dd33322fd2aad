"""A GBNF grammar for the text protocol, built from the tools' JSON schemas.

Used by the embedded policy (llama.cpp samples only strings the grammar admits) and, when asked,
sent to remote servers that accept a grammar (llama.cpp server, vLLM). A constrained policy can
then neither invent a tool, nor break the JSON, nor think without end.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .base import ANSWER_ONLY, ANY, IMAGE_SEARCH_ONLY, TOOLS_ONLY, TURN_MODES, TurnContext

MAX_THINK_CHARS = 400          # a 1.5B model left unbounded can think until the context is full
MAX_STRING_CHARS = 300         # default cap for a JSON string the schema does not bound
MAX_GEN_PROMPT_CHARS = 2000
MAX_NOTE_CHARS = 200
MAX_REFERENCES = 2             # protocol.MAX_REFERENCES; the runtime truncates to it anyway
MAX_ENUMERATED_IDS = 16        # up to this many found ids, the answer's list is spelled out id by id


def _literal(text: str) -> str:
    """A GBNF string literal matching `text` exactly."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _json_literal(value: Any) -> str:
    """A GBNF literal for the JSON encoding of `value` (used for keys and enum members)."""
    return _literal(json.dumps(value, ensure_ascii=False))


class _GrammarBuilder:
    """Collects named GBNF rules; schema nodes become rules named after where they sit."""

    BASE_RULES = {
        "ws": '" "?',
        "char": r'[^"\\\x00-\x1f] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})',
        # gen_prompt may not contain "_", which keeps IMG_### ids out of it as the protocol asks,
        # nor "<", which keeps protocol tags out (a small model sometimes writes "</think>" there).
        "prompt-char": r'[^"\\\x00-\x1f_<] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})',
        # For a sentence-bounded gen_prompt: a prompt-char that ends no sentence, and one that is
        # not a space either. '.', '!' and '?' end a sentence unless a word-char follows them
        # ('1.5', "'STOP!'").
        "sentence-char": r'[^"\\\x00-\x1f_<.!?] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})',
        "word-char": r'[^"\\\x00-\x1f_<.!? ] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})',
        "integer": '"-"? ([0-9] | [1-9] [0-9]{1,15})',
        "number": '"-"? ([0-9] | [1-9] [0-9]{1,15}) ("." [0-9]{1,15})? ([eE] [-+]? [0-9]{1,3})?',
        "boolean": '"true" | "false"',
    }

    def __init__(self) -> None:
        self.rules: dict[str, str] = dict(self.BASE_RULES)

    def add(self, name: str, body: str) -> str:
        name = re.sub(r"[^a-zA-Z0-9-]+", "-", name).strip("-").lower() or "rule"
        unique, n = name, 2
        while unique in self.rules and self.rules[unique] != body:
            unique, n = f"{name}-{n}", n + 1
        self.rules[unique] = body
        return unique

    def string(self, name: str, min_len: int = 0, max_len: int = MAX_STRING_CHARS) -> str:
        return self.add(name, f'"\\"" char{{{min_len},{max_len}}} "\\""')

    def object(self, name: str, props: list[tuple[str, str, bool]]) -> str:
        """An object whose keys come in the given order; optional ones may be left out.

        `props` holds (key, value rule, required). Required keys come first so that commas
        stay simple; JSON does not care about key order.
        """
        required = [(k, r) for k, r, req in props if req]
        optional = [(k, r) for k, r, req in props if not req]
        pair = lambda k, r: f'{_json_literal(k)} ws ":" ws {r}'     # noqa: E731
        if required:
            body = ' ws "," ws '.join(pair(k, r) for k, r in required)
            body += "".join(f' (ws "," ws {pair(k, r)})?' for k, r in optional)
        elif optional:
            # any non-empty subset in order: start at key i, then each later key optionally
            starts = []
            for i, (k, r) in enumerate(optional):
                tail = "".join(f' (ws "," ws {pair(k2, r2)})?' for k2, r2 in optional[i + 1:])
                starts.append(f"({pair(k, r)}{tail})")
            body = "(" + " | ".join(starts) + ")?"
        else:
            body = ""
        return self.add(name, f'"{{" ws {body} ws "}}"' if body else '"{" ws "}"')

    def array(self, name: str, item: str, min_items: int = 0, max_items: int | None = None) -> str:
        if max_items == 0:
            return self.add(name, '"[" ws "]"')
        if max_items == 1:
            return self.add(name, f'"[" ws {item} ws "]"' if min_items else f'"[" ws {item}? ws "]"')
        more_min = max(min_items - 1, 0)
        more = f'(ws "," ws {item}){{{more_min},{max_items - 1}}}' if max_items else \
            f'(ws "," ws {item}){{{more_min},}}'
        items = f"{item} {more}"
        return self.add(name, f'"[" ws {items} ws "]"' if min_items > 0 else f'"[" ws ({items})? ws "]"')

    def schema(self, name: str, spec: dict[str, Any]) -> str:
        """The rule for a value of the small JSON-schema subset our tools use."""
        if "enum" in spec:
            return self.add(name, " | ".join(_json_literal(v) for v in spec["enum"]))
        kind = spec.get("type")
        if kind == "string":
            return self.string(name, int(spec.get("minLength", 0)),
                               int(spec.get("maxLength", MAX_STRING_CHARS)))
        if kind == "integer":
            lo, hi = spec.get("minimum"), spec.get("maximum")
            if lo is not None and hi is not None and 0 <= hi - lo <= 100:
                return self.add(name, " | ".join(f'"{v}"' for v in range(int(hi), int(lo) - 1, -1)))
            return "integer"
        if kind == "number":
            return "number"
        if kind == "boolean":
            return "boolean"
        if kind == "array":
            item = self.schema(f"{name}-item", spec.get("items", {"type": "string"}))
            return self.array(name, item, int(spec.get("minItems", 0)), spec.get("maxItems"))
        if kind == "object" or "properties" in spec:
            required = set(spec.get("required", []))
            props = [(key, self.schema(f"{name}-{key}", sub), key in required)
                     for key, sub in spec.get("properties", {}).items()]
            return self.object(name, props)
        raise ValueError(f"grammar: unsupported JSON schema at '{name}': {json.dumps(spec)[:120]}")

    def render(self) -> str:
        order = ["root"] + [n for n in self.rules if n != "root"]
        return "\n".join(f"{n} ::= {self.rules[n]}" for n in order) + "\n"


# The protocol's tags; a model may have some of them as single special tokens (see grammar_for_tools).
PROTOCOL_TAGS = ("<think>", "</think>", "<tool_call>", "</tool_call>", "<answer>", "</answer>")

SKILL_TOOL, SKILL_ARGUMENT = "query_knowledge", "skill_name"


def grammar_for_tools(tool_schemas: list[dict[str, Any]], *, mode: str = ANY,
                      max_think_chars: int = MAX_THINK_CHARS, max_references: int = MAX_REFERENCES,
                      max_gen_prompt_chars: int = MAX_GEN_PROMPT_CHARS, max_note_chars: int = MAX_NOTE_CHARS,
                      max_gen_prompt_sentences: int | None = None,
                      loaded_skills: frozenset[str] = frozenset(), image_ids: tuple[str, ...] = (),
                      tag_tokens: dict[str, str] | None = None) -> str:
    """A GBNF grammar admitting exactly one protocol turn for these tools.

    `<think>` free text (no '<', at most `max_think_chars`) `</think>`, then either
    `<tool_call>{"name": TOOL, "arguments": {...}}</tool_call>` with each tool's arguments shaped
    by its JSON schema, or `<answer>{"gen_prompt": ..., "reference_images": [...]}</answer>`.
    `mode` ANSWER_ONLY drops the tool-call branch, TOOLS_ONLY the answer branch,
    IMAGE_SEARCH_ONLY both the answer and every tool but image_search. Skills in
    `loaded_skills` cannot be asked for again (their text is already in the context). When
    `image_ids` is given, the answer may only pick those ids (the images the searches returned),
    each at most once and in sorted order. `max_gen_prompt_sentences` makes gen_prompt whole
    sentences, at most that many, each at most its share of `max_gen_prompt_chars`: a prompt then
    ends where a sentence does, not in the middle of a word at the length cap.
    `tag_tokens` maps tags to llama.cpp token expressions (`<[151657]>`) that replace their
    text spelling (see LocalGGUFPolicy._protocol_tag_tokens for why).
    """
    def tag(text: str) -> str:
        return (tag_tokens or {}).get(text) or _literal(text)

    if mode not in TURN_MODES:
        raise ValueError(f"mode must be one of {TURN_MODES}, not {mode!r}")
    g = _GrammarBuilder()
    branches = []
    if mode != ANSWER_ONLY:
        calls = []
        schemas = _without_skills(tool_schemas, loaded_skills)
        if mode == IMAGE_SEARCH_ONLY:
            schemas = [s for s in schemas if s["name"] == "image_search"] or schemas
        for schema in schemas:
            name = schema["name"]
            args = g.schema(f"args-{name}", schema.get("parameters") or {"type": "object"})
            calls.append(g.add(f"call-{name}", f'"{{" ws {_json_literal("name")} ws ":" ws {_json_literal(name)}'
                                                f' ws "," ws {_json_literal("arguments")} ws ":" ws {args} ws "}}"'))
        if calls:
            g.add("tool-call", f'{tag("<tool_call>")} (' + " | ".join(calls) + f') {tag("</tool_call>")}')
            branches.append("tool-call")
    note = g.string("note", 0, max_note_chars)
    if image_ids and max_references in (1, 2) and len(image_ids) <= MAX_ENUMERATED_IDS:
        # Distinct found ids in sorted order, as the runtime would keep them: a duplicate or an
        # unknown id would leave an ordinal in gen_prompt pointing past the list.
        refs = [g.object(f"ref-{i}", [("img_id", g.add(f"id-{i}", _json_literal(i)), True), ("note", note, True)])
                for i in sorted(image_ids)]
        lists = [f'{ref} (ws "," ws ({" | ".join(refs[k + 1:])}))?' if max_references == 2 and refs[k + 1:]
                 else ref for k, ref in enumerate(refs)]
        references = g.add("references", f'"[" ws ({" | ".join(lists)})? ws "]"')
    else:
        img_id = g.add("img-id", '"\\"IMG_" [0-9]{3} "\\""')
        reference = g.object("reference", [("img_id", img_id, True), ("note", note, True)])
        references = g.array("references", reference, 0, max_references)
    if max_gen_prompt_sentences:
        units = max(max_gen_prompt_chars // max_gen_prompt_sentences - 1, 1)
        sentence = g.add("sentence", f'(sentence-char | [.!?]{{1,3}} word-char){{1,{units}}} [.!?]{{1,3}}')
        gen_prompt = g.add("gen-prompt", f'"\\"" {sentence} (" " {sentence}){{0,{max_gen_prompt_sentences - 1}}} "\\""')
    else:
        gen_prompt = g.add("gen-prompt", f'"\\"" prompt-char{{1,{max_gen_prompt_chars}}} "\\""')
    program = g.object("program", [("gen_prompt", gen_prompt, True), ("reference_images", references, True)])
    g.add("answer", f'{tag("<answer>")} {program} {tag("</answer>")}')
    if mode not in (TOOLS_ONLY, IMAGE_SEARCH_ONLY) or not branches:
        branches.append("answer")
    g.add("think", f'{tag("<think>")} [^<]{{0,{max_think_chars}}} {tag("</think>")}')
    g.add("root", 'think "\\n"? (' + " | ".join(branches) + ")")
    return g.render()


def _without_skills(tool_schemas: list[dict[str, Any]], loaded: frozenset[str]) -> list[dict[str, Any]]:
    """The schemas with loaded skills taken out of the skill tool's choices (the tool goes when none is left)."""
    if not loaded:
        return tool_schemas
    out = []
    for schema in tool_schemas:
        params = schema.get("parameters") or {}
        spec = (params.get("properties") or {}).get(SKILL_ARGUMENT)
        if schema["name"] != SKILL_TOOL or not spec or "enum" not in spec:
            out.append(schema)
            continue
        left = [s for s in spec["enum"] if s not in loaded]
        if left:
            props = {**params["properties"], SKILL_ARGUMENT: {**spec, "enum": left}}
            out.append({**schema, "parameters": {**params, "properties": props}})
    return out


def tighten_schemas(tool_schemas: list[dict[str, Any]], *, max_items: int | None = None,
                    max_integer: int | None = None) -> list[dict[str, Any]]:
    """Copies of the schemas with every array capped at `max_items` and every bounded integer at
    `max_integer`: a small model then cannot ask for more results than it can afford to read."""
    def tighten(spec: Any) -> Any:
        if not isinstance(spec, dict):
            return spec
        spec = {k: (tighten(v) if k in ("items", "parameters") else
                    {n: tighten(s) for n, s in v.items()} if k == "properties" else v)
                for k, v in spec.items()}
        if spec.get("type") == "array" and max_items is not None:
            spec["maxItems"] = min(int(spec.get("maxItems", max_items)), max_items)
            spec["minItems"] = min(int(spec.get("minItems", 0)), spec["maxItems"])
        if spec.get("type") == "integer" and max_integer is not None and "maximum" in spec:
            spec["maximum"] = max(min(int(spec["maximum"]), max_integer), int(spec.get("minimum", 0)))
            if "default" in spec:
                spec["default"] = min(spec["default"], spec["maximum"])
        return spec
    return [tighten(s) for s in tool_schemas]


class ProtocolGrammar:
    """The grammars for one tool set, one per kind of turn, built on first use and kept."""

    def __init__(self, tool_schemas: list[dict[str, Any]], **options: Any):
        self.tool_schemas = list(tool_schemas)
        self.options = options
        self._built: dict[tuple[str, frozenset[str], tuple[str, ...]], str] = {}

    def build(self, mode: str = ANY, loaded_skills: frozenset[str] = frozenset(),
              image_ids: tuple[str, ...] = ()) -> str:
        key = (mode, frozenset(loaded_skills), tuple(image_ids))
        if key not in self._built:
            if len(self._built) > 64:   # ids restart at IMG_001 per request, so kinds repeat; bound them anyway
                self._built.clear()
            self._built[key] = grammar_for_tools(self.tool_schemas, mode=mode, loaded_skills=key[1],
                                                 image_ids=key[2], **self.options)
        return self._built[key]

    def for_turn(self, turn: TurnContext) -> str:
        """The grammar of a turn the agent has described."""
        return self.build(turn.mode, turn.loaded_skills, turn.image_ids)


def protocol_tool_schemas() -> list[dict[str, Any]]:
    """The three protocol tools' schemas, for a policy used without `set_tools`."""
    from ..tools import ImageSearchTool, KnowledgeTool, SearchTool
    return [{"name": c.name, "description": c.description, "parameters": c.parameters}
            for c in (SearchTool, ImageSearchTool, KnowledgeTool)]
