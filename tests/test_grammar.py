"""The protocol grammar, checked by llama.cpp's own grammar sampler on strings.

llama.cpp has no call that asks "does this grammar accept this string?", so the test makes the real
model copy a string under the grammar: asked to repeat a text exactly, the model writes it token for
token (greedy) where the grammar admits it and is forced off it where the grammar refuses. An
accepted string comes back unchanged; a refused one comes back changed, at or before the first
character the grammar forbids.
"""

from __future__ import annotations

import os

import pytest

from genevolve.models import model_status
from genevolve.policies.grammar import grammar_for_tools
from genevolve.policies.local import LocalGGUFPolicy
from genevolve.tools import ImageSearchTool, KnowledgeTool, SearchTool

pytestmark = [pytest.mark.model,
              pytest.mark.skipif(not model_status()["available"], reason=model_status()["reason"])]

SCHEMAS = [t.schema() for t in (SearchTool(None), ImageSearchTool(None), KnowledgeTool())]
COPY_SYSTEM = ("You are a copying machine. Reply with the user's message exactly, character for character, "
               "and nothing else.")
ANSWER = ('<think>IMG_001 is the flag.</think>\n<answer>{"gen_prompt": "The flag from %s on a pole.", '
          '"reference_images": [{"img_id": "IMG_001", "note": "the flag"}]}</answer>')


@pytest.fixture(scope="module")
def policy():
    pol = LocalGGUFPolicy(n_ctx=2048, tool_schemas=SCHEMAS, prefix_cache=False)
    pol.load()
    yield pol
    pol.close()


def copied_under(policy: LocalGGUFPolicy, grammar: str, text: str) -> str:
    """What the model writes under `grammar` when asked to repeat `text` (greedy)."""
    messages = [{"role": "system", "content": COPY_SYSTEM}, {"role": "user", "content": text}]
    rendered = policy._post("/apply-template", {"messages": messages})["prompt"]
    at = rendered.index(text)

    def ids(piece: str, special: bool) -> list[int]:
        return policy._post("/tokenize", {"content": piece, "add_special": False, "parse_special": special})["tokens"]
    # The text to copy is read as plain characters, so the model sees it as the grammar spells it.
    prompt = ids(rendered[:at], True) + ids(text, False) + ids(rendered[at + len(text):], True)
    result = policy._post("/completion", {"prompt": prompt, "n_predict": len(text) // 2 + 40, "temperature": 0.0,
                                          "grammar": grammar, "cache_prompt": True})
    return result["content"]


def test_grammar_accepts_a_well_formed_answer_and_refuses_ids_and_tags_in_gen_prompt(policy):
    grammar = grammar_for_tools(SCHEMAS, image_ids=("IMG_001",))
    good = ANSWER % "the first reference image"
    assert copied_under(policy, grammar, good) == good
    for forbidden, inside in (("_", "IMG_001"), ("<", "the first</think> image")):
        text = ANSWER % inside
        out = copied_under(policy, grammar, text)
        first_forbidden = text.index(forbidden, text.index('"gen_prompt": "') + len('"gen_prompt": "'))
        assert out != text and len(os.path.commonprefix([out, text])) <= first_forbidden, out


def test_answer_may_not_pick_an_id_no_search_returned(policy):
    text = ANSWER.replace('"IMG_001", "note"', '"IMG_002", "note"') % "the first reference image"
    out = copied_under(policy, grammar_for_tools(SCHEMAS, image_ids=("IMG_001",)), text)
    assert out != text and len(os.path.commonprefix([out, text])) <= text.index("IMG_002") + len("IMG_00")
    # with IMG_002 found, the same text is admitted
    assert copied_under(policy, grammar_for_tools(SCHEMAS, image_ids=("IMG_001", "IMG_002")), text) == text
