import json
import re

import pytest

from genevolve import protocol
from genevolve.program import Program, Reference, check_gen_prompt, ordinals_in, renumber_ordinals


def test_tool_call_with_think():
    t = protocol.parse_turn('<think>look it up</think>\n<tool_call>{"name": "search", '
                            '"arguments": {"queries": ["capital Canberra"]}}</tool_call>')
    assert t.kind == "tool_call" and t.tool_name == "search"
    assert t.arguments == {"queries": ["capital Canberra"]} and t.think == "look it up"


def test_code_fences_whitespace_and_trailing_prose():
    text = ('<think>ok</think>\n\n<tool_call>\n```json\n{"name": "image_search", "arguments": '
            '{"query": "flag of Australia",}}\n```\n</tool_call>\nI hope this helps!')
    t = protocol.parse_turn(text)
    assert t.kind == "tool_call" and t.arguments == {"query": "flag of Australia"}


def test_missing_closing_tag_with_complete_json():
    t = protocol.parse_turn('<think>x</think><answer>{"gen_prompt": "a cat", "reference_images": []}')
    assert t.kind == "answer" and t.answer["gen_prompt"] == "a cat"


def test_first_action_wins_and_rest_is_noted():
    text = ('<think>x</think><tool_call>{"name": "search", "arguments": {"queries": ["a"]}}</tool_call>'
            '<answer>{"gen_prompt": "b", "reference_images": []}</answer>'
            '<tool_call>{"name": "search", "arguments": {"queries": ["c"]}}</tool_call>')
    t = protocol.parse_turn(text)
    assert t.kind == "tool_call" and t.arguments == {"queries": ["a"]}
    assert t.notes == ["2 extra action(s) after the first ignored"]
    t2 = protocol.parse_turn('<answer>{"gen_prompt": "b", "reference_images": []}</answer>'
                             '<tool_call>{"name": "search", "arguments": {}}</tool_call>')
    assert t2.kind == "answer"


def test_tool_call_inside_think_is_not_run():
    t = protocol.parse_turn('<think>I could write <tool_call>{"name": "search"}</tool_call> '
                            'but I will answer</think><answer>{"gen_prompt": "x"}</answer>')
    assert t.kind == "answer"


@pytest.mark.parametrize("text", ["just prose", "<think>only thinking</think>",
                                  "<tool_call>not json</tool_call>", "<tool_call>[1, 2]</tool_call>",
                                  '<tool_call>{"arguments": {}}</tool_call>', "<answer></answer>"])
def test_format_errors(text):
    t = protocol.parse_turn(text)
    assert t.kind == "error" and t.error


def test_double_encoded_arguments():
    t = protocol.parse_turn('<tool_call>{"name": "search", "arguments": "{\\"queries\\": [\\"x\\"]}"}</tool_call>')
    assert t.arguments == {"queries": ["x"]}


def test_system_prompt_mentions_every_tool_skill_and_rule(tools):
    prompt = protocol.build_system_prompt([t.schema() for t in tools])
    for name in ("search", "image_search", "query_knowledge", "spatial_layout", "quantity_counting",
                 "text_rendering", "attribute_binding", "<tool_call>", "<answer>", "IMG_001",
                 "the first reference image", "At most 10 tool calls"):
        assert name in prompt
    for t in tools:       # the JSON schemas are there verbatim
        assert json.dumps(t.schema(), ensure_ascii=False) in prompt
    guided = protocol.with_guide(prompt, "- verify the year")
    assert guided.startswith(prompt) and guided.index("Decision Guide") > guided.index("# Tools")
    assert protocol.split_guide(guided) == (prompt, protocol.GUIDE_HEADING + "- verify the year")


def test_inline_skills_prompt_carries_the_briefs_and_the_small_budget(tools):
    from genevolve.tools.knowledge import load_skills
    prompt = protocol.build_system_prompt([t.schema() for t in tools], max_tool_calls=3, inline_skills=True)
    for skill in load_skills().values():
        assert f"- {skill.name}: {skill.brief}" in prompt
    assert "Use when:" not in prompt and "at most 3 tool calls" in prompt
    assert "the first reference image" in prompt and "<answer>" in prompt
    assert len(prompt) < len(protocol.build_system_prompt([t.schema() for t in tools]))


def test_inline_prompt_examples_are_valid_turns(tools):
    """The worked turns in the small policy's prompt are what it imitates: each must be a turn the
    runtime accepts, with arguments the tool validates and an answer with no program issue."""
    from genevolve.tools.base import validate_arguments
    schemas = {t.name: t.schema() for t in tools}
    prompt = protocol.build_system_prompt(list(schemas.values()), max_tool_calls=2, inline_skills=True)
    examples = prompt.split("# Examples\n", 1)[1]
    turns = re.findall(r"<think>.*?</think>\n<(?:tool_call|answer)>.*?</(?:tool_call|answer)>", examples)
    assert len(turns) == 4
    kinds = []
    for text in turns:
        parsed = protocol.parse_turn(text)
        kinds.append(parsed.tool_name or parsed.kind)
        if parsed.kind == "tool_call":
            validate_arguments(schemas[parsed.tool_name]["parameters"], parsed.arguments)
        else:
            refs = parsed.answer["reference_images"]
            assert check_gen_prompt(parsed.answer["gen_prompt"], len(refs)) == []
    assert kinds == ["image_search", "image_search", "search", "answer"]
    assert "# Examples" not in protocol.build_system_prompt(list(schemas.values()))


def test_ordinals_past_the_list_go_to_the_references_nothing_names():
    text, notes = renumber_ordinals("The rocket is the first reference image. The heart is the fourth reference.", 2)
    assert text == "The rocket is the first reference image. The heart is the second reference."
    assert list(map(str, notes)) == ["ordinal_renumbered: 'fourth reference' -> 'second reference'"]
    text, _ = renumber_ordinals("Put reference image 3 left of the fifth reference image", 2)
    assert text == "Put reference image 1 left of the second reference image" and check_gen_prompt(text, 2) == []
    # left alone when they do not pair up, or when every position is already named somewhere
    for doubtful in ("The third and the fourth reference image", "The first and second reference image, "
                     "then the third reference image"):
        assert renumber_ordinals(doubtful, 2) == (doubtful, [])


def test_ordinals_and_program_checks():
    assert ordinals_in("Put the second reference image left of the first reference image, "
                       "and reference image 3 behind") == [2, 1, 3]
    assert [i.kind for i in check_gen_prompt("", 0)] == ["empty_gen_prompt"]
    issues = check_gen_prompt("Use the third reference image and IMG_004 from https://x.org/a.png", 2)
    assert [i.kind for i in issues] == ["ordinal_out_of_range", "img_id_in_gen_prompt", "url_in_gen_prompt"]
    assert check_gen_prompt("The flag from the first reference image", 1) == []
    p = Program("x", [Reference("IMG_001", "n", "/a.png")])
    assert Program.from_dict(p.to_dict()) == p


def test_deeply_nested_json_is_a_format_error_not_a_crash():
    for depth in (40, 100_000):
        t = protocol.parse_turn("<answer>" + '{"a": ' * depth + "1" + "}" * depth + "</answer>")
        assert t.kind == "error" and "nested" in t.error


def test_nan_and_infinity_are_not_json():
    t = protocol.parse_turn('<tool_call>{"name": "search", "arguments": {"queries": ["a"], "top_k": NaN}}</tool_call>')
    assert t.kind == "error"
    t = protocol.parse_turn('<tool_call>{"name": "search", "arguments": {"top_k": Infinity}}</tool_call>')
    assert t.kind == "error"


def test_lone_surrogate_escapes_come_back_encodable():
    t = protocol.parse_turn('<tool_call>{"name": "search", "arguments": {"queries": ["a\\ud800b"]}}</tool_call>')
    assert t.arguments == {"queries": ["a\ufffdb"]}
    json.dumps(t.arguments, ensure_ascii=False).encode("utf-8")
