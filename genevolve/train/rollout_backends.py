"""Where GRPO samples its rollouts, and how that sampler receives each step's weights.

Every backend is an ordinary policy behind the ordinary agent (same tools, budgets, parser and
grammar as at inference); they differ only in where the tokens are sampled:

- `hf`: the in-process batched sampler (policies/hf.py) on a bf16 copy of the weights that is
  refreshed in memory after each update. The CPU default.
- `llama`: the embedded llama.cpp policy. After each update the weights are written out and
  converted to GGUF (full weights: the whole model; LoRA: only the adapter, applied over a base GGUF
  converted once) and the policy is reloaded on them. It rolls out exactly what `--policy local`
  will run after training.
- `vllm`: an OpenAI-compatible vLLM server. The weights travel as LoRA adapters through a folder
  the server can read: after each update the adapter is saved there and loaded under a new name with
  vLLM's runtime adapter routes (`/v1/load_lora_adapter`, `/v1/unload_lora_adapter`: the server runs
  with `--enable-lora` and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True), and the next rollouts ask for that
  name. Moving full weights into a running vLLM needs its NCCL/IPC weight transfer between GPUs,
  which this project does not drive: full fine-tuning with `vllm` stops with that message.

`start(model, step)` brings the backend the weights a run starts (or resumes) from; `sync(model,
step)` the weights after step `step`; `policy` is the policy to roll out through now.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

BACKENDS = ("hf", "llama", "vllm")


class RolloutBackendError(RuntimeError):
    """The rollout backend could not take the new weights; the message says where and why."""


class HFRollouts:
    """The in-process sampler on `rollout_model` (the trained model itself with LoRA, a bf16 copy otherwise)."""

    def __init__(self, rollout_model: Any, tokenizer: Any, policy_options: dict[str, Any] | None):
        from ..policies.hf import HFPolicy
        self.rollout_model = rollout_model
        self.policy = HFPolicy(model=rollout_model, tokenizer=tokenizer, **(policy_options or {}))

    def start(self, model: Any, step: int) -> None:
        pass                                   # loaded from the same weights as the trained model

    def sync(self, model: Any, step: int) -> None:
        import torch
        if self.rollout_model is not model:
            with torch.no_grad():
                self.rollout_model.load_state_dict(model.state_dict())
        self.policy.weights_changed()

    def close(self) -> None:
        pass


class LlamaRollouts:
    """The embedded llama.cpp policy, reloaded on a GGUF of each step's weights."""

    def __init__(self, folder: Path, tokenizer: Any, base_path: Path, *, outtype: str, threads: int | None,
                 policy_options: dict[str, Any] | None):
        self.folder = folder
        self.tokenizer = tokenizer
        self.base_path = base_path
        self.outtype = outtype
        self.threads = threads
        self.options = dict(policy_options or {})
        self.policy: Any = None
        self.files: list[Path] = []          # what the policy now loads (model GGUF [, adapter GGUF])
        self._base_gguf: Path | None = None

    def start(self, model: Any, step: int) -> None:
        for stale in self.folder.glob("step_*.gguf"):      # left by an interrupted run
            stale.unlink()
        self.sync(model, step)

    def sync(self, model: Any, step: int) -> None:
        from ..policies.base import PolicyError
        from .export import ExportError
        try:
            self._reload(model, step)
        except (ExportError, PolicyError) as exc:
            raise RolloutBackendError(f"llama rollouts, weights of step {step}: {exc}") from None

    def _reload(self, model: Any, step: int) -> None:
        from ..policies.local import LocalGGUFPolicy
        from .export import export_gguf
        from .weights import save_policy
        self.folder.mkdir(parents=True, exist_ok=True)
        weights = save_policy(model, self.tokenizer, self.folder / f"step_{step:05d}", base=self.base_path)
        is_lora = hasattr(model, "peft_config")
        gguf = export_gguf(weights, self.folder / f"step_{step:05d}.gguf", outtype=self.outtype,
                           base=self.base_path if is_lora else None)
        shutil.rmtree(weights)                # the GGUF is what the policy reads
        if is_lora and self._base_gguf is None:
            self._base_gguf = export_gguf(self.base_path, self.folder / f"base-{self.outtype}.gguf",
                                          outtype=self.outtype)
        files = [self._base_gguf, gguf] if is_lora else [gguf]
        self.close()
        # The system prompt's KV cache is not saved to disk: it would be stale after the next step.
        self.policy = LocalGGUFPolicy(model_path=files[0], lora_path=files[1] if is_lora else None,
                                      n_threads=self.threads, prefix_cache=False, **self.options)
        self.policy.load()
        for old in self.files:
            if old not in files:
                old.unlink(missing_ok=True)
        self.files = files

    def close(self) -> None:
        if self.policy is not None:
            self.policy.close()
            self.policy = None


class VLLMRollouts:
    """A vLLM server, given each step's LoRA adapter by name through a folder it can read."""

    def __init__(self, url: str, folder: Path, tokenizer: Any, base_path: Path, *, adapter_name: str,
                 api_key: str = "", grammar: bool = True, timeout_s: float = 300.0):
        from ..policies.openai_compat import OpenAICompatPolicy
        self.folder = folder
        self.tokenizer = tokenizer
        self.base_path = base_path
        self.adapter_name = adapter_name
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.policy = OpenAICompatPolicy(url, model=adapter_name, api_key=api_key,
                                         grammar="vllm" if grammar else None, timeout_s=timeout_s)
        self.loaded: str | None = None

    def start(self, model: Any, step: int) -> None:
        self.sync(model, step)

    def sync(self, model: Any, step: int) -> None:
        from .weights import save_policy
        name = f"{self.adapter_name}-step-{step}"
        path = save_policy(model, self.tokenizer, self.folder / name, base=self.base_path)
        # A server that outlived an interrupted run may hold this name already: drop it first.
        self._post("unload_lora_adapter", {"lora_name": name}, missing_ok=True)
        self._post("load_lora_adapter", {"lora_name": name, "lora_path": str(path.resolve())})
        previous, self.loaded = self.loaded, name
        self.policy.model = name                  # the next rollouts ask for these weights
        if previous and previous != name:
            self._post("unload_lora_adapter", {"lora_name": previous}, missing_ok=True)
            shutil.rmtree(self.folder / previous, ignore_errors=True)

    def _post(self, route: str, body: dict[str, Any], missing_ok: bool = False) -> None:
        # urllib, not the async chat client: these routes answer plain text, not JSON, and the
        # trainer calls them between steps, when nothing else is in flight.
        from ..secrets import scrub
        url = f"{self.policy.base_url}/{route}"
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as reply:
                reply.read()
        except urllib.error.HTTPError as exc:
            if missing_ok and exc.code in (400, 404):
                return
            detail = scrub(exc.read().decode("utf-8", "replace")[:300], [self.api_key])
            hint = (" (start vLLM with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)"
                    if exc.code == 404 else "")
            raise RolloutBackendError(f"rollout server {url} answered HTTP {exc.code}: {detail}{hint}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise RolloutBackendError(f"rollout server {url} unreachable: {scrub(str(exc), [self.api_key])}") from None

    def close(self) -> None:
        import asyncio
        asyncio.run(self.policy.aclose())


def make_rollouts(config: Any, *, run_dir: Path, rollout_model: Any, tokenizer: Any, base_path: Path,
                  api_key: str = "") -> HFRollouts | LlamaRollouts | VLLMRollouts:
    """The backend `config.rollouts` names."""
    folder = Path(config.rollout_dir) if config.rollout_dir else run_dir / "rollout_weights"
    if config.rollouts == "hf":
        return HFRollouts(rollout_model, tokenizer, config.policy_options)
    if config.rollouts == "llama":
        return LlamaRollouts(folder, tokenizer, base_path, outtype=config.rollout_gguf_type,
                             threads=config.threads, policy_options=config.policy_options)
    return VLLMRollouts(config.rollout_url, folder, tokenizer, base_path, adapter_name=config.rollout_adapter_name,
                        api_key=api_key, grammar=config.rollout_grammar)
