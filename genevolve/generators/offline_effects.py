"""Colour, lighting and style effects of the offline renderer (OpenCV and numpy, no models).

Each style filter takes and returns an RGB uint8 array; the slow OpenCV filters run at
FILTER_LONG_SIDE pixels and are scaled back up, which keeps a 1024 px render under a second.
"""

from __future__ import annotations

import cv2
import numpy as np

FILTER_LONG_SIDE = 512          # the slow OpenCV filters run at this size, then scale back up


def colour_transfer(canvas: np.ndarray, style: np.ndarray, strength: float = 0.75) -> np.ndarray:
    """Move the canvas's Lab mean and spread towards the style reference's (Reinhard-style transfer)."""
    def lab_stats(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        small = cv2.resize(np.clip(rgb, 0, 255).astype(np.float32), (128, 128), interpolation=cv2.INTER_AREA)
        lab = cv2.cvtColor(small / 255, cv2.COLOR_RGB2LAB).reshape(-1, 3)
        return lab.mean(0), lab.std(0) + 1e-3

    (s_mean, s_std), (t_mean, t_std) = lab_stats(canvas), lab_stats(style[..., :3])
    lab = cv2.cvtColor(np.clip(canvas, 0, 255) / 255, cv2.COLOR_RGB2LAB)
    lab = (lab - s_mean) * (t_std / s_std) + t_mean
    rgb = cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_LAB2RGB) * 255
    return (1 - strength) * canvas + strength * rgb


def _saturate(img: np.ndarray, amount: float) -> np.ndarray:
    grey = img @ np.array([0.299, 0.587, 0.114], np.float32)
    return grey[..., None] + (img - grey[..., None]) * amount


def _vignette(img: np.ndarray, depth: float) -> np.ndarray:
    h, w = img.shape[:2]
    ys = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    xs = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    return img * (1 - depth * np.clip((xs ** 2 + ys ** 2) / 2, 0, 1))[..., None]


def _tint(img: np.ndarray, gains: tuple[float, float, float]) -> np.ndarray:
    return img * np.array(gains, np.float32)


LIGHTING = {
    "sunset": lambda im: _tint(im, (1.10, 0.97, 0.80)),
    "night": lambda im: _vignette(_tint(im, (0.45, 0.52, 0.72)), 0.4),
    "neon": lambda im: _tint(_saturate(im, 1.5), (1.08, 0.9, 1.12)),
    "dramatic": lambda im: _vignette((im - im.mean()) * 1.35 + im.mean(), 0.55),
    "soft": lambda im: 24 + 0.88 * (0.8 * im + 0.2 * cv2.GaussianBlur(im, (0, 0), 6)),
    "warm": lambda im: _tint(im, (1.08, 1.0, 0.86)),
    "cold": lambda im: _tint(im, (0.86, 0.97, 1.1)),
}


def _at_filter_size(img: np.ndarray, filter_bgr) -> np.ndarray:
    """Run a slow OpenCV filter on a FILTER_LONG_SIDE copy (BGR uint8) and scale the result back."""
    h, w = img.shape[:2]
    scale = min(1.0, FILTER_LONG_SIDE / max(h, w))
    small = cv2.resize(np.clip(img, 0, 255).astype(np.uint8), (round(w * scale), round(h * scale)),
                       interpolation=cv2.INTER_AREA)
    out = filter_bgr(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    out = cv2.cvtColor(out, cv2.COLOR_GRAY2RGB if out.ndim == 2 else cv2.COLOR_BGR2RGB)
    return cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)


def _watercolor(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # cv2.stylization's look (flat washes, pigment pooling at edges) from the recursive edge-preserving
    # filter, which is about 4x faster than stylization's normalised-convolution one.
    def wash(bgr: np.ndarray) -> np.ndarray:
        smooth = cv2.edgePreservingFilter(bgr, flags=cv2.RECURS_FILTER, sigma_s=30, sigma_r=0.5)
        grey = cv2.cvtColor(smooth, cv2.COLOR_BGR2GRAY).astype(np.float32)
        edges = cv2.magnitude(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
        return (smooth * (1 - np.clip(edges / 300, 0, 0.5))[..., None]).astype(np.uint8)

    out = _at_filter_size(img, wash)
    paper = cv2.GaussianBlur(rng.normal(0, 1, img.shape[:2]).astype(np.float32), (0, 0), 1.5)
    return out * (0.96 + 0.04 * np.tanh(paper))[..., None] + 6


def _cartoon(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    def ink(bgr: np.ndarray) -> np.ndarray:
        smooth = cv2.bilateralFilter(cv2.bilateralFilter(bgr, 7, 60, 60), 7, 60, 60)
        flat = (smooth // 40) * 40 + 20
        edges = cv2.adaptiveThreshold(cv2.medianBlur(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), 5), 255,
                                      cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, 9, 4)
        return cv2.bitwise_and(flat, flat, mask=edges)
    return _saturate(_at_filter_size(img, ink), 1.2)


def _poster(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    smooth = _at_filter_size(img, lambda bgr: cv2.bilateralFilter(bgr, 7, 50, 50))
    return _saturate(np.round(np.clip(smooth, 0, 255) / 255 * 3) / 3 * 255, 1.15)


def _vintage(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    sepia = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], np.float32)
    toned = 0.8 * (img @ sepia.T) + 0.2 * img
    return _vignette(22 + 0.82 * toned, 0.35)


def _noir(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    grey = img @ np.array([0.299, 0.587, 0.114], np.float32)
    return _vignette(np.repeat(((grey - 128) * 1.3 + 128)[..., None], 3, axis=2), 0.45)


STYLES = {
    "watercolor": _watercolor,
    "oil painting": lambda im, rng: _saturate(_at_filter_size(im, lambda bgr: cv2.edgePreservingFilter(
        bgr, flags=cv2.RECURS_FILTER, sigma_s=30, sigma_r=0.45)), 1.2),
    "cartoon": _cartoon,
    "sketch": lambda im, rng: _at_filter_size(im, lambda bgr: cv2.pencilSketch(
        bgr, sigma_s=40, sigma_r=0.08, shade_factor=0.045)[0]),
    "poster": _poster,
    "vintage": _vintage,
    "noir": _noir,
}


# ---- text -------------------------------------------------------------------------------------------
