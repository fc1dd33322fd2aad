"""The eight skill files parse, carry triggers and numbered rules, and the tool serves them."""

from __future__ import annotations

import asyncio
import re

import pytest

from genevolve.tools.base import ToolArgumentError, ToolContext
from genevolve.tools.knowledge import SKILL_NAMES, KnowledgeTool, load_skills, parse_skill


def test_every_skill_loads_with_triggers_and_numbered_rules():
    skills = load_skills()
    assert list(skills) == list(SKILL_NAMES)
    for name, skill in skills.items():
        assert skill.name == name
        for line in (skill.description, skill.use_when, skill.not_when):
            assert len(line.split()) >= 8 and "\n" not in line, f"{name}: front matter line too thin"
        rules = re.findall(r"^(\d+)\. \S", skill.body, flags=re.M)
        assert [int(n) for n in rules] == list(range(1, len(rules) + 1)), f"{name}: rules not numbered 1..n"
        assert len(rules) >= 6, f"{name}: only {len(rules)} rules"
        assert 150 <= len(skill.body.split()) <= 330, f"{name}: body has {len(skill.body.split())} words"
        assert "Before:" in skill.body and "After:" in skill.body, f"{name}: no worked example"
        assert "the first reference image" in skill.body, f"{name}: no ordinal reminder"
        assert "IMG_" not in skill.body and "http" not in skill.body


def test_query_knowledge_returns_the_body_under_the_guidance_header():
    tool = KnowledgeTool()
    result = asyncio.run(tool.call({"skill_name": "text_rendering"}, ToolContext()))
    assert result.error is None
    assert result.text.startswith("## Skill Guidance\n\n=== Skill: text_rendering ===\n")
    assert result.text.endswith(load_skills()["text_rendering"].body)
    assert "exact spelling" in result.text
    assert result.data == {"skill": "text_rendering"}


@pytest.mark.parametrize("arguments", [{"skill_name": "colour_grading"}, {}, {"skill_name": 3}])
def test_query_knowledge_rejects_unknown_or_missing_skill(arguments):
    with pytest.raises(ToolArgumentError):
        asyncio.run(KnowledgeTool().call(arguments, ToolContext()))


def test_parse_skill_names_the_missing_key():
    with pytest.raises(ValueError, match="not_when"):
        parse_skill("---\nname: x\ndescription: d\nuse_when: u\n---\nbody", "skills/x.md")


def test_every_skill_has_a_short_brief_returned_when_the_budget_is_small():
    for name, skill in load_skills().items():
        assert 25 <= len(skill.brief.split()) <= 60, f"{name}: brief has {len(skill.brief.split())} words"
        assert "IMG_" not in skill.brief and "Before:" not in skill.brief
    small = asyncio.run(KnowledgeTool().call({"skill_name": "quantity_counting"}, ToolContext(observation_chars=600)))
    assert small.text == ("## Skill Guidance\n\n=== Skill: quantity_counting ===\n"
                          + load_skills()["quantity_counting"].brief)
    assert "Before:" not in small.text and len(small.text) <= 600
    full = asyncio.run(KnowledgeTool().call({"skill_name": "quantity_counting"}, ToolContext(observation_chars=3000)))
    assert "Before:" in full.text


def test_parse_skill_requires_a_brief():
    with pytest.raises(ValueError, match="brief"):
        parse_skill("---\nname: x\ndescription: d\nuse_when: u\nnot_when: n\n---\nbody", "skills/x.md")
