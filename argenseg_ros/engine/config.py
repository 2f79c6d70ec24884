"""The native model's configuration (config.json): backbone, VQ-VAE, token ids, prompt.

No weights and no torch here: the release mapping (`release.py`), the model (`model.py`) and the
trainers all build or read an `ARGenSegConfig`, so it sits below all of them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from transformers import InternVLConfig

from .vqvae import VQVAEConfig

CONFIG_FILE = "config.json"
MODEL_TYPE = "argenseg"

# The prompt of the project's small models: instruction before the image (see TRAINING_NOTES.md).
TEXT_FIRST_PROMPT_TEMPLATE = "<|im_start|>user\n{instruction}\n{image}<|im_end|>\n<|im_start|>assistant\n"


# How a model reads its inputs and writes its masks: properties of the trained weights, so fields of
# config.json (docs/ARGENSEG_8B.md lists where each rule comes from). The dataclass defaults are
# the reference release's rules; the shipped tabletop model stores the project's older ones.
GE_START_BARE = "token"                          # reference: <ge_start> slot = its token embedding only
GE_START_WITH_LEVEL_AND_POSITION = "token+lvl_embed[0]+pos_1LC[0]"   # the shipped tabletop model's rule
GE_START_SLOT_RULES = (GE_START_BARE, GE_START_WITH_LEVEL_AND_POSITION)
RESIZE_PIL_BICUBIC = "pil_bicubic"               # reference: PIL BICUBIC (antialiased) of the PIL image
RESIZE_CV2_CUBIC = "cv2_cubic"                   # the project's trainer: cv2.INTER_CUBIC
IMAGE_RESIZE_RULES = (RESIZE_PIL_BICUBIC, RESIZE_CV2_CUBIC)
MASK_PIL_LUMA_UINT8 = "pil_luma_uint8"           # reference eval: uint8, PIL BILINEAR resize, convert('L')
MASK_CHANNEL_MEAN = "channel_mean"               # the project's: float channel mean, cv2 bilinear resize
MASK_POSTPROCESSING_RULES = (MASK_PIL_LUMA_UINT8, MASK_CHANNEL_MEAN)


class ModelLoadError(RuntimeError):
    """A model directory is missing, incomplete, or does not match its config."""


@dataclass
class ARGenSegConfig:
    backbone: dict[str, Any]              # InternVLConfig.to_dict()
    vqvae: dict[str, Any]                 # VQVAEConfig.to_dict()
    token_ids: dict[str, int]             # see tokenization.TOKEN_ID_KEYS, plus "visual_offset"
    prompt_template: str                  # {system}, {image}, {instruction}
    system_prompt: str
    name: str = "argenseg"
    extra: dict[str, Any] = field(default_factory=dict)  # provenance (training command, seed, ...)
    bos_token_id: int | None = None       # prepended to every prompt (the release's <s> = 1); None: none
    image_resize: str = RESIZE_PIL_BICUBIC
    ge_start_slot_embedding: str = GE_START_BARE
    mask_postprocessing: str = MASK_PIL_LUMA_UINT8

    def __post_init__(self) -> None:
        for name, allowed in (("image_resize", IMAGE_RESIZE_RULES), ("ge_start_slot_embedding", GE_START_SLOT_RULES),
                              ("mask_postprocessing", MASK_POSTPROCESSING_RULES)):
            if getattr(self, name) not in allowed:
                raise ModelLoadError(f"config.json: {name} {getattr(self, name)!r} is not one of {list(allowed)}")
        if self.bos_token_id is not None and not isinstance(self.bos_token_id, int):
            raise ModelLoadError(f"config.json: bos_token_id must be an integer or null, got {self.bos_token_id!r}")

    def backbone_config(self) -> InternVLConfig:
        return InternVLConfig.from_dict(self.backbone)

    def vqvae_config(self) -> VQVAEConfig:
        return VQVAEConfig.from_dict(self.vqvae)

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": MODEL_TYPE, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ARGenSegConfig":
        data = dict(data)
        if data.pop("model_type", MODEL_TYPE) != MODEL_TYPE:
            raise ModelLoadError(f"config.json is not an {MODEL_TYPE} config")
        return cls(**data)


def format_prompt(config: ARGenSegConfig, instruction: str, num_image_tokens: int) -> str:
    """The model's prompt text; {image} becomes <img><IMG_CONTEXT>*N</img> (training uses it too)."""
    image = "<img>" + "<IMG_CONTEXT>" * num_image_tokens + "</img>"
    return config.prompt_template.format(system=config.system_prompt, image=image, instruction=instruction)


def prompt_token_ids(config: ARGenSegConfig, tokenizer: Any, instruction: str, num_image_tokens: int) -> list[int]:
    """The prompt's ids: the config's BOS (if any), then the prompt text without the tokenizer's own
    special-token additions (the config, not the tokenizer file, says whether a BOS comes first)."""
    ids = tokenizer(format_prompt(config, instruction, num_image_tokens), add_special_tokens=False)["input_ids"]
    return ([config.bos_token_id] if config.bos_token_id is not None else []) + list(ids)


def build_config(token_ids: dict[str, int], vocab_size: int, vqvae: VQVAEConfig, *, image_size: int = 224,
                 patch_size: int = 14, vision_hidden: int = 192, vision_layers: int = 4, vision_heads: int = 3,
                 text_hidden: int = 256, text_layers: int = 6, text_heads: int = 4, text_kv_heads: int = 4,
                 text_intermediate: int = 768, prompt_template: str = TEXT_FIRST_PROMPT_TEMPLATE,
                 system_prompt: str = "", name: str = "argenseg",
                 ge_start_slot_embedding: str = GE_START_BARE,
                 mask_postprocessing: str = MASK_PIL_LUMA_UINT8) -> ARGenSegConfig:
    """Config of an ARGenSeg of any size: InternVL vision tower + pixel shuffle + Llama text model.

    The project's models have no BOS and are trained on cv2-resized images (`image_to_pixel_values`'
    default, which tabletop/training.py uses); the `<ge_start>` slot and the mask post-processing
    follow the reference unless told otherwise."""
    if (image_size // patch_size) % 2:
        raise ValueError("image_size / patch_size must be even for the 0.5 pixel shuffle")
    num_image_tokens = (image_size // patch_size // 2) ** 2
    backbone = InternVLConfig(
        vision_config=dict(
            model_type="internvl_vision", hidden_size=vision_hidden, num_hidden_layers=vision_layers,
            num_attention_heads=vision_heads, intermediate_size=4 * vision_hidden,
            image_size=[image_size, image_size], patch_size=[patch_size, patch_size],
            use_mean_pooling=False, layer_scale_init_value=0.1),
        text_config=dict(
            model_type="llama", hidden_size=text_hidden, num_hidden_layers=text_layers,
            num_attention_heads=text_heads, num_key_value_heads=text_kv_heads,
            intermediate_size=text_intermediate, vocab_size=vocab_size, max_position_embeddings=4096,
            rms_norm_eps=1e-5, tie_word_embeddings=False, pad_token_id=token_ids["pad"],
            eos_token_id=token_ids["eos"]),
        image_token_id=token_ids["img_context"], image_seq_length=num_image_tokens,
        downsample_ratio=0.5, tie_word_embeddings=False)
    return ARGenSegConfig(backbone=backbone.to_dict(), vqvae=vqvae.to_dict(), token_ids=dict(token_ids),
                          prompt_template=prompt_template, system_prompt=system_prompt, name=name,
                          bos_token_id=None, image_resize=RESIZE_CV2_CUBIC,
                          ge_start_slot_embedding=ge_start_slot_embedding, mask_postprocessing=mask_postprocessing)
