"""argenseg-convert on a synthetic checkpoint in the release's format (test/release_checkpoint.py):
names, shapes, the packed attention, the vision path and the tokenizer, checked against forwards
and encodings computed directly from the official files.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import sentencepiece
import torch
from release_checkpoint import (
    CORPUS,
    LLM,
    SPM_SIZE,
    TINY_VQ,
    VIS,
    internlm2_attention,
    internlm2_forward,
    internvit_features,
    spm_model,
    write_official,
    write_tokenizer,
)
from safetensors.torch import load_file

from argenseg_ros.engine import conversion
from argenseg_ros.engine.conversion import ConversionError, convert_checkpoint, convert_tokenizer, split_wqkv
from argenseg_ros.engine.model import (
    ARGenSegModel,
    ModelLoadError,
    ShardedSafetensorsWriter,
    random_model,
    weight_files,
)
from argenseg_ros.engine.release import RELEASE_TOKEN_IDS, RELEASE_VOCAB_SIZE, argenseg_8b_config
from argenseg_ros.engine.tokenization import visual_token
from argenseg_ros.engine.vqvae import MultiScaleVQVAE


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("conv")
    sd, ids = write_official(root / "official")
    summary = convert_checkpoint(root / "official", root / "native", dtype="float32", shard_size_gb=0.0003,
                                 vqvae_config=TINY_VQ, log=None)
    model, tokenizer = ARGenSegModel.from_pretrained(root / "native")
    return root, sd, ids, summary, model, tokenizer


# ---- tests ---------------------------------------------------------------------------------------

def test_every_key_is_mapped_with_the_right_shape(converted):
    root, sd, ids, summary, model, _ = converted
    native = {}
    for f in weight_files(root / "native"):
        native |= load_file(str(f))
    assert set(native) == set(model.state_dict())
    assert len(weight_files(root / "native")) > 1 and (root / "native" / "model.safetensors.index.json").is_file()
    n_extra = 2 * (2 * VIS["layers"]) + 2 * LLM["layers"]   # each qkv weight/bias / wqkv -> three tensors
    assert summary["tensors"] == len(sd) + n_extra == len(native)
    T = "backbone.model.language_model."
    assert torch.equal(native[T + "embed_tokens.weight"], sd["language_model.model.tok_embeddings.weight"])
    assert torch.equal(native["backbone.lm_head.weight"], sd["language_model.output.weight"])
    assert torch.equal(native[T + "layers.1.mlp.gate_proj.weight"], sd["language_model.model.layers.1.feed_forward.w1.weight"])
    assert torch.equal(native[T + "layers.1.mlp.up_proj.weight"], sd["language_model.model.layers.1.feed_forward.w3.weight"])
    assert torch.equal(native[T + "layers.1.mlp.down_proj.weight"], sd["language_model.model.layers.1.feed_forward.w2.weight"])
    assert torch.equal(native["backbone.model.vision_tower.encoder.layer.1.lambda_2"], sd["vision_model.encoder.layers.1.ls2"])
    assert torch.equal(native["backbone.model.multi_modal_projector.linear_2.weight"], sd["mlp1.3.weight"])
    for key in ("word_embed.weight", "word_embed.bias", "pos_1LC", "lvl_embed.weight"):
        assert torch.equal(native[key], sd[key])
    for key, value in sd.items():
        if key.startswith("image_tokenizer."):
            assert torch.equal(native["vqvae." + key[len("image_tokenizer."):]], value)
    assert "backbone.model.vision_tower.layernorm.weight" not in native  # InternViT has no final norm


def test_converted_attention_matches_packed_wqkv(converted):
    _, sd, _, _, model, _ = converted
    lm = model.backbone.model.language_model
    x = torch.randn(2, 7, LLM["hidden"])
    seen = {}
    hook = lm.layers[0].self_attn.register_forward_hook(
        lambda mod, args, kwargs, out: seen.update(inp=kwargs["hidden_states"], out=out[0]), with_kwargs=True)
    with torch.no_grad():
        hidden = lm(inputs_embeds=x, position_ids=torch.arange(7)[None].expand(2, 7)).last_hidden_state
    hook.remove()
    ref_attn = internlm2_attention(sd, 0, seen["inp"])
    torch.testing.assert_close(seen["out"], ref_attn, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(hidden, internlm2_forward(sd, x), atol=1e-4, rtol=1e-4)
    # the split itself: q heads of KV group j are heads j*g .. j*g+g-1
    q, k, v = split_wqkv(sd["language_model.model.layers.0.attention.wqkv.weight"], LLM["heads"], LLM["kv"])
    hd = LLM["hidden"] // LLM["heads"]
    packed = sd["language_model.model.layers.0.attention.wqkv.weight"]
    assert torch.equal(q[3 * hd:4 * hd], packed[(4 + 1) * hd:(4 + 2) * hd])  # group 1, its 2nd query head
    assert torch.equal(k[hd:], packed[(4 + 2) * hd:(4 + 3) * hd]) and torch.equal(v[hd:], packed[(4 + 3) * hd:])


def test_converted_vision_path_matches_internvit(converted):
    _, sd, _, _, model, _ = converted
    pixels = torch.randn(2, 3, VIS["image"], VIS["image"])
    with torch.no_grad():
        ours = model.image_features(pixels)
    assert ours.shape == (2, model.num_image_tokens, LLM["hidden"])
    torch.testing.assert_close(ours, internvit_features(sd, pixels), atol=1e-4, rtol=1e-4)


def test_tokenizer_keeps_every_id_and_the_release_prompt(converted):
    root, _, ids, _, model, tokenizer = converted
    for content, token_id in ids.items():
        assert tokenizer.convert_tokens_to_ids(content) == token_id, content
    n = SPM_SIZE
    t = model.config.token_ids
    assert (t["img_start"], t["img_context"], t["mask"], t["ge_start"], t["visual_offset"]) == (n, n + 2, n + 9, n + 10, n + 13)
    assert t["eos"] == t["pad"] == n - 2      # <|im_end|>; no pad token in the release vocabulary
    assert len(tokenizer) == model.vocab_size == t["visual_offset"] + TINY_VQ.vocab_size
    prompt = model.build_prompt("the red cup")
    enc = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert enc.count(t["img_context"]) == model.num_image_tokens
    assert enc[0] == ids["<|im_start|>"] and enc.count(t["eos"]) == 2
    assert tokenizer.decode(enc) == prompt
    assert tokenizer.tokenize("hello world") == ["hello", "▁world"]
    spm = sentencepiece.SentencePieceProcessor(model_file=str(root / "official" / "tokenizer.model"))
    for text in ("hello world", "segment the mug; hello, the red cup.", "héllo wörld 日本", "hi<|im_end|>\n<|im_start|>x"):
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == spm.encode(text), text   # as sentencepiece
    assert tokenizer.decode(tokenizer("héllo, the red cup")["input_ids"]) == "héllo, the red cup"  # byte fallback
    assert tokenizer.convert_tokens_to_ids(visual_token(5)) == t["visual_offset"] + 5
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat.startswith("<|im_start|>system\n你是书生·万象") and chat.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert model.config.prompt_template.startswith("<|im_start|>system\n{system}")


def test_unusable_tokenizer_models_are_refused(tmp_path):
    write_tokenizer(tmp_path, 4)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=model, model_type="unigram",
                                             vocab_size=30, num_threads=1, minloglevel=2)
    (tmp_path / "tokenizer.model").write_bytes(model.getvalue())
    with pytest.raises(ConversionError, match="UNIGRAM model; the Llama tokenizer needs BPE"):
        convert_tokenizer(tmp_path, 4)
    (tmp_path / "tokenizer.model").write_bytes(b"\xff\xff\xff not a model")
    with pytest.raises(ConversionError, match="not a sentencepiece model|no sentencepiece pieces"):
        convert_tokenizer(tmp_path, 4)
    proto = spm_model()
    proto.pieces.add(piece="hello", score=-1.0, type=proto.SentencePiece.NORMAL)
    (tmp_path / "tokenizer.model").write_bytes(proto.SerializeToString())
    with pytest.raises(ConversionError, match="holds piece 'hello' twice"):
        convert_tokenizer(tmp_path, 4)


def test_release_token_ids_survive_conversion(tmp_path):
    """The real id layout: 92544 sentencepiece pieces, <mask> = 92553, visual tokens from 92557."""
    filler = 92544 - SPM_SIZE
    ids = write_tokenizer(tmp_path, 4096, filler=filler)
    converted = convert_tokenizer(tmp_path, 4096)
    tokenizer, token_ids = converted.tokenizer, converted.token_ids
    assert token_ids == RELEASE_TOKEN_IDS
    assert len(tokenizer) == RELEASE_VOCAB_SIZE
    for content in ("<|im_end|>", "<IMG_CONTEXT>", "<ge_end>", visual_token(0), visual_token(4095)):
        assert tokenizer.convert_tokens_to_ids(content) == ids[content]


def test_converted_model_generates_and_stores_bf16(converted, tmp_path):
    import numpy as np

    from argenseg_ros.engine.segmenter import Segmenter

    root, *_ = converted
    convert_checkpoint(root / "official", tmp_path / "bf16", vqvae_config=TINY_VQ, log=None)   # default bfloat16
    (f,) = weight_files(tmp_path / "bf16")
    assert load_file(str(f))["pos_1LC"].dtype == torch.bfloat16
    seg = Segmenter.from_pretrained(str(tmp_path / "bf16"), max_new_tokens=3)
    res = seg.segment(np.zeros((20, 30, 3), np.uint8), "the red cup")
    assert isinstance(res.reply, str)


def test_vqvae_from_pth_via_cli(tmp_path, capsys):
    sd, _ = write_official(tmp_path / "official", with_vqvae=False, n_shards=1)
    torch.manual_seed(0)
    vq = MultiScaleVQVAE(TINY_VQ).state_dict()
    torch.save(vq, tmp_path / "vae.pth")
    (tmp_path / "vq.json").write_text(json.dumps(TINY_VQ.to_dict()))
    argv = ["--checkpoint", str(tmp_path / "official"), "--out", str(tmp_path / "native"), "--dtype", "float32",
            "--vqvae-config", str(tmp_path / "vq.json")]
    assert conversion.main(argv) == 2
    assert "--vqvae" in capsys.readouterr().err                # no VQ-VAE anywhere: says where to get it
    assert conversion.main(argv + ["--vqvae", str(tmp_path / "vae.pth")]) == 0
    assert "converted" in capsys.readouterr().out
    model, _ = ARGenSegModel.from_pretrained(tmp_path / "native")
    for k, v in vq.items():
        assert torch.equal(model.vqvae.state_dict()[k], v), k
    assert conversion.main(argv + ["--vqvae", str(tmp_path / "vae.pth")]) == 2   # out is not empty now
    assert "not empty" in capsys.readouterr().err


@pytest.mark.parametrize("mutate, message", [
    (lambda sd: sd.update({"language_model.model.layers.0.attention.extra.weight": torch.zeros(2)}), "unknown key"),
    (lambda sd: sd.update({"some_other_head.weight": torch.zeros(2)}), "unknown key"),
    (lambda sd: sd.update({"language_model.model.layers.1.attention.wqkv.weight": torch.zeros(100, 64)}), "wrong shape"),
    (lambda sd: sd.update({"pos_1LC": torch.zeros(1, 5, 64)}), "wrong shape"),
    (lambda sd: sd.pop("language_model.model.layers.1.ffn_norm.weight"), "missing key.*post_attention_layernorm"),
])
def test_bad_checkpoints_are_refused_before_writing(tmp_path, mutate, message):
    write_official(tmp_path / "official", n_shards=2, mutate=mutate)
    with pytest.raises(ConversionError, match=message):
        convert_checkpoint(tmp_path / "official", tmp_path / "native", vqvae_config=TINY_VQ, log=None)
    assert not (tmp_path / "native").exists()


def test_missing_files_are_named(tmp_path):
    with pytest.raises(ConversionError, match="does not exist"):
        convert_checkpoint(tmp_path / "nope", tmp_path / "out", log=None)
    write_official(tmp_path / "official", n_shards=2)
    (tmp_path / "official" / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ConversionError, match="lacks the shard"):
        convert_checkpoint(tmp_path / "official", tmp_path / "out", vqvae_config=TINY_VQ, log=None)
    (tmp_path / "official" / "tokenizer.model").unlink()
    with pytest.raises(ConversionError, match="tokenizer.model"):
        convert_checkpoint(tmp_path / "official", tmp_path / "out", vqvae_config=TINY_VQ, log=None)
    (tmp_path / "official" / "config.json").unlink()
    with pytest.raises(ConversionError, match="lacks config.json"):
        convert_checkpoint(tmp_path / "official", tmp_path / "out", log=None)


def test_sharded_native_format_round_trip(tmp_path):
    model, tokenizer = random_model(seed=3)
    model.save_pretrained(tmp_path / "single", tokenizer)
    out = tmp_path / "sharded"
    writer = ShardedSafetensorsWriter(out, max_shard_bytes=40_000)
    for k, v in model.state_dict().items():
        writer.add(k, v)
    files = writer.close()
    assert len(files) > 2 and not (out / "model.safetensors").exists()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (out / name).write_bytes((tmp_path / "single" / name).read_bytes())
    loaded, _ = ARGenSegModel.from_pretrained(out)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    files[1].unlink()
    with pytest.raises(ModelLoadError, match="lacks the shard"):
        ARGenSegModel.from_pretrained(out)


def test_8b_preset_has_the_release_sizes():
    config = argenseg_8b_config()
    with torch.device("meta"):
        model = ARGenSegModel(config)
    text = model.backbone.config.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads,
            text.intermediate_size) == (4096, 32, 32, 8, 14336)
    assert text.rope_parameters["rope_theta"] == 1e6
    assert model.num_image_tokens == 256 and model.num_slots == 680 and model.vocab_size == 96653
    n_params = sum(p.numel() for p in model.state_dict().values())
    assert 8.1e9 < n_params < 8.4e9


def test_gpu_profile_script_runs_tiny_on_cpu(tmp_path):
    """bench/gpu_profile.py --tiny: the smoke test of the script the GPU run uses."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "gpu_profile.py"
    spec = importlib.util.spec_from_file_location("gpu_profile", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "profile.json"
    module.main(["--tiny", "--out", str(out), "--reps", "1", "--raster-reps", "1", "--warmup", "0"])
    result = json.loads(out.read_text())
    assert result["model"] == "random-tiny" and result["device"] == "cpu"
    assert {"eager_next_scale", "eager_raster"} <= set(result["variants"])
    for name in ("eager_next_scale", "eager_raster"):
        entry = result["variants"][name]
        for key in ("prefill_s", "mask_decode_s", "vqvae_decode_s", "end_to_end_s"):
            assert entry[key] > 0, (name, key)
        assert entry["tokens_per_mask"] == result["tokens_per_mask"]
    assert result["variants"]["eager_raster"]["forwards_per_mask"] == result["tokens_per_mask"]
    assert result["variants"]["eager_next_scale"]["forwards_per_mask"] == len(result["patch_nums"])
    assert "engine_decode_q1" in result["forward_breakdown"] and "static_cache" in result
    # the static-cache decoder's variants run on the CPU and generate the eager tokens; graphs need CUDA
    for name in ("fast_next_scale", "fast_reply", "fast_next_scale_batch4"):
        entry = result["variants"][name]
        assert entry["end_to_end_s"] > 0 and entry["tokens_equal_to_eager"] is True, (name, entry)
    assert result["variants"]["fast_reply"]["text_forwards"] == 9
    assert result["variants"]["fast_next_scale_batch4"]["rows"] == 4
    assert "CUDA" in result["variants"]["graphs_next_scale"]["skipped"]
    assert "wall_s" in result["forward_breakdown"]["static_decode_q256"]
