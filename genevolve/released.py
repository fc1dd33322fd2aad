"""What `--protocol released` needs beyond our own protocol: the released runtime's reading of a
reply, and the texts its checkpoint was trained with.

The released GenEvolve checkpoint (MeiGen-AI/GenEvolve) learnt its behaviour from one runtime: the
answer wins over a tool call anywhere in the reply, the JSON inside a tag is read strictly, and a
turn's reply is stored stripped. `parse_released_turn` reads replies that way.

The prose that runtime shows the model (system prompt, final-step message, format-error message,
skill texts) belongs to its authors, so it is never copied into this project: `load_released_assets`
reads it at run time from the user's own copy of the upstream repository, parsing its Python
sources as data (nothing is imported or executed). Without a copy, our own texts stand in, with the
same structure and the same markers the checkpoint watches for (the final-step message opens with
`=== FINAL STEP: OUTPUT ANSWER NOW ===`).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

from .jsonio import loads_strict
from .protocol import ParsedTurn
from .tools.knowledge import SKILL_NAMES

FINAL_STEP_MARKER = "=== FINAL STEP: OUTPUT ANSWER NOW ==="

# Our stand-ins, with the released structure and markers.
FALLBACK_FINAL_STEP = f"""{FINAL_STEP_MARKER}
This is the last turn and no tools are left: a tool call now is not run.
Reply with <answer>{{"gen_prompt": "...", "reference_images": [...]}}</answer> and nothing else, using
the IMG ids your searches returned (or none). Do not write <think> and do not explain."""
FALLBACK_FORMAT_ERROR = ("<tool_response>\nFormat error: the reply needs exactly one <tool_call>{...}</tool_call> "
                         "or one <answer>{...}</answer>.\n</tool_response>")
FALLBACK_SYSTEM_NOTE = f"""

# The last turn
When a message opens with "{FINAL_STEP_MARKER}", reply with the <answer> alone: no <think>, no tool call."""

# The released reader: a tag, then the smallest {...} that is followed by the closing tag.
_ANSWER_RE = re.compile(r"<answer>\s*(\{.*?\})\s*</answer>", re.DOTALL)
_TOOL_CALL_RE = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)


def parse_released_turn(text: str) -> ParsedTurn:
    """A reply as the released runtime reads it: an answer anywhere wins; otherwise the first tool
    call anywhere (inside <think> too); strict JSON; a reply with neither is a format error."""
    think = re.search(r"<think>(.*?)</think>", text, re.DOTALL)
    think_text = think.group(1).strip() if think else None
    raw, obj = _tagged_object(_ANSWER_RE, text)
    if obj is not None:
        notes = ["tool call ignored: an answer wins"] if _TOOL_CALL_RE.search(text) else []
        return ParsedTurn("answer", answer=obj, think=think_text, raw=raw, notes=notes)
    raw, obj = _tagged_object(_TOOL_CALL_RE, text)
    if obj is not None:
        name = obj.get("name")
        args = obj.get("arguments") or {}
        if isinstance(args, dict) and (name is None or isinstance(name, str)):
            return ParsedTurn("tool_call", tool_name=(name or "").strip(), arguments=args, think=think_text, raw=raw)
    return ParsedTurn("error", think=think_text, error="no readable <tool_call> or <answer>")


def _tagged_object(pattern: re.Pattern, text: str) -> tuple[str | None, dict | None]:
    """The first tag's JSON text and, when it is a strict JSON object, the object."""
    m = pattern.search(text)
    if not m:
        return None, None
    try:
        obj = loads_strict(m.group(1))
    except ValueError:
        return m.group(1), None
    return m.group(1), obj if isinstance(obj, dict) else None


@dataclass
class ReleasedAssets:
    system_prompt: str | None = None        # None: ours, with FALLBACK_SYSTEM_NOTE
    final_step_message: str = FALLBACK_FINAL_STEP
    format_error_message: str = FALLBACK_FORMAT_ERROR
    skill_texts: dict[str, str] = field(default_factory=dict)   # empty: ours
    source: str | None = None               # the folder they came from


class ReleasedAssetsError(ValueError):
    """The folder given as the released runtime's copy lacks what the protocol needs."""


def load_released_assets(root: str | Path | None) -> ReleasedAssets:
    """The released runtime's texts from a copy of its repository at `root` (our stand-ins when
    `root` is None). Raises ReleasedAssetsError naming the file that is missing or unreadable."""
    if root is None:
        return ReleasedAssets()
    root = Path(root)
    package = root / "genevolve"
    prompts = _string_constants(package / "system_prompt.py")
    for name in ("SYSTEM_PROMPT", "FINAL_STEP_MESSAGE"):
        if name not in prompts:
            raise ReleasedAssetsError(f"{package / 'system_prompt.py'}: no string constant {name}")
    format_error = next((s for s in _string_literals(package / "agent.py") if s.startswith("<tool_response>")
                         and "Format error" in s), None)
    if format_error is None:
        raise ReleasedAssetsError(f"{package / 'agent.py'}: no format-error message found")
    skills_dir = package / "knowledge" / "skills"
    skills = {name: (skills_dir / f"{name}.md").read_text(encoding="utf-8")
              for name in SKILL_NAMES if (skills_dir / f"{name}.md").is_file()}
    if not skills:
        raise ReleasedAssetsError(f"{skills_dir}: no skill files")
    return ReleasedAssets(prompts["SYSTEM_PROMPT"], prompts["FINAL_STEP_MESSAGE"], format_error, skills, str(root))


def _parse(path: Path) -> ast.Module:
    try:
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except OSError as exc:
        raise ReleasedAssetsError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except SyntaxError as exc:
        raise ReleasedAssetsError(f"{path}:{exc.lineno}: not Python source ({exc.msg})") from None


def _string_constants(path: Path) -> dict[str, str]:
    """Module-level NAME = "string" assignments of a Python file, read without running it."""
    out = {}
    for node in _parse(path).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    out[target.id] = node.value.value
    return out


def _string_literals(path: Path) -> list[str]:
    return [n.value for n in ast.walk(_parse(path)) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


__all__ = ["FINAL_STEP_MARKER", "ReleasedAssets", "ReleasedAssetsError", "load_released_assets",
           "parse_released_turn"]
