"""OfflineJudge: the four KScore dimensions from classical vision and OCR, with no model service.

It is a proxy, not a replacement for the VLM judge: it can tell whether the right subject, text,
count and arrangement ended up in the image, not whether the image is a good picture of it. Each
dimension is graded on {0, 0.5, 1} with the thresholds below; the raw measurements go to
`JudgeResult.extra` so that every grade can be checked by hand. `benchmarks/
offline_judge_calibration.py` measures how often it ranks a right image above a wrong one.

Objects. Many ground truths (and all of the offline renderer's) show objects on a plain or
  gradient backdrop; the backdrop is a plane per colour channel fitted to the image border, and
  what differs from it by more than BG_DELTA_E (cast shadows aside) splits into connected
  objects. A busy picture (a photo) has no backdrop and is treated as one object.
visual_correctness: is each ground-truth object in the generated image, with its colours? SIFT
  keypoints of the object are matched to the generated image (every generated keypoint nearly as
  close as the best counts, so a repeated object can match any copy), and RANSAC fits one
  similarity transform (shift, rotation, uniform scale). Why this: generators and our compositor
  move and rescale subjects freely but rarely warp them in perspective, so a 4-degree-of-freedom
  model needs few matches and rejects chance agreements a homography would accept; local features
  ignore what changed around the subject (backdrop, layout, other objects) where a global
  histogram or SSIM would not. SIFT sees grey levels only, so the flag of Italy matches that of
  Ireland; the generated image is therefore warped onto the ground truth and the share of the
  matched region whose colour is within COLOUR_DELTA_E (CIE76) is the object's agreement. An
  object counts when >= MIN_INLIERS keypoints fit and agreement >= MIN_AGREEMENT; its coverage is
  inliers x agreement / its keypoints. Objects too plain for keypoints (a coloured square) are
  compared by chroma-weighted colour histograms instead, worth at most COLOUR_ONLY_WEIGHT.
  similarity = mean coverage over objects; >= VISUAL_FULL -> 1, >= VISUAL_HALF -> 0.5, else 0.
text_accuracy: RapidOCR reads the generated image; each required string (meta `required_texts`,
  else every double-quoted string of the request) is looked for in the OCR lines by approximate
  substring matching over letters and digits (case and spaces ignored: OCR drops spaces). With d
  the edit distance over the string's length: d <= TEXT_FULL -> 1, d <= TEXT_HALF -> 0.5, else 0;
  the worst string decides. No required text -> text_accuracy_na with 0.5, as published.
faithfulness: the share of required elements present: the ground truth's objects (at least half
  found), each required text (d <= TEXT_PRESENT), the expected count (meta `count`, compared with
  the objects on the generated image's backdrop, OCR'd text lines left out) and a required
  relation (meta `relation`: matched objects keep the ground truth's left/right and above/below
  order). All -> 1, at least half -> 0.5, else 0.
aesthetics: image statistics held against the ground truth, so that a flat poster and a photo are
  each judged by their own standard: exposure (mean luminance; or brighter than the GT with less
  contrast: washed out), contrast (RMS luminance), sharpness (the steepest 1% of luminance steps
  relative to the luminance range) and colourfulness (Hasler and Suesstrunk 2003). No defect -> 1
  (not worse than the GT), one -> 0.5, more -> 0.
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from ..ocr import read_text
from ..tools.image_library_user import DEFAULT_MAX_PIXELS, open_checked
from .base import Judge, JudgeResult
from .kscore import missing_images

RUBRIC_VERSION = "genevolve-offline-1"
WORK_SIDE = 512                 # images are compared at this long side
MAX_PIXELS = DEFAULT_MAX_PIXELS  # 64 MP: more decoded pixels than this is a failed sample, not 1.5 GB of RAM

# visual_correctness
MAX_FEATURES = 2000
CANDIDATES, CANDIDATE_SLACK = 6, 1.25   # generated keypoints tried per ground-truth keypoint
MIN_INLIERS = 6                 # fewer matches than this are not an object
MIN_OBJECT_KEYPOINTS = 12       # objects with fewer keypoints are too plain to match by features
RANSAC_PX = 4.0
RANSAC_TRIES = 4
MIN_SCALE, MAX_SCALE = 0.15, 6.0
COLOUR_DELTA_E = 15.0           # CIE76 distance at which two colours still count as the same
MIN_AGREEMENT = 0.75            # an aligned object agreeing less than this is a different object
VISUAL_FULL, VISUAL_HALF = 0.22, 0.08
HIST_BINS = (6, 8, 8)           # CIELAB colour histogram of plain objects
COLOUR_FOUND = 0.7              # histogram overlap at which a plain object counts as present
COLOUR_ONLY_WEIGHT = 0.25       # colours alone reach VISUAL_FULL only at an overlap of 0.88
# text_accuracy / faithfulness text presence
TEXT_FULL, TEXT_HALF, TEXT_PRESENT = 0.10, 0.30, 0.50
OCR_MIN_CONFIDENCE = 0.5
OCR_BLANK_CONFIDENCE = 0.85    # readings trusted enough to hide their box from object counting
OCR_SIDE = 1024                 # OCR reads the image at this long side at most
# faithfulness: relations compare centres that are at least this far apart (share of width/height)
RELATION_MIN_GAP = 0.12
# objects on a backdrop (counting, and the ground truth's objects)
BG_DELTA_E = 14.0
MIN_BACKDROP_SHARE = 0.3        # share of the border a plain backdrop must explain
SHADOW_DEPTH = 0.45             # a same-hue pixel down to this share of the backdrop's lightness is shadow
MIN_OBJECT_AREA = 0.002         # share of the image
OBJECT_AREA_RATIO = 0.3         # a part smaller than this share of the median object is debris
# aesthetics
EXPOSURE_RANGE = (0.08, 0.92)   # mean luminance of a usable picture
EXPOSURE_SHIFT, WASHED_CONTRAST = 0.25, 0.8   # brighter than the GT by this much with less contrast: washed out
CONTRAST_MIN, CONTRAST_RATIO = 0.05, 0.5
SHARPNESS_RATIO = 0.6           # edges less than this share as steep as the GT's: blurred
COLOUR_RATIO, COLOURFUL_GT = 0.35, 20.0

_QUOTED = re.compile(r"\"([^\"]+)\"|“([^”]+)”")


# ---------------------------------------------------------------------------------- images

def load_bgr(path: str | Path, side: int = WORK_SIDE, upscale: bool = True,
             max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The image at `path` as 8-bit BGR, resized so its long side is `side` (or kept when smaller
    and `upscale` is off); transparency goes on white. At most `max_pixels` are decoded (a large JPEG
    is decoded at a reduced scale); anything else is a ValueError that names the file."""
    try:
        im = open_checked(Path(path), max_pixels)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    with im:
        if im.mode in ("RGBA", "LA", "P"):
            im = im.convert("RGBA")
            canvas = Image.new("RGBA", im.size, (255, 255, 255, 255))
            canvas.alpha_composite(im)
            im = canvas
        rgb = np.asarray(im.convert("RGB"))
    return resize_long_side(rgb[:, :, ::-1].copy(), side if upscale else min(side, max(rgb.shape[:2])))


def resize_long_side(bgr: np.ndarray, side: int) -> np.ndarray:
    h, w = bgr.shape[:2]
    scale = side / max(h, w)
    if abs(scale - 1) < 1e-3:
        return bgr
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(bgr, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)


def to_lab(bgr: np.ndarray) -> np.ndarray:
    """CIELAB in real units (L 0..100), after a light blur so resampling noise does not count."""
    return cv2.cvtColor(cv2.GaussianBlur(bgr, (5, 5), 0).astype(np.float32) / 255.0, cv2.COLOR_BGR2LAB)


# ---------------------------------------------------------------------------------- text

def required_texts(request: str, meta: dict[str, Any] | None) -> list[str]:
    """The strings the image must show: meta `required_texts`, else the request's double quotes."""
    listed = (meta or {}).get("required_texts")
    if listed is not None:
        return [str(t) for t in listed if str(t).strip()]
    return [next(g for g in m.groups() if g).strip() for m in _QUOTED.finditer(request or "")
            if any(g and g.strip() for g in m.groups())]


def normalise_text(text: str) -> str:
    """Letters and digits only, case-folded, accents removed: what OCR can be held to."""
    folded = unicodedata.normalize("NFKD", text.casefold())
    return "".join(ch for ch in folded if ch.isalnum() and not unicodedata.combining(ch))


def substring_distance(pattern: str, text: str) -> int:
    """Fewest edits that turn `pattern` into some substring of `text` (free start and end in text)."""
    if not pattern:
        return 0
    previous = [0] * (len(text) + 1)           # row 0: an empty pattern matches anywhere for free
    for i, pc in enumerate(pattern, 1):
        current = [i] + [0] * len(text)
        for j, tc in enumerate(text, 1):
            current[j] = min(previous[j - 1] + (pc != tc), previous[j] + 1, current[j - 1] + 1)
        previous = current
    return min(previous)


def text_distance(required: str, lines: list[str]) -> float:
    """Normalised edit distance of `required` to its best match in the OCR lines (1.0 = absent)."""
    target = normalise_text(required)
    if not target:
        return 0.0
    candidates = [normalise_text(line) for line in lines]
    # Text split over several OCR lines, joined as read and with repeated letters at a split
    # dropped (OCR boxes can overlap: "NO P" + "PARKING").
    candidates += ["".join(candidates), _join_overlapping(candidates)]
    best = min((substring_distance(target, c) for c in candidates if c), default=len(target))
    return min(1.0, best / len(target))


def _join_overlapping(parts: list[str], longest: int = 3) -> str:
    joined = ""
    for part in parts:
        cut = next((k for k in range(min(longest, len(joined), len(part)), 0, -1)
                    if joined.endswith(part[:k])), 0)
        joined += part[cut:]
    return joined


def grade_text(distance: float) -> float:
    return 1.0 if distance <= TEXT_FULL else 0.5 if distance <= TEXT_HALF else 0.0


# ---------------------------------------------------------------------------------- objects

@dataclass
class Segment:
    """One object standing out from the backdrop: its mask, box and area (pixels)."""

    mask: np.ndarray
    box: tuple[int, int, int, int]
    area: int


def _lab_of(rgb01: np.ndarray) -> np.ndarray:
    shape = rgb01.shape
    flat = np.clip(rgb01, 0, 1).astype(np.float32).reshape(-1, 1, 3)
    return cv2.cvtColor(flat, cv2.COLOR_BGR2LAB).reshape(shape)


def backdrop_lab(bgr: np.ndarray) -> tuple[np.ndarray, float]:
    """The backdrop in CIELAB, as a plane per colour channel fitted to a band along the image
    border, and the share of that band it explains.

    A plane (a + b·x + c·y) fitted in RGB covers plain backdrops and the linear gradients that
    renderers draw (a gradient between two distant colours is not planar in CIELAB); two robust
    passes drop border pixels that belong to objects touching the edge."""
    h, w = bgr.shape[:2]
    band = max(2, min(h, w) // 150)             # thin: objects often come within a few pixels of the edge
    ys, xs = np.mgrid[0:h, 0:w]
    border = np.zeros((h, w), bool)
    border[:band], border[-band:], border[:, :band], border[:, -band:] = True, True, True, True
    design = np.stack([np.ones(border.sum()), xs[border] / w, ys[border] / h], axis=1)
    colours = cv2.GaussianBlur(bgr, (5, 5), 0).astype(np.float64) / 255.0
    values, values_lab = colours[border], _lab_of(colours[border])
    keep = np.ones(len(values), bool)
    for _ in range(2):
        coef, *_ = np.linalg.lstsq(design[keep], values[keep], rcond=None)
        residual = np.linalg.norm(_lab_of(design @ coef) - values_lab, axis=1)
        keep = residual <= max(BG_DELTA_E / 2, np.percentile(residual, 40))
    explained = float((residual <= BG_DELTA_E).mean())
    full = np.stack([np.ones(h * w), xs.ravel() / w, ys.ravel() / h], axis=1)
    return _lab_of((full @ coef).reshape(h, w, 3)), explained


def segment_objects(bgr: np.ndarray, ignore_boxes: list[list[list[float]]] | None = None) -> list[Segment]:
    """Separate objects on a plain or gradient backdrop, largest first; [] when the backdrop is busy.

    A pixel is foreground when its colour differs from the backdrop by more than BG_DELTA_E, except
    a pixel of the backdrop's hue that is only darker (down to SHADOW_DEPTH of its lightness): that
    is a cast shadow. Components smaller than OBJECT_AREA_RATIO of a typical object are debris. The
    `ignore_boxes` (text lines found by OCR) are blanked first, so a caption is not an object."""
    h, w = bgr.shape[:2]
    backdrop, explained = backdrop_lab(bgr)
    lab = to_lab(bgr)
    if explained < MIN_BACKDROP_SHARE:           # a photo or a busy scene: no backdrop to stand out from
        return []
    residual = np.linalg.norm(lab - backdrop, axis=2)
    hue_shift = np.linalg.norm(lab[..., 1:] - backdrop[..., 1:], axis=2)
    shadow = (lab[..., 0] < backdrop[..., 0]) & (lab[..., 0] >= SHADOW_DEPTH * backdrop[..., 0]) \
        & (hue_shift < BG_DELTA_E / 2)
    foreground = ((residual > BG_DELTA_E) & ~shadow).astype(np.uint8)
    for box in ignore_boxes or []:               # grown a little: plaques and outlines around text
        pts = np.float32(box)
        centre = pts.mean(axis=0)
        cv2.fillPoly(foreground, [np.int32(centre + (pts - centre) * 1.25 + np.sign(pts - centre) * 6)], 0)
    foreground = cv2.morphologyEx(foreground, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(foreground, connectivity=8)
    found = [(int(stats[i, cv2.CC_STAT_AREA]), i) for i in range(1, n)
             if stats[i, cv2.CC_STAT_AREA] >= MIN_OBJECT_AREA * h * w]
    if not found:
        return []
    largest = max(a for a, _ in found)
    typical = float(np.median([a for a, _ in found if a >= 0.5 * largest]))
    segments = []
    for area, i in sorted(found, reverse=True):
        if area >= OBJECT_AREA_RATIO * typical:
            x, y, bw, bh = (int(v) for v in stats[i, :4])
            segments.append(Segment(mask=labels == i, box=(x, y, x + bw, y + bh), area=area))
    return segments


# ---------------------------------------------------------------------------------- matching

@dataclass
class ObjectMatch:
    """One ground-truth object looked for in the generated image."""

    keypoints: int                       # the object's keypoints in the ground truth
    inliers: int                         # of those, how many a similarity transform explains
    agreement: float                     # share of the aligned object with the same colours
    gt_centre: tuple[float, float]       # as shares of the ground truth's width and height
    gen_centre: tuple[float, float] | None = None
    colour_match: float = 0.0            # plain objects only: colour-histogram overlap

    @property
    def verified(self) -> bool:
        return self.inliers >= MIN_INLIERS and self.agreement >= MIN_AGREEMENT

    @property
    def found(self) -> bool:
        return self.verified or self.colour_match >= COLOUR_FOUND

    @property
    def coverage(self) -> float:
        """Share of the object's keypoints reproduced, weighted by colour agreement; colours
        alone (plain objects) earn at most COLOUR_ONLY_WEIGHT."""
        if self.verified:
            return self.inliers * self.agreement / self.keypoints
        return COLOUR_ONLY_WEIGHT * self.colour_match if self.found else 0.0


@dataclass
class MatchReport:
    gt_keypoints: int
    gen_keypoints: int
    objects: list[ObjectMatch] = field(default_factory=list)

    @property
    def found(self) -> list[ObjectMatch]:
        return [o for o in self.objects if o.found]

    @property
    def similarity(self) -> float:
        """Mean coverage over the ground truth's objects (0 when it has none to match)."""
        return float(np.mean([o.coverage for o in self.objects])) if self.objects else 0.0


def _features(bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    # A detector per call: creating one is cheap, and sharing one across threads is not safe.
    keypoints, descriptors = cv2.SIFT_create(nfeatures=MAX_FEATURES).detectAndCompute(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), None)
    return np.float32([k.pt for k in keypoints]).reshape(-1, 2), descriptors


def match_objects(gen: np.ndarray, gt: np.ndarray, gt_segments: list[Segment],
                  gen_segments: list[Segment]) -> MatchReport:
    """Each ground-truth object (or the whole ground truth when it has no separable objects) looked
    for in the generated image (see the module docstring)."""
    gen_pts, gen_desc = _features(gen)
    gt_pts, gt_desc = _features(gt)
    report = MatchReport(gt_keypoints=len(gt_pts), gen_keypoints=len(gen_pts))
    neighbours = None
    if gt_desc is not None and gen_desc is not None and min(len(gt_pts), len(gen_pts)) >= MIN_INLIERS:
        # Every generated keypoint nearly as close as the best one is a candidate, so an object the
        # generated image repeats (a counted group) can be matched to any one of its copies.
        neighbours = cv2.BFMatcher(cv2.NORM_L2).knnMatch(gt_desc, gen_desc, k=min(CANDIDATES, len(gen_pts)))
    gen_lab, gt_lab = to_lab(gen), to_lab(gt)
    gen_areas = [(m, _histogram(gen, m), _keypoints_in(gen_pts, m))
                 for m in ([g.mask for g in gen_segments] or [np.ones(gen.shape[:2], bool)])]
    for region in [s.mask for s in gt_segments] or [np.ones(gt.shape[:2], bool)]:
        inside = np.flatnonzero(_keypoints_in(gt_pts, region, as_mask=True))
        match = ObjectMatch(len(inside), 0, 0.0, _centre(region))
        if neighbours is not None and len(inside) >= MIN_INLIERS:
            pairs = [(q, m.trainIdx) for q in inside for m in neighbours[q]
                     if m.distance <= CANDIDATE_SLACK * neighbours[q][0].distance]
            match = _match_one(match, region, pairs, gt_pts, gen_pts, gen_lab, gt_lab)
        if match.inliers == 0:
            _match_colours(match, _histogram(gt, region), gen_areas)
        report.objects.append(match)
    return report


def _centre(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return (float(xs.mean() / mask.shape[1]), float(ys.mean() / mask.shape[0]))


def _keypoints_in(points: np.ndarray, mask: np.ndarray, as_mask: bool = False):
    if len(points) == 0:
        return np.zeros(0, bool) if as_mask else 0
    h, w = mask.shape
    hit = mask[np.clip(points[:, 1].astype(int), 0, h - 1), np.clip(points[:, 0].astype(int), 0, w - 1)]
    return hit if as_mask else int(hit.sum())


def _histogram(bgr: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """CIELAB histogram of the masked pixels, each weighted by its chroma, so that the colour of
    a plain object counts and its white or grey surroundings do not (all-neutral objects fall
    back to plain counts)."""
    lab = cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB)[mask].astype(np.int32)
    bins = np.array(HIST_BINS)
    index = np.ravel_multi_index(tuple((lab * bins // 256).T), HIST_BINS)
    weight = np.clip(np.hypot(lab[:, 1] - 128, lab[:, 2] - 128) / 20.0, 0.0, 1.0)
    if weight.sum() < 0.05 * len(weight):
        weight = np.ones(len(weight))
    hist = np.bincount(index, weights=weight, minlength=int(bins.prod()))
    return hist / max(1e-9, float(hist.sum()))


def _match_colours(match: ObjectMatch, hist: np.ndarray, gen_areas) -> None:
    """For objects too plain for keypoints (a coloured square): the generated object (or image)
    whose colour histogram overlaps the ground-truth object's most, when it is plain too."""
    scored = [(float(np.minimum(hist, h).sum()), mask, n) for mask, h, n in gen_areas]
    overlap, mask, n = max(scored, key=lambda t: t[0])
    if match.keypoints >= MIN_OBJECT_KEYPOINTS and n >= MIN_OBJECT_KEYPOINTS:
        return                      # both sides have texture and still no geometric match: a different object
    match.colour_match = round(overlap, 3)
    if match.found:
        match.gen_centre = _centre(mask)


def _match_one(missing: ObjectMatch, region, pairs, gt_pts, gen_pts, gen_lab, gt_lab) -> ObjectMatch:
    if len(pairs) < MIN_INLIERS:
        return missing
    src = np.float32([gen_pts[j] for _, j in pairs])
    dst = np.float32([gt_pts[q] for q, _ in pairs])
    gt_index = np.array([q for q, _ in pairs])
    cv2.setRNGSeed(0)                 # RANSAC samples at random; the judge must be repeatable
    for _ in range(RANSAC_TRIES):
        # Candidates that share one ground-truth keypoint can make a collapsed model (scale ~ 0)
        # look supported; such a model is dropped with its pairs and the search goes on.
        if len(src) < MIN_INLIERS:
            return missing
        model, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PX,
                                                  maxIters=4000, confidence=0.999)
        if model is None:
            return missing
        inlier = mask.ravel().astype(bool)
        scale = float(np.hypot(model[0, 0], model[1, 0]))
        if MIN_SCALE <= scale <= MAX_SCALE:
            break
        src, dst, gt_index = src[~inlier], dst[~inlier], gt_index[~inlier]
    else:
        return missing
    explained = len(set(gt_index[inlier].tolist()))          # distinct ground-truth keypoints
    if explained < MIN_INLIERS:
        return missing
    hull = np.zeros(region.shape, np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(dst[inlier].astype(np.int32)), 1)
    agreement = _colour_agreement(gen_lab, gt_lab, model, region & (hull > 0))
    gh, gw = gen_lab.shape[:2]
    centre = src[inlier].mean(axis=0)
    return ObjectMatch(missing.keypoints, explained, round(agreement, 3), missing.gt_centre,
                       (float(centre[0] / gw), float(centre[1] / gh)))


def _colour_agreement(gen_lab: np.ndarray, gt_lab: np.ndarray, model: np.ndarray, region: np.ndarray) -> float:
    """Share of `region` (the matched part of a ground-truth object) whose colours the aligned
    generated image reproduces."""
    h, w = gt_lab.shape[:2]
    warped = cv2.warpAffine(gen_lab, model, (w, h), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(-1000.0, 0.0, 0.0))
    inside = region & (warped[..., 0] > -500)
    if inside.sum() < max(30, 0.5 * region.sum()):     # mostly outside the generated image
        return 0.0
    delta = np.linalg.norm(warped[inside] - gt_lab[inside], axis=1)
    return float((delta < COLOUR_DELTA_E).mean())


def grade_visual(similarity: float) -> float:
    return 1.0 if similarity >= VISUAL_FULL else 0.5 if similarity >= VISUAL_HALF else 0.0


def count_objects(bgr: np.ndarray, ignore_boxes: list[list[list[float]]] | None = None) -> int:
    return len(segment_objects(bgr, ignore_boxes))


# ---------------------------------------------------------------------------------- aesthetics

def image_stats(bgr: np.ndarray) -> dict[str, float]:
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    luminance = grey.astype(np.float32) / 255.0
    b, g, r = (bgr[..., i].astype(np.float32) for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    colourfulness = float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))
    # Sharpness: the steepest 1% of luminance steps, relative to the luminance range, so that it
    # does not depend on how much detail or contrast the picture has, only on how crisp edges are.
    gx = cv2.Sobel(luminance, cv2.CV_32F, 1, 0, ksize=3) / 8
    gy = cv2.Sobel(luminance, cv2.CV_32F, 0, 1, ksize=3) / 8
    steps = np.hypot(gx, gy).ravel()
    steepest = np.partition(steps, int(0.99 * steps.size))[int(0.99 * steps.size):]
    lo, hi = np.percentile(luminance, [1, 99])
    return {"exposure": round(float(luminance.mean()), 4), "contrast": round(float(luminance.std()), 4),
            "sharpness": round(float(steepest.mean() / max(0.05, hi - lo)), 4),
            "colourfulness": round(colourfulness, 2)}


def aesthetic_defects(gen: dict[str, float], gt: dict[str, float]) -> list[str]:
    """What makes the generated image worse than the ground truth, statistic by statistic."""
    defects = []
    washed_out = (gen["exposure"] - gt["exposure"] > EXPOSURE_SHIFT
                  and gen["contrast"] < WASHED_CONTRAST * gt["contrast"])
    if not EXPOSURE_RANGE[0] <= gen["exposure"] <= EXPOSURE_RANGE[1] or washed_out:
        defects.append("exposure")
    if gen["contrast"] < max(CONTRAST_MIN, CONTRAST_RATIO * gt["contrast"]):
        defects.append("contrast")
    if gen["sharpness"] < SHARPNESS_RATIO * gt["sharpness"]:
        defects.append("sharpness")
    if gt["colourfulness"] >= COLOURFUL_GT and gen["colourfulness"] < COLOUR_RATIO * gt["colourfulness"]:
        defects.append("colourfulness")
    return defects


def grade_aesthetics(defects: list[str]) -> float:
    return 1.0 if not defects else 0.5 if len(defects) == 1 else 0.0


# ---------------------------------------------------------------------------------- faithfulness

def relation_kept(objects: list[ObjectMatch]) -> bool:
    """Do matched objects keep the ground truth's left/right and above/below order?"""
    if len(objects) < 2:
        return False
    for i, a in enumerate(objects):
        for b in objects[i + 1:]:
            for axis in (0, 1):
                gap = b.gt_centre[axis] - a.gt_centre[axis]
                if abs(gap) >= RELATION_MIN_GAP and np.sign(b.gen_centre[axis] - a.gen_centre[axis]) != np.sign(gap):
                    return False
    return True


def grade_share(passed: int, total: int) -> float:
    if total == 0 or passed == total:
        return 1.0
    return 0.5 if passed * 2 >= total else 0.0


# ---------------------------------------------------------------------------------- the judge

def judge_images(request: str, generated_image: str | Path, gt_image: str | Path,
                 meta: dict[str, Any] | None = None, max_pixels: int = MAX_PIXELS) -> JudgeResult:
    """Score one sample synchronously (the judge runs it in a worker thread).

    `meta` may be a benchmark row: facts nested under its `meta` key count as well."""
    meta = dict(meta or {})
    if isinstance(meta.get("meta"), dict):
        meta.update(meta["meta"])
    gen, gt = load_bgr(generated_image, max_pixels=max_pixels), load_bgr(gt_image, max_pixels=max_pixels)
    extra: dict[str, Any] = {}
    checks: dict[str, bool] = {}

    report = match_objects(gen, gt, segment_objects(gt), segment_objects(gen))
    extra["visual"] = {"similarity": round(report.similarity, 4), "gt_keypoints": report.gt_keypoints,
                       "gen_keypoints": report.gen_keypoints,
                       "objects": [o.__dict__ for o in report.objects]}
    visual = grade_visual(report.similarity)
    if report.objects:
        checks["subjects"] = 2 * len(report.found) >= len(report.objects)

    texts = required_texts(request, meta)
    text_na = not texts
    text_score = 0.5
    ocr_boxes: list[list[list[float]]] = []
    if texts or meta.get("count") is not None:
        # Native pixels, at most OCR_SIDE: upscaling makes OCR split words ("FARM" "ISTAND").
        big = load_bgr(generated_image, OCR_SIDE, upscale=False, max_pixels=max_pixels)
        found = [(t, c, b) for t, c, b in read_text(big) if c >= OCR_MIN_CONFIDENCE]
        shrink = gen.shape[1] / big.shape[1]
        # Only confident, multi-character readings are blanked before counting: OCR now and then
        # reads a single letter into a picture, and that must not erase an object.
        ocr_boxes = [[[x * shrink, y * shrink] for x, y in b] for t, c, b in found
                     if c >= OCR_BLANK_CONFIDENCE and len(normalise_text(t)) >= 2]
        lines = [t for t, _, _ in found]
        distances = {t: round(text_distance(t, lines), 3) for t in texts}
        extra["text"] = {"required": texts, "ocr": lines, "distance": distances}
        if texts:
            text_score = min(grade_text(d) for d in distances.values())
            for t, d in distances.items():
                checks[f"text:{t}"] = d <= TEXT_PRESENT

    expected = meta.get("count")
    if expected is not None:
        counted = count_objects(gen, ocr_boxes)
        extra["count"] = {"expected": int(expected), "found": counted}
        checks["count"] = counted == int(expected)
    if meta.get("relation"):
        checks["relation"] = relation_kept(report.found)

    extra["checks"] = checks
    faithfulness = grade_share(sum(checks.values()), len(checks))

    gen_stats, gt_stats = image_stats(gen), image_stats(gt)
    defects = aesthetic_defects(gen_stats, gt_stats)
    extra["aesthetics"] = {"generated": gen_stats, "ground_truth": gt_stats, "defects": defects}

    failed = [k for k, ok in checks.items() if not ok]
    rationale = (f"Required: {', '.join(checks) or 'nothing checkable'}; missing: {', '.join(failed) or 'none'}. "
                 f"Ground-truth detail reproduced: {report.similarity:.2f}. "
                 + (f"Text distance: {extra['text']['distance']}. " if texts else "No text required. ")
                 + f"Image defects: {', '.join(defects) or 'none'}.")
    return JudgeResult(scores={"faithfulness": faithfulness, "visual_correctness": visual,
                               "text_accuracy": text_score, "aesthetics": grade_aesthetics(defects)},
                       text_accuracy_na=text_na, rationale=rationale, judge="offline",
                       rubric_version=RUBRIC_VERSION, extra=extra)


class OfflineJudge(Judge):
    """KScore's four dimensions from OCR, local features and image statistics (no model service).

    concurrency: samples scored at once. max_pixels: an image with more decoded pixels (after a
    large JPEG is decoded at a reduced scale) fails its sample with the reason, default MAX_PIXELS.
    """

    name = "offline"

    def __init__(self, concurrency: int | str = 1, max_pixels: int | str = MAX_PIXELS):
        self._slots = asyncio.Semaphore(max(1, int(concurrency)))
        self.max_pixels = int(max_pixels)
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be positive, got {max_pixels}")

    def info(self) -> dict[str, str]:
        return {"judge": self.name, "model": "", "endpoint": "", "rubric_version": RUBRIC_VERSION}

    async def score(self, *, request: str, generated_image: str | Path, gt_image: str | Path,
                    program: dict[str, Any] | None = None, meta: dict[str, Any] | None = None) -> JudgeResult:
        missing = missing_images(generated=generated_image, ground_truth=gt_image)
        if missing:
            return JudgeResult.failure(missing, judge=self.name, rubric_version=RUBRIC_VERSION)
        async with self._slots:
            try:
                return await asyncio.to_thread(judge_images, request, generated_image, gt_image, meta,
                                               self.max_pixels)
            except (OSError, ValueError) as exc:      # unreadable or corrupt image files
                return JudgeResult.failure(f"cannot read an image: {exc}", judge=self.name,
                                           rubric_version=RUBRIC_VERSION)
