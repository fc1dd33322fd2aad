"""`qwen-image-edit`: the paper's open generator, diffusers' `QwenImageEditPlusPipeline`, run locally.

Defaults are the paper's: model Qwen/Qwen-Image-Edit-2511, 40 steps, true CFG 4.0, guidance 1.0,
negative prompt " ", seed 0, output long side 1024 with both sides multiples of 16 at the aspect of
the first reference. The pipeline loads on the first render (or `load()`), never at construction.

References: Qwen-Image-Edit is an editing model and needs at least one. A program without references
raises `GeneratorError`, unless `blank_canvas=True`: then a white square canvas of the output size
is passed as the only reference (a text-only fallback; the metadata says so).

Memory: `cpu_offload="model"` keeps each sub-model on the CPU until it runs
(`enable_model_cpu_offload`), `"sequential"` streams layer by layer (`enable_sequential_cpu_offload`,
slowest, least VRAM); with either the pipeline is never moved to the GPU first.

Without a working torchvision, transformers cannot build the Qwen2-VL processor (its video half
needs it); the edit pipeline never uses video, so we then build an image-only processor from the
checkpoint's `processor/` files and hand it to `from_pretrained`.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
import time
from functools import lru_cache
from typing import Any

from PIL import Image

from ..program import Program
from .base import Generator, GeneratorError, RenderResult
from .imageio import load_references, output_size, note_dropped_references

DEFAULT_MODEL = "Qwen/Qwen-Image-Edit-2511"
OFFLOAD_MODES = ("none", "model", "sequential")
DTYPES = ("auto", "bfloat16", "float16", "float32")


class QwenImageEditGenerator(Generator):
    name = "qwen-image-edit"
    max_concurrency = 1          # one pipeline, one render at a time

    def __init__(self, model: str = DEFAULT_MODEL, *, pipeline: Any = None, dtype: str = "auto",
                 device: str = "auto", cpu_offload: str = "none", steps: int = 40, true_cfg_scale: float = 4.0,
                 guidance_scale: float = 1.0, negative_prompt: str = " ", seed: int = 0, long_side: int = 1024,
                 size_multiple: int = 16, max_refs: int = 2, blank_canvas: bool = False):
        if cpu_offload not in OFFLOAD_MODES:
            raise ValueError(f"cpu_offload must be one of {', '.join(OFFLOAD_MODES)}, got {cpu_offload!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if int(steps) < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        if int(max_refs) < 1:
            raise ValueError(f"max_refs must be at least 1, got {max_refs}")
        self.model = str(model)
        self.dtype = dtype
        self.device = device
        self.cpu_offload = cpu_offload
        self.steps = int(steps)
        self.true_cfg_scale = float(true_cfg_scale)
        self.guidance_scale = float(guidance_scale)
        self.negative_prompt = negative_prompt
        self.seed = int(seed)
        self.long_side = int(long_side)
        self.size_multiple = int(size_multiple)
        self.max_refs = int(max_refs)
        self.blank_canvas = bool(blank_canvas)
        self._pipe = pipeline
        self._given_pipeline = pipeline is not None
        self._lock = threading.Lock()       # the pipeline is not re-entrant; renders take turns
        self.load_seconds: float | None = None
        self.loaded_on: str | None = None

    # ------------------------------------------------------------------ loading

    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    def load(self) -> Any:
        """Load the pipeline now (idempotent, thread-safe); returns it."""
        with self._lock:
            return self._ensure_pipeline()

    def _ensure_pipeline(self) -> Any:
        if self._pipe is not None:
            if self.loaded_on is None:
                self.loaded_on = str(getattr(self._pipe, "device", "unknown"))
            return self._pipe
        t0 = time.perf_counter()
        try:
            self._pipe = self._load_pipeline()
        except GeneratorError:
            raise
        except ImportError as exc:
            raise GeneratorError(f"qwen-image-edit needs torch, diffusers and transformers "
                                 f"(pip install 'genevolve[diffusion]'): {exc}") from exc
        except (OSError, ValueError, RuntimeError) as exc:
            raise GeneratorError(f"qwen-image-edit: cannot load {self.model}: {exc}") from exc
        self.load_seconds = round(time.perf_counter() - t0, 3)
        return self._pipe

    def _load_pipeline(self) -> Any:
        import torch
        from diffusers import QwenImageEditPlusPipeline

        device = resolve_device(self.device)
        if self.cpu_offload != "none" and device == "cpu":
            raise GeneratorError(f"qwen-image-edit: cpu_offload={self.cpu_offload} needs an accelerator to offload "
                                 "to, but the device is the CPU; use cpu_offload=none")
        dtype = resolve_dtype(self.dtype, device)
        extra: dict[str, Any] = {}
        if not torchvision_works():
            extra["processor"] = load_image_only_processor(self.model)
        extra[dtype_keyword()] = dtype
        pipe = QwenImageEditPlusPipeline.from_pretrained(self.model, **extra)
        if self.cpu_offload == "model":
            pipe.enable_model_cpu_offload(device=device)
            self.loaded_on = f"{device} (model offload)"
        elif self.cpu_offload == "sequential":
            pipe.enable_sequential_cpu_offload(device=device)
            self.loaded_on = f"{device} (sequential offload)"
        else:
            pipe.to(torch.device(device))
            self.loaded_on = device
        pipe.set_progress_bar_config(disable=True)
        return pipe

    # ------------------------------------------------------------------ rendering

    async def render(self, program: Program, *, seed: int | None = None) -> RenderResult:
        return await asyncio.to_thread(self.render_program, program, seed=seed)

    def render_program(self, program: Program, *, seed: int | None = None) -> RenderResult:
        """Blocking form of `render`: read the program's reference files, then render."""
        images = load_references(program, max_refs=self.max_refs)
        result = self.render_images(program.gen_prompt, images, seed=seed)
        note_dropped_references(result.metadata, program, len(images))
        return result

    def render_images(self, prompt: str, images: list[Image.Image], *, seed: int | None = None,
                      steps: int | None = None, true_cfg_scale: float | None = None,
                      guidance_scale: float | None = None, negative_prompt: str | None = None,
                      width: int | None = None, height: int | None = None) -> RenderResult:
        """Render `prompt` against already-decoded reference images (blocking; the service calls this).

        Unset arguments take the generator's defaults; width/height default to `output_size`."""
        if not prompt or not prompt.strip():
            raise GeneratorError("qwen-image-edit: the prompt is empty")
        seed = self.seed if seed is None else int(seed)
        steps = self.steps if steps is None else int(steps)
        true_cfg = self.true_cfg_scale if true_cfg_scale is None else float(true_cfg_scale)
        guidance = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        negative = self.negative_prompt if negative_prompt is None else negative_prompt
        fallback = None
        if not images:
            if not self.blank_canvas:
                raise GeneratorError("qwen-image-edit needs at least one reference image (it is an editing "
                                     "model); this program has none. Use blank_canvas=true for a text-only "
                                     "render on a white canvas, or another backend")
            w, h = output_size(None, self.long_side, self.size_multiple)
            images = [Image.new("RGB", (width or w, height or h), (255, 255, 255))]
            fallback = "blank_canvas"
        if width is None or height is None:
            auto_w, auto_h = output_size(images[0].size, self.long_side, self.size_multiple)
            width, height = width or auto_w, height or auto_h

        import torch

        with self._lock:
            pipe = self._ensure_pipeline()
            # Only guidance-distilled transformers read guidance_scale; the others (2509/2511 included)
            # ignore it with a warning per render, so it is passed only where it means something.
            distilled = getattr(getattr(getattr(pipe, "transformer", None), "config", None), "guidance_embeds", False)
            t0 = time.perf_counter()
            try:
                out = pipe(image=images, prompt=prompt, negative_prompt=negative, true_cfg_scale=true_cfg,
                           guidance_scale=guidance if distilled else None, num_inference_steps=steps,
                           height=height, width=width, num_images_per_prompt=1,
                           # a CPU generator gives the same noise for a seed on every device
                           generator=torch.Generator(device="cpu").manual_seed(seed))
            except (RuntimeError, ValueError) as exc:    # CUDA OOM is a RuntimeError subclass
                raise GeneratorError(f"qwen-image-edit: the pipeline failed: {exc}") from exc
            render_s = time.perf_counter() - t0
        image = out.images[0]
        metadata: dict[str, Any] = {
            "backend": self.name, "model": self.model, "seed": seed, "steps": steps,
            "true_cfg_scale": true_cfg, "guidance_scale": guidance, "negative_prompt": negative,
            "width": image.width, "height": image.height, "requested_size": [width, height],
            "n_references": 0 if fallback else len(images), "device": self.loaded_on,
            "cpu_offload": self.cpu_offload, "timings": {"render_s": round(render_s, 3)},
        }
        if self.load_seconds is not None:
            metadata["timings"]["load_s"] = self.load_seconds
        if fallback:
            metadata["text_only_fallback"] = fallback
        return RenderResult(image=image, metadata=metadata)

    async def aclose(self) -> None:
        # Free the weights of a pipeline we loaded; one handed to us belongs to the caller.
        if not self._given_pipeline:
            self._pipe = None


def resolve_device(device: str) -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(name: str, device: str):
    import torch

    if name == "auto":     # bf16 where the hardware has it, float32 on the CPU
        return torch.bfloat16 if device.startswith(("cuda", "mps")) else torch.float32
    return getattr(torch, name)


def dtype_keyword() -> str:
    """Recent diffusers renamed `torch_dtype` to `dtype` (warning on the old name); older releases
    know only `torch_dtype`. The helper that maps the old name onto the new tells them apart."""
    try:
        helpers = importlib.import_module("diffusers.utils.deprecation_utils")
    except ImportError:
        return "torch_dtype"
    return "dtype" if hasattr(helpers, "_resolve_dtype") else "torch_dtype"


@lru_cache(maxsize=1)
def torchvision_works() -> bool:
    """True when torchvision imports; a CUDA build next to a CPU torch installs but does not import."""
    try:
        importlib.import_module("torchvision")
    except Exception:       # ImportError, or RuntimeError/OSError from its compiled operators
        return False
    return True


def image_only_processor_class() -> type:
    """Qwen2VLProcessor without its video processor, so it can be built without torchvision."""
    return _image_only_processor_class()


@lru_cache(maxsize=1)
def _image_only_processor_class() -> type:
    from transformers import Qwen2VLProcessor

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        # ProcessorMixin takes its sub-processors from this signature: no video_processor here.
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    return ImageOnlyQwen2VLProcessor


def load_image_only_processor(model: str, subfolder: str = "processor") -> Any:
    """The checkpoint's processor (tokenizer + PIL image processor) without the video half."""
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = Qwen2Tokenizer.from_pretrained(model, subfolder=subfolder)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(model, subfolder=subfolder)
    return image_only_processor_class()(image_processor=image_processor, tokenizer=tokenizer)
