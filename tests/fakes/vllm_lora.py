"""A loopback server that speaks the parts of vLLM's HTTP interface GRPO's `vllm` rollouts use, over
a real (tiny) transformers model with real LoRA adapters:

- `POST /v1/load_lora_adapter {"lora_name", "lora_path"}`: loads the adapter folder with peft
  (400 when the name is taken, as vLLM answers); `POST /v1/unload_lora_adapter {"lora_name"}`
  (404 when unknown). Both answer plain text, as vLLM does.
- `POST /v1/chat/completions`: the `model` field picks the adapter (404 for an unknown name); the
  reply is sampled by the in-process policy on that adapter and carries vLLM's token fields
  (`token_ids`, `prompt_token_ids`, per-token log-probs).

Requests are served one at a time (one model), like a server with a single engine.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from . import FakeServer, RecordedRequest, Reply


class VLLMLoraFake(FakeServer):
    def __init__(self, checkpoint: str, **policy_options: Any):
        super().__init__()
        from transformers import AutoModelForCausalLM, AutoTokenizer
        self.base = AutoModelForCausalLM.from_pretrained(checkpoint)
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        self.policy_options = policy_options
        self.model: Any = None                   # the PeftModel, once an adapter is loaded
        self.policy: Any = None
        self.adapters: list[str] = []
        self.events: list[tuple[str, str]] = []  # ("load" | "unload" | "chat", adapter name), in order
        self._engine = threading.Lock()

    def handle(self, request: RecordedRequest) -> Reply:
        with self._engine:
            if request.path == "/v1/load_lora_adapter":
                return self._load(request.json())
            if request.path == "/v1/unload_lora_adapter":
                return self._unload(request.json())
            if request.path == "/v1/chat/completions":
                return self._chat(request.json())
        return Reply(404, b"not found\n")

    def adapter_state(self, name: str) -> dict[str, Any]:
        from peft import get_peft_model_state_dict
        with self._engine:
            return get_peft_model_state_dict(self.model, adapter_name=name)

    def _load(self, body: dict[str, Any]) -> Reply:
        from peft import PeftModel
        name, path = body["lora_name"], body["lora_path"]
        if name in self.adapters:
            return _text(400, f"The lora adapter '{name}' has already been loaded.")
        if self.model is None:
            from genevolve.policies.hf import HFPolicy
            self.model = PeftModel.from_pretrained(self.base, path, adapter_name=name)
            self.policy = HFPolicy(model=self.model, tokenizer=self.tokenizer, dtype="float32", **self.policy_options)
        else:
            self.model.load_adapter(path, adapter_name=name)
        self.adapters.append(name)
        self.events.append(("load", name))
        return _text(200, f"Success: LoRA adapter '{name}' added successfully.")

    def _unload(self, body: dict[str, Any]) -> Reply:
        name = body["lora_name"]
        if name not in self.adapters:
            return _text(404, f"The lora adapter '{name}' cannot be found.")
        self.adapters.remove(name)
        if self.adapters:
            self.model.set_adapter(self.adapters[-1])
        self.model.delete_adapter(name)
        self.events.append(("unload", name))
        return _text(200, f"Success: LoRA adapter '{name}' removed successfully.")

    def _chat(self, body: dict[str, Any]) -> Reply:
        from genevolve.policies.base import Sampling
        name = body.get("model")
        if name not in self.adapters:
            return Reply.json({"error": {"message": f"The model `{name}` does not exist."}}, status=404)
        self.model.set_adapter(name)
        self.policy.weights_changed()            # the prefix cache belongs to the previous adapter
        self.events.append(("chat", name))
        sampling = Sampling(temperature=body.get("temperature", 1.0), top_p=body.get("top_p", 1.0),
                            max_tokens=body.get("max_tokens", 64), seed=body.get("seed"), logprobs=True)
        reply = asyncio.run(self.policy.chat(body["messages"], sampling))
        return Reply.json({
            "id": "chatcmpl-fake", "object": "chat.completion", "model": name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                         "token_ids": reply.completion_ids,
                         "logprobs": {"content": [{"token": f"token_id:{i}", "logprob": lp}
                                                  for i, lp in zip(reply.completion_ids, reply.logprobs)]},
                         "finish_reason": reply.finish_reason or "stop"}],
            "prompt_token_ids": reply.prompt_ids,
            "usage": {"prompt_tokens": len(reply.prompt_ids), "completion_tokens": len(reply.completion_ids)}})


def _text(status: int, message: str) -> Reply:
    return Reply(status, message.encode(), {"Content-Type": "text/plain"})
