"""The released ARGenSeg-8B: its constants (ids, vocabulary, prompt, config.json numbers) and the
mapping of its internvl_chat config.json onto the native `ARGenSegConfig`.

One place for what the conversion writes and what random-weight benchmarks of the release build.
"""

from __future__ import annotations

from typing import Any

from transformers import InternVLConfig

from .config import GE_START_BARE, MASK_PIL_LUMA_UINT8, RESIZE_PIL_BICUBIC, ARGenSegConfig
from .vqvae import VQVAEConfig

# The release's InternVL2.5 chat prompt; {image} expands to <img><IMG_CONTEXT>*N</img>.
INTERNVL_SYSTEM = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
RELEASE_PROMPT_TEMPLATE = (
    "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{image}\n"
    "Given the following instructions: {instruction}; please perform referring segmentation on this "
    "image.<|im_end|>\n<|im_start|>assistant\n"
)

# The ids of the release (InternVL2.5 vocabulary ends at 92552; ARGenSeg appends its tokens).
RELEASE_VOCAB_SIZE = 96653
RELEASE_BOS_ID = 1   # InternLM2's <s>: its tokenizer adds it (add_bos_token), ARGenSeg's training prepends it
RELEASE_TOKEN_IDS: dict[str, int] = {
    "pad": 92542, "eos": 92542, "img_start": 92544, "img_end": 92545, "img_context": 92546,
    "mask": 92553, "ge_start": 92554, "ge_end": 92555, "mask_context": 92556, "visual_offset": 92557,
}
# The parts of the release's config.json that conversion reads (InternVL2.5-8B numbers).
RELEASE_OFFICIAL_CONFIG: dict[str, Any] = {
    "model_type": "internvl_chat", "template": "internvl2_5", "downsample_ratio": 0.5,
    "force_image_size": 448, "select_layer": -1, "ps_version": "v2",
    "vision_config": {
        "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096,
        "qkv_bias": True, "qk_normalization": False, "norm_type": "layer_norm", "layer_norm_eps": 1e-6,
        "image_size": 448, "patch_size": 14, "hidden_act": "gelu", "initializer_factor": 0.1,
    },
    "llm_config": {
        "architectures": ["InternLM2ForCausalLM"], "hidden_size": 4096, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
        "rms_norm_eps": 1e-5, "rope_theta": 1000000, "max_position_embeddings": 32768,
        "rope_scaling": {"type": "dynamic", "factor": 2.0}, "vocab_size": RELEASE_VOCAB_SIZE,
        "hidden_act": "silu", "bias": False, "bos_token_id": 1,
    },
}

# InternVL2.5's chat format (template "internvl2_5"): ChatML with InternVL's default system message.
INTERNVL2_5_CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system_message = messages[0]['content'] -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set system_message = '" + INTERNVL_SYSTEM + "' -%}{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{{ '<|im_start|>system\\n' + system_message + '<|im_end|>\\n' }}"
    "{%- for message in loop_messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


class ConversionError(RuntimeError):
    """The official checkpoint is incomplete, inconsistent, or not the expected layout."""




def _pair(value: Any) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def _need(section: dict[str, Any], key: str, where: str) -> Any:
    if key not in section:
        raise ConversionError(f"config.json: {where} has no {key!r}")
    return section[key]


def backbone_config_from_official(official: dict[str, Any], vocab_size: int,
                                  token_ids: dict[str, int]) -> InternVLConfig:
    """InternVLConfig (InternViT + pixel shuffle + Llama) equivalent to an internvl_chat config.json."""
    vision = official.get("vision_config")
    llm = official.get("llm_config")
    if not isinstance(vision, dict) or not isinstance(llm, dict):
        raise ConversionError("config.json lacks 'vision_config' / 'llm_config' (not an internvl_chat checkpoint?)")
    archs = llm.get("architectures") or ["InternLM2ForCausalLM"]
    if not any("InternLM2" in a for a in archs):
        raise ConversionError(f"llm_config architectures {archs}: only InternLM2 LLMs are supported")
    if official.get("ps_version", "v2") != "v2":
        raise ConversionError(f"ps_version {official.get('ps_version')!r}: only pixel shuffle 'v2' is supported")
    image_size = _pair(official.get("force_image_size") or _need(vision, "image_size", "vision_config"))
    patch = _pair(_need(vision, "patch_size", "vision_config"))
    ratio = float(official.get("downsample_ratio", 0.5))
    side = image_size // patch
    if side * patch != image_size or int(side * ratio) != side * ratio:
        raise ConversionError(f"image size {image_size}, patch {patch}, downsample {ratio} do not tile")
    hidden = int(_need(llm, "hidden_size", "llm_config"))
    heads = int(_need(llm, "num_attention_heads", "llm_config"))
    kv_heads = int(llm.get("num_key_value_heads", heads))
    if hidden % heads or heads % kv_heads:
        raise ConversionError(f"llm_config: hidden {hidden}, heads {heads}, kv heads {kv_heads} are inconsistent")
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": float(llm.get("rope_theta", 10000.0))}
    scaling = llm.get("rope_scaling")
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind not in ("dynamic", "linear"):
            raise ConversionError(f"llm_config rope_scaling type {kind!r} is not supported")
        rope.update(rope_type=kind, factor=float(scaling["factor"]))
    text_config = dict(
        model_type="llama", hidden_size=hidden, num_hidden_layers=int(_need(llm, "num_hidden_layers", "llm_config")),
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads,
        intermediate_size=int(_need(llm, "intermediate_size", "llm_config")), vocab_size=int(vocab_size),
        max_position_embeddings=int(llm.get("max_position_embeddings", 32768)),
        rms_norm_eps=float(llm.get("rms_norm_eps", 1e-6)), rope_parameters=rope,
        hidden_act=llm.get("hidden_act", "silu"), attention_bias=bool(llm.get("bias", False)),
        mlp_bias=False, tie_word_embeddings=False, bos_token_id=int(llm.get("bos_token_id", 1)),
        pad_token_id=token_ids["pad"], eos_token_id=token_ids["eos"])
    vision_config = dict(
        model_type="internvl_vision", hidden_size=int(_need(vision, "hidden_size", "vision_config")),
        num_hidden_layers=int(_need(vision, "num_hidden_layers", "vision_config")),
        num_attention_heads=int(_need(vision, "num_attention_heads", "vision_config")),
        intermediate_size=int(_need(vision, "intermediate_size", "vision_config")),
        attention_bias=bool(vision.get("qkv_bias", True)), use_qk_norm=bool(vision.get("qk_normalization", False)),
        norm_type=vision.get("norm_type", "layer_norm"), layer_norm_eps=float(vision.get("layer_norm_eps", 1e-6)),
        hidden_act=vision.get("hidden_act", "gelu"), image_size=[image_size, image_size], patch_size=[patch, patch],
        layer_scale_init_value=float(vision.get("initializer_factor", 0.1)),
        # InternViT has no final LayerNorm: with use_mean_pooling the native tower's is an Identity.
        use_mean_pooling=True)
    return InternVLConfig(
        vision_config=vision_config, text_config=text_config, image_token_id=token_ids["img_context"],
        image_seq_length=int((side * ratio) ** 2), downsample_ratio=ratio, projector_hidden_act="gelu",
        vision_feature_layer=int(official.get("select_layer", -1)), vision_feature_select_strategy="default",
        tie_word_embeddings=False)


def config_from_official(official: dict[str, Any], token_ids: dict[str, int], vocab_size: int,
                         vqvae: VQVAEConfig, name: str = "argenseg-8b", extra: dict[str, Any] | None = None,
                         bos_token_id: int | None = RELEASE_BOS_ID) -> ARGenSegConfig:
    """The native config of a release checkpoint, with the reference's input and output rules."""
    backbone = backbone_config_from_official(official, vocab_size, token_ids)
    return ARGenSegConfig(backbone=backbone.to_dict(), vqvae=vqvae.to_dict(), token_ids=dict(token_ids),
                          prompt_template=RELEASE_PROMPT_TEMPLATE, system_prompt=INTERNVL_SYSTEM, name=name,
                          extra=dict(extra or {}), bos_token_id=bos_token_id, image_resize=RESIZE_PIL_BICUBIC,
                          ge_start_slot_embedding=GE_START_BARE, mask_postprocessing=MASK_PIL_LUMA_UINT8)


def argenseg_8b_config(vqvae: VQVAEConfig | None = None) -> ARGenSegConfig:
    """The configuration of the released ARGenSeg-8B (InternVL2.5-8B + VAR tokenizer) exactly as
    `argenseg-convert` writes it for the release: random-weight benchmarks, sizing, tests."""
    return config_from_official(RELEASE_OFFICIAL_CONFIG, dict(RELEASE_TOKEN_IDS), RELEASE_VOCAB_SIZE,
                                vqvae or VQVAEConfig.var_ch160v4096z32(), name="argenseg-8b")
