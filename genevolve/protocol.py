"""The text protocol between the runtime and the policy.

Each assistant turn is `<think>…</think>` followed by exactly one
`<tool_call>{"name": …, "arguments": …}</tool_call>` or `<answer>{…}</answer>`.
Observations go back as a user message `<tool_response>\n…\n</tool_response>`.
This is the format of the released GenEvolve checkpoint, so that checkpoint served by any
OpenAI-compatible server behaves here as it does upstream.

Parsing rules for untidy replies (deterministic, tested):
- Code fences, surrounding whitespace and prose after the closing tag are ignored.
- A missing closing tag is tolerated when the JSON after the opening tag is complete.
- When a reply holds several actions, the first one in the text wins: the policy committed to it
  first, and everything after it was written without seeing its result. The others are ignored
  and noted in the turn record ("2 extra actions ignored").
- JSON is read strictly first, then leniently (trailing commas, a stray fence, text after the
  closing brace; `jsonio.extract_json`). NaN, Infinity and nesting deeper than
  `jsonio.MAX_JSON_DEPTH` are refused. A reply whose action cannot be read is a format error.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from .jsonio import extract_json, loads_strict
from .tools.knowledge import load_skills

MAX_TOOL_CALLS = 10           # the released runtime's budget; its 11 rounds are these calls + the answer
MAX_REFERENCES = 2

FINAL_STEP_MESSAGE = (
    "This is your last turn. Tools are no longer available: do not call any. "
    "Using what you have gathered so far, reply with <think>…</think> and then your final "
    "<answer>{\"gen_prompt\": …, \"reference_images\": […]}</answer> now."
)

FORMAT_ERROR_MESSAGE = (
    "Format error: your reply must contain <think>…</think> followed by exactly one "
    "<tool_call>{\"name\": …, \"arguments\": {…}}</tool_call> or one "
    "<answer>{\"gen_prompt\": …, \"reference_images\": […]}</answer> with valid JSON. {detail}"
)

BUDGET_EXHAUSTED_MESSAGE = (
    "Tool budget exhausted: you have made {n} tool calls, the maximum. "
    "Do not call tools again; give your <answer> now."
)

ANSWER_RETURNED_MESSAGE = (
    "Your answer cannot be rendered as written: {problems}. In gen_prompt, name only the reference "
    "images you list, by position (\"the first reference image\"), with no IMG ids or links. "
    "If a reference is missing, find it with image_search; otherwise reply with a corrected <answer>."
)

REPEAT_NOTE = "(You already ran this exact call; here is the same result again. Do not repeat calls.)"

_TAG_RE = re.compile(r"<(tool_call|answer)>", re.IGNORECASE)
_FENCE_RE = re.compile(r"```[a-zA-Z]*")


@dataclass
class ParsedTurn:
    kind: str                         # "tool_call" | "answer" | "error"
    tool_name: str | None = None
    arguments: Any = None
    answer: dict[str, Any] | None = None
    think: str | None = None
    error: str | None = None          # why the turn is a format error
    notes: list[str] = field(default_factory=list)
    raw: str | None = None            # the text inside the action's tags, as written


def parse_turn(text: str) -> ParsedTurn:
    """Read one assistant reply into the single action it takes."""
    think_m = re.search(r"<think>(.*?)(?:</think>|$)", text, re.DOTALL | re.IGNORECASE)
    think = think_m.group(1).strip() if think_m else None
    # Actions are looked for after the thinking, so a <tool_call> quoted inside <think> is not run.
    body = text[think_m.end():] if think_m and "</think>" in text[think_m.start():think_m.end()].lower() else text
    actions = list(_TAG_RE.finditer(body))
    if not actions:
        return ParsedTurn("error", think=think,
                          error="No <tool_call> or <answer> was found in your reply.")
    first = actions[0]
    tag = first.group(1).lower()
    close = re.search(rf"</{tag}>", body[first.end():], re.IGNORECASE)
    payload = body[first.end(): first.end() + close.start()] if close else body[first.end():]
    notes = [f"{len(actions) - 1} extra action(s) after the first ignored"] if len(actions) > 1 else []
    raw = payload.strip()
    try:
        obj = loads_lenient(payload)
    except ValueError as exc:
        return ParsedTurn("error", think=think, error=f"The JSON inside <{tag}> could not be read: {exc}",
                          notes=notes, raw=raw)
    if not isinstance(obj, dict):
        return ParsedTurn("error", think=think, error=f"<{tag}> must hold a JSON object.", notes=notes, raw=raw)
    if tag == "answer":
        return ParsedTurn("answer", answer=obj, think=think, notes=notes, raw=raw)
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return ParsedTurn("error", think=think, notes=notes, raw=raw,
                          error='<tool_call> JSON needs a "name" string and an "arguments" object.')
    arguments = obj.get("arguments", {})
    if isinstance(arguments, str):      # some servers double-encode the arguments
        try:
            arguments = loads_strict(arguments)
        except ValueError:
            pass
    return ParsedTurn("tool_call", tool_name=name, arguments=arguments, think=think, notes=notes, raw=raw)


def loads_lenient(payload: str) -> Any:
    """Parse the JSON of an action: strictly first, then forgiving the slips small models make."""
    text = _FENCE_RE.sub("", payload).strip().strip("`").strip()
    if not text:
        raise ValueError("it is empty")
    try:
        return loads_strict(text)
    except ValueError as exc:
        if "nested" in str(exc):
            raise
    return extract_json(text)


def tool_response(text: str) -> str:
    return f"<tool_response>\n{text}\n</tool_response>"


def answer_returned(issues: list[str]) -> str:
    return ANSWER_RETURNED_MESSAGE.replace("{problems}", "; ".join(issues))


def format_error(detail: str) -> str:
    return tool_response(FORMAT_ERROR_MESSAGE.replace("{detail}", detail))


# Opens the per-request block of the system prompt (a VED decision guide). Everything before it
# is the same for every request, so a policy's prefix cache (llama.cpp's KV file, a server's
# prefix cache) covers it; `Policy.encode` also tokenizes the two parts separately, so the cached
# tokens stay exactly those of the shared part whatever the guide says.
GUIDE_HEADING = "\n\n# Current-Task Decision Guide\n"


def with_guide(system_prompt: str, guide: str | None) -> str:
    """The system prompt with a per-request guide in the slot after the cacheable prefix."""
    return f"{system_prompt}{GUIDE_HEADING}{guide.strip()}" if guide and guide.strip() else system_prompt


def split_guide(system_prompt: str) -> tuple[str, str]:
    """(the cacheable prefix, the guide block with its heading, or "")."""
    at = system_prompt.find(GUIDE_HEADING)
    return (system_prompt, "") if at < 0 else (system_prompt[:at], system_prompt[at:])


def build_system_prompt(tool_schemas: list[dict[str, Any]], *, max_tool_calls: int = MAX_TOOL_CALLS,
                        max_references: int = MAX_REFERENCES, inline_skills: bool = False) -> str:
    """The system prompt: role, tools, skills, budgets, id and ordinal rules, answer format.

    It is the same for every request; a per-request decision guide goes after it (`with_guide`).
    `inline_skills` writes each skill's short rules into the prompt instead of its triggers, for
    a policy that cannot afford a tool call per skill: the prompt is prefilled once and cached,
    while every skill loaded at run time costs a turn.
    """
    skills = load_skills()
    tools = "\n".join(json.dumps(s, ensure_ascii=False) for s in tool_schemas)
    if inline_skills:
        skill_lines = "\n".join(f"- {s.name}: {s.brief}" for s in skills.values())
        skills_block = f"""# Skills
Apply the rules of every skill the request calls for (query_knowledge returns a longer version):
{skill_lines}"""
        how = f"""1. You have at most {max_tool_calls} tool calls, so be quick. When the request names its \
subjects plainly (an apple, a cat, a rocket, the flag of Japan), go straight to `image_search`. Call \
`search` only when a subject is described but not named (a country known by its capital, a building \
known by its height) and you do not know the name.
2. Call `image_search` once per subject that needs a reference (a flag, a landmark, a species). \
Every image found has an id like IMG_001.
3. Answer as soon as each subject has a good reference. Pick at most {max_references}, one per subject.
4. Be brief: <think> is one short sentence; gen_prompt is one or two sentences (under 40 words) \
that state what the request asks for, with no padding."""
        # Worked turns teach a small model the first move better than rules do; the answer shown
        # is for a subject no benchmark request uses, so copying it would be visible.
        examples = """

# Examples
Request: A red fox asleep in the snow
<think>The fox is named.</think>
<tool_call>{"name": "image_search", "arguments": {"query": "red fox"}}</tool_call>
Request: A statue of the first president of the United States
<think>That is George Washington.</think>
<tool_call>{"name": "image_search", "arguments": {"query": "George Washington"}}</tool_call>
Request: The mascot of the 1972 Summer Olympics as a plush toy
<think>I do not know this mascot.</think>
<tool_call>{"name": "search", "arguments": {"queries": ["1972 Summer Olympics mascot"]}}</tool_call>
After "[IMG_001] Red fox (emoji)" came back for the fox:
<think>IMG_001 is the fox.</think>
<answer>{"gen_prompt": "A red fox curled up asleep in deep snow. The fox looks like the first reference image.", \
"reference_images": [{"img_id": "IMG_001", "note": "the fox"}]}</answer>"""
    else:
        skill_lines = "\n".join(
            f"- {s.name}: {s.description}\n  Use when: {s.use_when}\n  Not when: {s.not_when}"
            for s in skills.values())
        skills_block = f"# Skills (load with query_knowledge)\n{skill_lines}"
        examples = ""
        how = f"""1. Find the facts the request hides (who, what, where, when) with `search` before choosing images.
2. Call `image_search` at least once, one subject per call. Every image found has an id like IMG_001.
3. Load every skill whose trigger the request meets; after a skill result, say in your next \
<think> which rules you will apply, and apply them in gen_prompt.
4. At most {max_tool_calls} tool calls in total. Never repeat the same call.
5. Pick at most {max_references} references: the most faithful image per subject, no two of the \
same subject."""
    return f"""You are an image-generation agent. You turn a user's request into a program for a \
reference-conditioned image generator: a precise generation prompt plus up to {max_references} \
reference images. You cannot see images; you work from search results, image titles and the skills.

# Tools
Call one tool per turn. Available tools (JSON schema of each):
{tools}

{skills_block}

# How to work
{how}

# Turn format
Every reply is <think>your reasoning</think> followed by exactly one of:
<tool_call>{{"name": "TOOL_NAME", "arguments": {{...}}}}</tool_call>
<answer>{{"gen_prompt": "...", "reference_images": [{{"img_id": "IMG_001", "note": "what to take from it"}}]}}</answer>
Tool results come back inside <tool_response>…</tool_response>.

# Answer rules
- gen_prompt is a complete, self-contained instruction for the generator. It states every \
constraint of the request (exact quoted text, counts, positions, colours, style) and the facts \
you found.
- In gen_prompt refer to references only by their position in reference_images: the first listed \
is "the first reference image", and so on. Never write IMG ids or URLs in gen_prompt.
- reference_images lists the chosen ids sorted by id (IMG_002 before IMG_005).
- Only use ids that image_search returned.{examples}"""
