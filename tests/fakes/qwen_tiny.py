"""A tiny, randomly initialised `QwenImageEditPlusPipeline`, built offline from small configs.

Every component is the real class the released checkpoint uses (QwenImageTransformer2DModel,
AutoencoderKLQwenImage, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer, the Qwen2-VL image
processor, FlowMatchEulerDiscreteScheduler), only with a few dozen thousand weights, so the whole
diffusers path (prompt template, vision tokens, VAE, true CFG, latent packing) runs on a CPU in
seconds. The tokenizer is byte-level BPE with no merges: its vocabulary is the 256 byte symbols
plus the special tokens the pipeline's prompt template uses.

`save_tiny_pipeline(dir)` writes it in the layout of the published checkpoint (model_index.json
names transformers' Qwen2VLProcessor), so `from_pretrained(dir)` exercises the real loading code.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                  "<|video_pad|>"]
TEXT_HIDDEN = 16      # text-encoder width = the transformer's joint_attention_dim
LATENT_CHANNELS = 4


def build_tiny_pipeline(seed: int = 0):
    import torch
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageEditPlusPipeline,
                           QwenImageTransformer2DModel)
    from tokenizers import AddedToken, pre_tokenizers
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from genevolve.generators.qwen_image_edit import image_only_processor_class

    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for token in ["<|endoftext|>", *SPECIAL_TOKENS]:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[])
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
                         special_tokens=True)
    processor = image_only_processor_class()(image_processor=Qwen2VLImageProcessorPil(), tokenizer=tokenizer)

    torch.manual_seed(seed)
    text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=TEXT_HIDDEN, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=4096, bos_token_id=None, eos_token_id=vocab["<|im_end|>"],
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": [1, 1, 2]}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=TEXT_HIDDEN,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[0]),
        image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"], vision_end_token_id=vocab["<|vision_end|>"],
    )).eval()
    # Three temporal-downsample flags make the 8x VAE the pipeline assumes; no res blocks keeps the
    # encoder of the ~1-megapixel reference (the pipeline always encodes references at that size) fast.
    vae = AutoencoderKLQwenImage(base_dim=4, z_dim=LATENT_CHANNELS, dim_mult=[1, 1, 1, 1], num_res_blocks=0,
                                 temperal_downsample=[False, True, True],
                                 latents_mean=[0.0] * LATENT_CHANNELS, latents_std=[1.0] * LATENT_CHANNELS).eval()
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=LATENT_CHANNELS * 4,
                                              out_channels=LATENT_CHANNELS, num_layers=1, attention_head_dim=16,
                                              num_attention_heads=2, joint_attention_dim=TEXT_HIDDEN,
                                              axes_dims_rope=(4, 6, 6)).eval()
    pipe = QwenImageEditPlusPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                                     tokenizer=tokenizer, processor=processor, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_pipeline(pipe, directory: str | Path) -> Path:
    """Save `pipe` as the published checkpoint is laid out (processor listed as Qwen2VLProcessor)."""
    directory = Path(directory)
    pipe.save_pretrained(directory)
    index_path = directory / "model_index.json"
    index = json.loads(index_path.read_text())
    index["processor"] = ["transformers", "Qwen2VLProcessor"]
    index_path.write_text(json.dumps(index, indent=2))
    return directory
