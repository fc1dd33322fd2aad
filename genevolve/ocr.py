"""Reading text in images: one RapidOCR engine per process, shared by the offline judge and the
image library's `--ocr` import.

Loading the engine costs about a second and a few hundred MB, so it is loaded once, on first use;
its ONNX sessions are not documented as safe to call from several threads, so calls are serialised.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

OCRLine = tuple[str, float, list[list[float]]]      # text, confidence, box (four corner points)

_engine: Any = None
_lock = threading.Lock()


class OCRUnavailable(RuntimeError):
    """The OCR package is not installed."""


def ocr_engine() -> Any:
    """The process's engine, loaded on first call; OCRUnavailable names the package to install."""
    global _engine
    with _lock:
        if _engine is None:
            try:
                from rapidocr_onnxruntime import RapidOCR
            except ImportError:
                raise OCRUnavailable("OCR needs the rapidocr-onnxruntime package "
                                     "(pip install 'genevolve[offline]')") from None
            _engine = RapidOCR()
        return _engine


def read_text(bgr: np.ndarray) -> list[OCRLine]:
    """The text lines found in an 8-bit BGR image (the engine's channel order)."""
    loaded = ocr_engine()
    with _lock:
        result, _ = loaded(np.ascontiguousarray(bgr))
    return [(text, float(conf), box) for box, text, conf in (result or [])]
