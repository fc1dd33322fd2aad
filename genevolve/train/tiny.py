"""A tiny randomly initialised chat model, built locally in a second: for tests and smoke runs.

A byte-level BPE tokenizer trained on the protocol's own text (system prompt, tool results,
answers) with ChatML special tokens and template, and a two-layer Llama of a few hundred thousand
weights. Under the protocol grammar its random samples are still well-formed protocol turns, so the
whole loop (agent, rollouts, rewards, GRPO, checkpoints, export) runs end to end with no download.

`tokenizer_from` borrows a real checkpoint's tokenizer instead: llama.cpp's GGUF converter only
accepts tokenizers whose pre-tokenizer it recognises, so tests that go through a GGUF use that.
"""

from __future__ import annotations

import os
from pathlib import Path

CHATML_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
                   " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
                   "{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _corpus() -> list[str]:
    from ..policies.grammar import protocol_tool_schemas
    from ..protocol import build_system_prompt
    texts = [build_system_prompt(protocol_tool_schemas(), inline_skills=inline) for inline in (True, False)]
    texts += ['<think>The fox is named.</think>\n<tool_call>{"name": "image_search", "arguments": '
              '{"query": "red fox"}}</tool_call>',
              '<tool_response>\n[IMG_001] Flag of Australia (emoji)\n[IMG_002] Red apple\n</tool_response>',
              '<answer>{"gen_prompt": "A red apple on the left. The apple looks like the first reference image.", '
              '"reference_images": [{"img_id": "IMG_001", "note": "the apple"}]}</answer>']
    return texts * 4


def build_tiny_checkpoint(out_dir: str | os.PathLike, *, seed: int = 0, hidden: int = 32, layers: int = 2,
                          vocab_size: int = 700, tokenizer_from: str | os.PathLike | None = None) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from) if tokenizer_from else _protocol_tokenizer(vocab_size)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=16384, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=None)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _protocol_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        bos_token=None, unk_token=None)
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer
