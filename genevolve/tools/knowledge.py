"""The eight generation skills and the `query_knowledge` tool that loads them on demand.

Each skill is a Markdown file in `genevolve/skills/` with a small front matter:

    ---
    name: spatial_layout
    description: one line, shown in the system prompt
    use_when: when to call it (shown in the system prompt)
    not_when: when not to call it (shown in the system prompt)
    brief: the rules in two or three sentences, returned instead of the body when the policy's
           observation budget is too small for it (a small model on a CPU)
    ---
    body: the rewriting rules, returned only when the policy asks for the skill

The system prompt carries name, description and the trigger lines; the body loads on demand.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from .base import Tool, ToolContext, ToolResult, validate_arguments

SKILL_NAMES = (
    "spatial_layout", "aesthetic_drawing", "text_rendering", "creative_drawing",
    "anatomy_body_coherence", "attribute_binding", "physical_material_consistency", "quantity_counting",
)


@dataclass(frozen=True)
class Skill:
    name: str
    description: str
    use_when: str
    not_when: str
    body: str
    brief: str          # the rules in two or three sentences, for policies with a small budget


def parse_skill(text: str, source: str) -> Skill:
    if not text.startswith("---"):
        raise ValueError(f"{source}: a skill file must start with a '---' front matter block")
    try:
        _, head, body = text.split("---", 2)
    except ValueError:
        raise ValueError(f"{source}: the front matter block is not closed with '---'") from None
    meta: dict[str, str] = {}
    for lineno, line in enumerate(head.strip().splitlines(), 2):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"{source}:{lineno}: expected 'key: value', got {line!r}")
        meta[key.strip()] = value.strip()
    for key in ("name", "description", "use_when", "not_when", "brief"):
        if not meta.get(key):
            raise ValueError(f"{source}: front matter lacks '{key}'")
    return Skill(meta["name"], meta["description"], meta["use_when"], meta["not_when"], body.strip(),
                 meta["brief"])


@lru_cache(maxsize=1)
def load_skills() -> dict[str, Skill]:
    folder = resources.files("genevolve") / "skills"
    skills = {}
    for name in SKILL_NAMES:
        path = folder / f"{name}.md"
        skill = parse_skill(path.read_text(encoding="utf-8"), f"skills/{name}.md")
        if skill.name != name:
            raise ValueError(f"skills/{name}.md: front matter names '{skill.name}'")
        skills[name] = skill
    return skills


class KnowledgeTool(Tool):
    name = "query_knowledge"
    description = ("Load the rewriting rules of one generation skill. Call it when the request "
                   "stresses what that skill covers; apply the rules in your gen_prompt.")
    parameters = {
        "type": "object",
        "properties": {"skill_name": {"type": "string", "enum": list(SKILL_NAMES)}},
        "required": ["skill_name"],
    }

    async def call(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        if ctx.layout == "released":
            return self._released(arguments, ctx)
        args = validate_arguments(self.parameters, arguments)
        skill = load_skills()[args["skill_name"]]
        header = f"## Skill Guidance\n\n=== Skill: {skill.name} ===\n"
        text = header + skill.body
        if len(text) > ctx.observation_chars:
            text = header + skill.brief
        return ToolResult(text=text, data={"skill": skill.name})

    def _released(self, arguments: Any, ctx: ToolContext) -> ToolResult:
        """As the released runtime answers: the skill's whole text (its own, when the user's copy
        gave them), and an unknown name is an observation rather than an error."""
        name = arguments.get("skill_name") if isinstance(arguments, dict) else None
        name = name.strip() if isinstance(name, str) else ""
        if name not in SKILL_NAMES:
            return ToolResult(text=f"Unknown skill '{name}'. Available skills: {', '.join(SKILL_NAMES)}",
                              data={"skill": None})
        text = ctx.skill_texts.get(name) or load_skills()[name].body
        return ToolResult(text=f"## Skill Guidance\n\n=== Skill: {name} ===\n{text}", data={"skill": name})
