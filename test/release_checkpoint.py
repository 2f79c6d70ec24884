"""A synthetic ARGenSeg checkpoint in the release's own format, and references computed directly
from its (packed) weights; shared by test_conversion.py and test_fidelity_release.py.

With tiny sizes and random weights it holds exactly what the release ships: InternVL's
internvl_chat config.json, safetensors shards + model.safetensors.index.json with the release's key
names (InternViT `attn.qkv`, `mlp1.{0,1,3}`, InternLM2 packed `attention.wqkv`, `word_embed`,
`pos_1LC`, `lvl_embed`, `image_tokenizer.*`), a sentencepiece BPE `tokenizer.model` (trained by the
sentencepiece library, InternLM2's user-defined chat pieces appended) and a tokenizer_config.json
whose added tokens follow the release's layout (InternVL tokens, then <mask> <ge_start> <ge_end>
<MASK_CONTEXT>, then the visual tokens).
"""

from __future__ import annotations

import functools
import io
import json
import math
from pathlib import Path

import sentencepiece
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from sentencepiece import sentencepiece_model_pb2

from argenseg_ros.engine.tokenization import visual_token
from argenseg_ros.engine.vqvae import MultiScaleVQVAE, VQVAEConfig

TINY_VQ = VQVAEConfig(vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                      patch_nums=(1, 2, 4), image_size=8, share_quant_resi=2)
VIS = dict(hidden=32, layers=2, heads=2, inter=64, image=56, patch=14)
LLM = dict(hidden=64, layers=2, heads=4, kv=2, inter=96, theta=10000.0, eps=1e-5)

# InternVL's added tokens (after the sentencepiece vocabulary), then ARGenSeg's.
INTERNVL_ADDED = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
ARGENSEG_ADDED = ["<mask>", "<ge_start>", "<ge_end>", "<MASK_CONTEXT>"]


# ---- a sentencepiece model trained by the sentencepiece library ----------------------------------

CORPUS = ["hello world", "the red cup", "segment the red cup", "hello, the world: red; cup.",
          "a mug on the table", "segment the mug; hello world."] * 20
INTERNLM2_USER_DEFINED = ["<|plugin|>", "<|action_start|>", "<|im_end|>", "<|im_start|>"]


@functools.cache
def _trained_spm(add_dummy_prefix: bool = False, remove_extra_whitespaces: bool = True) -> bytes:
    """A small byte-fallback BPE model, trained deterministically (one thread) on CORPUS, with the
    two normaliser flags the reference's tokenizer honours (sentencepiece's defaults: both true)."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, model_type="bpe", vocab_size=340, byte_fallback=True,
        character_coverage=1.0, normalization_rule_name="identity", add_dummy_prefix=add_dummy_prefix,
        remove_extra_whitespaces=remove_extra_whitespaces, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1, minloglevel=2)
    return model.getvalue()


def spm_model(filler: int = 0, **flags: bool) -> sentencepiece_model_pb2.ModelProto:
    """<unk> <s> </s>, 256 byte pieces, the trained merges and chars, [filler], then InternLM2's
    user-defined chat tokens at the end of the sentencepiece vocabulary (InternLM2 has <|im_end|> at
    92542 and <|im_start|> at 92543: the last two pieces)."""
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(_trained_spm(**flags))
    piece_type = sentencepiece_model_pb2.ModelProto.SentencePiece
    low = min(p.score for p in proto.pieces)
    for i in range(filler):
        proto.pieces.add(piece=f"▁filler{i}", score=low - 1.0 - i, type=piece_type.NORMAL)
    for name in INTERNLM2_USER_DEFINED:
        proto.pieces.add(piece=name, score=0.0, type=piece_type.USER_DEFINED)
    proto.trainer_spec.vocab_size = len(proto.pieces)
    return proto


SPM_SIZE = len(spm_model().pieces)


def write_tokenizer(directory: Path, codebook: int, filler: int = 0, add_bos_token: bool | None = None,
                    **flags: bool) -> dict[str, int]:
    """tokenizer.model + tokenizer_config.json; `add_bos_token` None leaves it out (InternLM2's default: true)."""
    proto = spm_model(filler, **flags)
    (directory / "tokenizer.model").write_bytes(proto.SerializeToString())
    n = len(proto.pieces)
    added = INTERNVL_ADDED + ARGENSEG_ADDED + [visual_token(i) for i in range(codebook)]
    decoder = {str(i): {"content": p.piece, "special": True, "lstrip": False, "rstrip": False, "normalized": False,
                        "single_word": False} for i, p in enumerate(proto.pieces) if p.type in (2, 3, 4)}
    for k, content in enumerate(added):
        decoder[str(n + k)] = {"content": content, "special": True, "lstrip": False, "rstrip": False,
                               "normalized": False, "single_word": False}
    config = {"tokenizer_class": "InternLM2Tokenizer", "added_tokens_decoder": decoder, "bos_token": "<s>",
              "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>", "model_max_length": 8192}
    if add_bos_token is not None:
        config["add_bos_token"] = add_bos_token
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return {content: n + k for k, content in enumerate(added)} | {"<|im_end|>": n - 2, "<|im_start|>": n - 1}


# ---- the synthetic official checkpoint -----------------------------------------------------------

def official_state(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.05):
        return torch.randn(*shape, generator=g) * scale

    C, inter = VIS["hidden"], VIS["inter"]
    n_patch = (VIS["image"] // VIS["patch"]) ** 2
    sd = {
        "vision_model.embeddings.class_embedding": r(1, 1, C, scale=1.0),
        "vision_model.embeddings.position_embedding": r(1, n_patch + 1, C, scale=1.0),
        "vision_model.embeddings.patch_embedding.weight": r(C, 3, VIS["patch"], VIS["patch"]),
        "vision_model.embeddings.patch_embedding.bias": r(C),
    }
    for i in range(VIS["layers"]):
        p = f"vision_model.encoder.layers.{i}."
        sd |= {p + "attn.qkv.weight": r(3 * C, C, scale=0.2), p + "attn.qkv.bias": r(3 * C),
               p + "attn.proj.weight": r(C, C, scale=0.2), p + "attn.proj.bias": r(C),
               p + "ls1": 0.5 + r(C), p + "ls2": 0.5 + r(C),
               p + "norm1.weight": 1 + r(C), p + "norm1.bias": r(C), p + "norm2.weight": 1 + r(C),
               p + "norm2.bias": r(C), p + "mlp.fc1.weight": r(inter, C, scale=0.2), p + "mlp.fc1.bias": r(inter),
               p + "mlp.fc2.weight": r(C, inter, scale=0.2), p + "mlp.fc2.bias": r(C)}
    H, D = LLM["hidden"], 4 * C
    sd |= {"mlp1.0.weight": 1 + r(D), "mlp1.0.bias": r(D), "mlp1.1.weight": r(H, D, scale=0.1), "mlp1.1.bias": r(H),
           "mlp1.3.weight": r(H, H, scale=0.1), "mlp1.3.bias": r(H)}
    hd = H // LLM["heads"]
    sd["language_model.model.tok_embeddings.weight"] = r(vocab, H, scale=1.0)
    for i in range(LLM["layers"]):
        p = f"language_model.model.layers.{i}."
        sd |= {p + "attention.wqkv.weight": r((LLM["heads"] + 2 * LLM["kv"]) * hd, H, scale=0.2),
               p + "attention.wo.weight": r(H, H, scale=0.2),
               p + "feed_forward.w1.weight": r(LLM["inter"], H, scale=0.2),
               p + "feed_forward.w3.weight": r(LLM["inter"], H, scale=0.2),
               p + "feed_forward.w2.weight": r(H, LLM["inter"], scale=0.2),
               p + "attention_norm.weight": 1 + r(H), p + "ffn_norm.weight": 1 + r(H)}
    sd["language_model.model.norm.weight"] = 1 + r(H)
    sd["language_model.output.weight"] = r(vocab, H, scale=0.2)
    L = sum(pn * pn for pn in TINY_VQ.patch_nums)
    sd |= {"word_embed.weight": r(H, TINY_VQ.z_channels), "word_embed.bias": r(H), "pos_1LC": r(1, L, H),
           "lvl_embed.weight": r(len(TINY_VQ.patch_nums), H)}
    torch.manual_seed(seed)
    for k, v in MultiScaleVQVAE(TINY_VQ).state_dict().items():
        sd["image_tokenizer." + k] = v.clone()
    return sd


def official_config(vocab: int) -> dict:
    return {
        "architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "template": "internvl2_5",
        "downsample_ratio": 0.5, "force_image_size": VIS["image"], "select_layer": -1, "ps_version": "v2",
        "dynamic_image_size": False, "use_thumbnail": False,
        "vision_config": {"architectures": ["InternVisionModel"], "hidden_size": VIS["hidden"],
                          "num_hidden_layers": VIS["layers"], "num_attention_heads": VIS["heads"],
                          "intermediate_size": VIS["inter"], "qkv_bias": True, "qk_normalization": False,
                          "norm_type": "layer_norm", "layer_norm_eps": 1e-6, "image_size": VIS["image"],
                          "patch_size": VIS["patch"], "hidden_act": "gelu", "initializer_factor": 0.1},
        "llm_config": {"architectures": ["InternLM2ForCausalLM"], "hidden_size": LLM["hidden"],
                       "num_hidden_layers": LLM["layers"], "num_attention_heads": LLM["heads"],
                       "num_key_value_heads": LLM["kv"], "intermediate_size": LLM["inter"],
                       "rms_norm_eps": LLM["eps"], "rope_theta": LLM["theta"], "max_position_embeddings": 2048,
                       "rope_scaling": {"type": "dynamic", "factor": 2.0}, "vocab_size": vocab,
                       "hidden_act": "silu", "bias": False},
    }


def write_official(directory: Path, with_vqvae: bool = True, n_shards: int = 3, mutate=None,
                   **spm_flags: bool) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    directory.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer(directory, TINY_VQ.vocab_size, **spm_flags)
    vocab = max(ids.values()) + 1
    sd = official_state(vocab)
    if not with_vqvae:
        sd = {k: v for k, v in sd.items() if not k.startswith("image_tokenizer.")}
    if mutate:
        mutate(sd)
    (directory / "config.json").write_text(json.dumps(official_config(vocab)))
    keys = list(sd)
    weight_map = {}
    for s in range(n_shards):
        name = f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {k: sd[k].contiguous() for k in keys[s::n_shards]}
        save_file(part, str(directory / name), metadata={"format": "pt"})
        weight_map |= {k: name for k in part}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return sd, ids



# ---- references computed directly from the official weights ----------------------------------

def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rope(x, pos, theta):
    hd = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    ang = pos[:, None].float() * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def internlm2_attention(sd, layer, h):
    """InternLM2 attention from the packed wqkv: (B, T, C) normed input -> (B, T, C)."""
    B, T, C = h.shape
    nh, kv = LLM["heads"], LLM["kv"]
    g, hd = nh // kv, C // nh
    qkv = h @ sd[f"language_model.model.layers.{layer}.attention.wqkv.weight"].T
    qkv = qkv.view(B, T, kv, g + 2, hd)
    q = qkv[:, :, :, :g].reshape(B, T, nh, hd).transpose(1, 2)
    k = qkv[:, :, :, g].transpose(1, 2)
    v = qkv[:, :, :, g + 1].transpose(1, 2)
    pos = torch.arange(T)
    q, k = _rope(q, pos, LLM["theta"]), _rope(k, pos, LLM["theta"])
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C)
    return out @ sd[f"language_model.model.layers.{layer}.attention.wo.weight"].T


def internlm2_forward(sd, x):
    for i in range(LLM["layers"]):
        p = f"language_model.model.layers.{i}."
        x = x + internlm2_attention(sd, i, _rms(x, sd[p + "attention_norm.weight"], LLM["eps"]))
        h = _rms(x, sd[p + "ffn_norm.weight"], LLM["eps"])
        x = x + (F.silu(h @ sd[p + "feed_forward.w1.weight"].T) * (h @ sd[p + "feed_forward.w3.weight"].T)) \
            @ sd[p + "feed_forward.w2.weight"].T
    return _rms(x, sd["language_model.model.norm.weight"], LLM["eps"])


def internvit_features(sd, pixels):
    """InternViT (no final norm) -> drop CLS -> pixel shuffle v2 -> mlp1."""
    C, nh = VIS["hidden"], VIS["heads"]
    x = F.conv2d(pixels, sd["vision_model.embeddings.patch_embedding.weight"],
                 sd["vision_model.embeddings.patch_embedding.bias"], stride=VIS["patch"])
    B, _, h, w = x.shape
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["vision_model.embeddings.class_embedding"].expand(B, 1, C), x], 1)
    x = x + sd["vision_model.embeddings.position_embedding"]
    for i in range(VIS["layers"]):
        p = f"vision_model.encoder.layers.{i}."
        y = F.layer_norm(x, (C,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-6)
        qkv = (y @ sd[p + "attn.qkv.weight"].T + sd[p + "attn.qkv.bias"]).view(B, -1, 3, nh, C // nh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-1, -2)) / math.sqrt(C // nh)).softmax(-1) @ v
        a = a.transpose(1, 2).reshape(B, -1, C) @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        x = x + sd[p + "ls1"] * a
        y = F.layer_norm(x, (C,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-6)
        y = F.gelu(y @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"]) @ sd[p + "mlp.fc2.weight"].T
        x = x + sd[p + "ls2"] * (y + sd[p + "mlp.fc2.bias"])
    x = x[:, 1:].reshape(B, h, w, C)
    # InternVL pixel_shuffle, ps_version v2
    n, W, Hh, c = x.shape
    x = x.view(n, W, Hh // 2, c * 2).permute(0, 2, 1, 3).contiguous()
    x = x.view(n, Hh // 2, W // 2, c * 4).permute(0, 2, 1, 3).reshape(n, -1, c * 4)
    x = F.layer_norm(x, (4 * C,), sd["mlp1.0.weight"], sd["mlp1.0.bias"], 1e-5)
    x = F.gelu(x @ sd["mlp1.1.weight"].T + sd["mlp1.1.bias"])
    return x @ sd["mlp1.3.weight"].T + sd["mlp1.3.bias"]
