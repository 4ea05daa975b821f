"""Tiny twins: the real diffusers Wan pipeline classes built from small configs with seeded random
weights and a tokenizer made in code, so the whole service runs offline on a CPU.

A twin has the architecture of its family (the same pipeline class, the same conditioning paths, the
same latent layout), only narrow and shallow: it exercises every code path and makes noise, not
pictures. Building one takes about a second.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKLWan,
    DiffusionPipeline,
    UniPCMultistepScheduler,
    WanAnimatePipeline,
    WanAnimateTransformer3DModel,
    WanImageToVideoPipeline,
    WanPipeline,
    WanTransformer3DModel,
    WanVACEPipeline,
    WanVACETransformer3DModel,
)
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModel,
    PreTrainedTokenizerFast,
    UMT5Config,
    UMT5EncoderModel,
)

from pipelines.variants import Family

TEXT_DIM = 32
CLIP_DIM = 8
CLIP_IMAGE_SIZE = 32
CLIP_PATCH = 8
CLIP_TOKENS = (CLIP_IMAGE_SIZE // CLIP_PATCH) ** 2 + 1  # patches + class token


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with UMT5's special tokens: any prompt encodes, nothing is downloaded."""
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


def _text_encoder(vocab_size: int) -> UMT5EncoderModel:
    config = UMT5Config(
        vocab_size=vocab_size, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
    )
    return UMT5EncoderModel(config)


def _vae(family: Family) -> AutoencoderKLWan:
    if family is Family.TI2V:  # Wan2.2's 48-channel residual VAE with 2x2 patchification (x16 spatial)
        return AutoencoderKLWan(
            base_dim=3, z_dim=48, in_channels=12, out_channels=12, is_residual=True, patch_size=2,
            latents_mean=[0.0] * 48, latents_std=[1.0] * 48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
            scale_factor_spatial=16, scale_factor_temporal=4, temperal_downsample=[False, True, True],
        )
    return AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )


def _transformer(family: Family) -> WanTransformer3DModel | WanAnimateTransformer3DModel:
    common = dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, text_dim=TEXT_DIM, freq_dim=256,
        ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=1024,
    )
    match family:
        case Family.VACE:
            return WanVACETransformer3DModel(
                in_channels=16, out_channels=16, vace_layers=[0], vace_in_channels=96, **common
            )
        case Family.TI2V:
            return WanTransformer3DModel(in_channels=48, out_channels=48, **common)
        case Family.ANIMATE:  # I2V's inputs, plus a motion encoder over 16 px face crops and a face adapter
            return WanAnimateTransformer3DModel(
                in_channels=36, latent_channels=16, out_channels=16, image_dim=CLIP_DIM,
                motion_encoder_channel_sizes={"4": 8, "8": 8, "16": 8}, motion_encoder_size=16, motion_style_dim=8,
                motion_dim=4, motion_encoder_dim=24, face_encoder_hidden_dim=16, face_encoder_num_heads=2,
                inject_face_latents_blocks=1, motion_encoder_batch_size=4, **common,
            )
        case Family.I2V_A14B:  # noise + mask + image latents; no CLIP image tokens
            return WanTransformer3DModel(in_channels=36, out_channels=16, **common)
        case Family.I2V:  # noise + mask + image latents, and CLIP image tokens in cross-attention
            return WanTransformer3DModel(in_channels=36, out_channels=16, image_dim=CLIP_DIM, **common)
        case Family.FLF2V:  # as I2V, plus a positional embedding over the first and last frames' tokens
            return WanTransformer3DModel(
                in_channels=36, out_channels=16, image_dim=CLIP_DIM, pos_embed_seq_len=2 * CLIP_TOKENS, **common
            )
        case _:
            return WanTransformer3DModel(in_channels=16, out_channels=16, **common)


def _image_encoder() -> tuple[CLIPVisionModel, CLIPImageProcessorPil]:
    config = CLIPVisionConfig(
        hidden_size=CLIP_DIM, projection_dim=CLIP_DIM, num_hidden_layers=2, num_attention_heads=2,
        image_size=CLIP_IMAGE_SIZE, intermediate_size=16, patch_size=CLIP_PATCH,
    )
    processor = CLIPImageProcessorPil(crop_size=CLIP_IMAGE_SIZE, size={"shortest_edge": CLIP_IMAGE_SIZE})
    return CLIPVisionModel(config), processor


def build_tiny_pipeline(family: Family, seed: int = 0) -> DiffusionPipeline:
    """Build the tiny twin of `family`: same seed, same weights, on every machine."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    parts = dict(
        tokenizer=tokenizer,
        text_encoder=_text_encoder(len(tokenizer)),
        vae=_vae(family),
        scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0),
        transformer=_transformer(family),
    )
    match family:
        case Family.I2V | Family.FLF2V:
            image_encoder, image_processor = _image_encoder()
            pipe = WanImageToVideoPipeline(**parts, image_encoder=image_encoder, image_processor=image_processor)
        case Family.VACE:
            pipe = WanVACEPipeline(**parts)
        case Family.TI2V:
            pipe = WanPipeline(**parts, expand_timesteps=True)
        case Family.A14B:
            pipe = WanPipeline(**parts, transformer_2=_transformer(family), boundary_ratio=0.875)
        case Family.ANIMATE:
            image_encoder, image_processor = _image_encoder()
            pipe = WanAnimatePipeline(**parts, image_encoder=image_encoder, image_processor=image_processor)
        case Family.I2V_A14B:
            pipe = WanImageToVideoPipeline(**parts, transformer_2=_transformer(family), boundary_ratio=0.9)
        case _:
            pipe = WanPipeline(**parts)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()  # modules built from a config start in training mode, with live dropout
    return pipe
