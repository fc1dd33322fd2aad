"""The protocol grammar for in-process transformers decoding, through llguidance.

`policies/grammar.py` writes one GBNF grammar per kind of turn for llama.cpp. llguidance (the
engine behind llama.cpp's and vLLM's `guidance` backends; a 3 MB wheel with no dependencies) reads
the same GBNF and computes, for each decoding step, the bitmask of tokens the grammar admits:
about 0.15 ms per token here, nothing next to a forward pass.

One wrinkle: a protocol tag that the tokenizer holds as a single special token (Qwen's
`<tool_call>`) is never matched by text in llguidance, so the model would have to spell it in
pieces it was never trained to write. Such tags are written as token references (`<[151657]>`)
instead, the way the llama.cpp policy does; llguidance's GBNF reader does not know that syntax,
so they pass through it as placeholder strings and are swapped in the Lark text it produces.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ..policies.grammar import PROTOCOL_TAGS

_PLACEHOLDER = "@@GENEVOLVE_TOKEN_{}@@"
_RULE_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*:(.*)$")


def special_tag_tokens(tokenizer: Any) -> dict[str, int]:
    """Protocol tags that this tokenizer holds as one added (special) token: tag -> id."""
    added = {tok.content if hasattr(tok, "content") else str(tok): i
             for i, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()}
    return {tag: added[tag] for tag in PROTOCOL_TAGS if tag in added}


def tag_placeholders(tag_ids: dict[str, int]) -> dict[str, str]:
    """The `tag_tokens` argument for grammar_for_tools: each special tag as a placeholder literal."""
    return {tag: '"' + _PLACEHOLDER.format(i) + '"' for tag, i in tag_ids.items()}


def gbnf_to_llguidance(gbnf: str) -> str:
    """llguidance's Lark text for a GBNF grammar, with token placeholders made token references.

    A terminal that holds a token reference must become a rule (a lexeme cannot contain a special
    token), and so must every terminal that refers to such a rule.
    """
    from llguidance.gbnf_to_lark import any_to_lark

    lark = any_to_lark(gbnf)
    if "@@GENEVOLVE_TOKEN_" not in lark:
        return lark
    # Split into definitions: a line "NAME: body" starts one, indented lines continue it.
    header: list[str] = []
    defs: list[list[Any]] = []           # [name, body lines]
    for line in lark.split("\n"):
        m = _RULE_RE.match(line)
        if m and not line.startswith((" ", "\t")):
            defs.append([m.group(1), [line]])
        elif defs:
            defs[-1][1].append(line)
        else:
            header.append(line)
    lowered: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, lines in defs:
            if not name.isupper() or name in lowered:
                continue
            body = "\n".join(lines)
            if "@@GENEVOLVE_TOKEN_" in body or any(re.search(rf"\b{n}\b", body) for n in lowered):
                lowered.add(name)
                changed = True
    out = "\n".join(header + ["\n".join(lines) for _, lines in defs])
    for name in sorted(lowered, key=len, reverse=True):
        out = re.sub(rf"\b{name}\b", name.lower(), out)
    return re.sub(r'"@@GENEVOLVE_TOKEN_(\d+)@@"', r"<[\1]>", out)


class GrammarConstraint:
    """Token masks for GBNF grammars over one tokenizer; one matcher per sequence being decoded."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: list[int]):
        import llguidance.hf

        self.vocab_size = vocab_size
        self.ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size,
                                                         eos_token=eos_ids[0] if eos_ids else None)
        self.tag_ids = special_tag_tokens(tokenizer)
        self._compiled: dict[str, str] = {}

    def tag_tokens(self) -> dict[str, str]:
        """What to pass as grammar_for_tools(tag_tokens=...) for this tokenizer."""
        return tag_placeholders(self.tag_ids)

    def matcher(self, gbnf: str) -> Any:
        from llguidance import LLMatcher

        if gbnf not in self._compiled:
            if len(self._compiled) > 128:
                self._compiled.clear()
            self._compiled[gbnf] = LLMatcher.grammar_from_lark(gbnf_to_llguidance(gbnf))
        m = LLMatcher(self.ll_tokenizer, self._compiled[gbnf])
        if m.is_error():
            raise ValueError(f"grammar rejected by llguidance: {m.get_error()}")
        return m

    def allowed(self, matcher: Any) -> np.ndarray:
        """A boolean array over the vocabulary: the tokens the grammar admits next."""
        words = np.zeros(((self.vocab_size + 31) // 32,), dtype=np.int32)
        matcher.unsafe_compute_mask_ptr(words.ctypes.data, words.nbytes)
        return np.unpackbits(words.view(np.uint8), bitorder="little")[:self.vocab_size].astype(bool)
