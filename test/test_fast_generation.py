"""The fast decoder (static KV cache, lean forward) against the eager reference: same tokens.

Real models on real tensors: fixed random models (GQA, several masks, two rows in different
phases, guidance, raster order, the release's dynamic RoPE) and the shipped tabletop model.
"""

import numpy as np
import pytest
import torch
from test_engine import _prompts

from argenseg_ros.engine.generation import generate, static_cache_size
from argenseg_ros.engine.model import random_model
from argenseg_ros.engine.segmenter import Segmenter
from argenseg_ros.engine.static_decode import StaticDecoder, UnsupportedByStaticDecoder
from argenseg_ros.tabletop.world import render_scene


def _biased(model):
    """Random weights biased towards <ge_start>, so that they generate masks."""
    ids = model.config.token_ids
    with torch.no_grad():
        model.backbone.lm_head.weight[ids["ge_start"]] += 2.0 * model.backbone.model.language_model.norm.weight
    return model


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = random_model(seed=0)
    return _biased(model), tokenizer


@pytest.fixture(scope="module")
def dynamic_rope():
    """The release's RoPE: dynamic NTK, factor 2.0 (a Llama with 4 query heads per KV head)."""
    model, tokenizer = random_model(seed=3, text_heads=8, text_kv_heads=2)
    text = model.backbone.config.text_config
    text.rope_parameters = {"rope_type": "dynamic", "rope_theta": 1e6, "factor": 2.0}
    text.max_position_embeddings = 2048
    backbone = type(model.backbone)(model.backbone.config)      # rebuilt: RoPE reads its config at init
    backbone.load_state_dict(model.backbone.state_dict())
    model.backbone = backbone.eval()
    assert model.backbone.model.language_model.rotary_emb.rope_type == "dynamic"
    return _biased(model), tokenizer


def _assert_same_generation(eager, fast, atol: float):
    assert fast.token_ids == eager.token_ids
    for codes_e, codes_f in zip(eager.mask_codes, fast.mask_codes, strict=True):
        assert len(codes_e) == len(codes_f)
        for mask_e, mask_f in zip(codes_e, codes_f):
            assert all(torch.equal(a, b) for a, b in zip(mask_e, mask_f, strict=True))
    for images_e, images_f in zip(eager.mask_images, fast.mask_images, strict=True):
        for a, b in zip(images_e, images_f, strict=True):
            torch.testing.assert_close(b, a, atol=atol, rtol=0)
    for steps_e, steps_f in zip(eager.step_logits, fast.step_logits, strict=True):
        assert [kind for kind, _ in steps_e] == [kind for kind, _ in steps_f]
        for (_, a), (_, b) in zip(steps_e, steps_f):
            torch.testing.assert_close(b, a, atol=atol, rtol=0)


INSTRUCTIONS = ["the red cup", "segment the small blue box left of the ball"]


@pytest.mark.parametrize("static_shapes", [False, True], ids=["live-width", "full-width"])
@pytest.mark.parametrize("mode", ["plain", "guidance", "raster"])
def test_fast_decoder_generates_the_eager_tokens(tiny, mode, static_shapes):
    """Two rows of different prompt lengths (so in different phases at times), two masks each.
    The live-width fast path does the eager path's operations on the same keys: bit-identical.
    The full-width path (CUDA-graph shapes) attends over the whole cache: same tokens, ~1e-6."""
    model, tokenizer = tiny
    _, ids, valid = _prompts(model, tokenizer, INSTRUCTIONS)
    pixels = torch.randn(2, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(1))
    kwargs = dict(max_new_tokens=8, max_masks=2, record_logits=True, raster_order=mode == "raster")
    rows = 2
    if mode == "guidance":
        _, u_ids, u_valid = _prompts(model, tokenizer, ["", ""])
        kwargs.update(cfg_scale=3.0, uncond_input_ids_BT=u_ids, uncond_valid_BT=u_valid)
        rows = 4
    eager = generate(model, ids, valid, pixels, fast=False, **kwargs)
    capacity, _ = static_cache_size(model, ids.shape[1] + 4, 2, 8, 2)
    decoder = StaticDecoder.allocate(model, rows, capacity, static_shapes=static_shapes)
    fast = generate(model, ids, valid, pixels, decoder=decoder, **kwargs)
    assert eager.decoder is None and fast.decoder is decoder
    assert all(len(m) == 2 for m in eager.mask_codes), "the biased model must generate two masks per row"
    _assert_same_generation(eager, fast, atol=1e-5)
    if not static_shapes:
        assert all(torch.equal(a, b) for se, sf in zip(eager.step_logits, fast.step_logits)
                   for (_, a), (_, b) in zip(se, sf))
    again = generate(model, ids, valid, pixels, decoder=decoder, **kwargs)   # reused: cache reset
    assert again.token_ids == fast.token_ids


def test_dynamic_rope_is_default_rope_below_max_positions(dynamic_rope):
    """The release's `rope_type: dynamic` (factor 2): below max_position_embeddings transformers
    (and the reference InternLM2) keep the initial frequencies, which are the default ones; the
    fast path uses them without the per-forward update and generates the same tokens."""
    model, tokenizer = dynamic_rope
    rotary = model.backbone.model.language_model.rotary_emb
    default_inv_freq, _ = rotary.compute_default_rope_parameters(model.backbone.config.text_config)
    assert torch.equal(rotary.original_inv_freq, default_inv_freq)
    _, ids, valid = _prompts(model, tokenizer, INSTRUCTIONS)
    pixels = torch.randn(2, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(2))
    eager = generate(model, ids, valid, pixels, fast=False, max_new_tokens=8, max_masks=2, record_logits=True)
    fast = generate(model, ids, valid, pixels, max_new_tokens=8, max_masks=2, record_logits=True)
    assert fast.decoder is not None and all(len(m) >= 1 for m in eager.mask_codes)
    _assert_same_generation(eager, fast, atol=0.0)
    assert torch.equal(rotary.inv_freq, default_inv_freq)    # no forward rescaled it
    # past max_position_embeddings dynamic RoPE rescales: the static decoder refuses, generate() runs eager
    with pytest.raises(UnsupportedByStaticDecoder):
        StaticDecoder.allocate(model, 2, 4096)
    long = generate(model, ids, valid, pixels, max_new_tokens=8, max_masks=200)
    assert long.decoder is None


def test_shipped_model_fast_equals_eager():
    """The shipped tabletop model on real scenes, through the Segmenter: same replies, same masks."""
    eager = Segmenter.from_pretrained(fast=False)
    fast = Segmenter(eager.model, eager.tokenizer)
    scenes = [render_scene(2000000000 + i) for i in range(3)]
    instructions = [f"the {s.objects[0].colour} {s.objects[0].kind}" for s in scenes]
    instructions[2] = "how many cups are there?"
    masks = 0
    fast.segment(scenes[0].image, instructions[0])
    decoder = fast._decoder                 # kept by the Segmenter: cache (and graphs) made once
    for scene, text in zip(scenes, instructions):
        a, b = eager.segment(scene.image, text), fast.segment(scene.image, text)
        assert a.reply == b.reply
        assert len(a.masks) == len(b.masks)
        assert all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks))
        masks += len(a.masks)
    assert masks >= 1 and fast._decoder is decoder
    batched = fast.segment_batch([s.image for s in scenes], instructions)
    assert [r.reply for r in batched] == [r.reply for r in eager.segment_batch([s.image for s in scenes], instructions)]


def _host_reads(fn) -> int:
    """Device-to-host scalar reads while `fn` runs (each one is a host sync on a GPU)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key == "aten::_local_scalar_dense")


def test_static_decoder_step_reads_nothing_back_from_the_device(dynamic_rope):
    """The eager forward with dynamic RoPE reads `max(position_ids) + 1` back twice per forward
    (transformers' dynamic_rope_update compares it in Python); the static decoder never does."""
    from argenseg_ros.engine.static_decode import ChunkInputs, EagerDecoder

    model, _ = dynamic_rope
    C = model.backbone.config.text_config.hidden_size
    T0, n = 20, 4
    embeds, valid, positions = torch.randn(1, T0, C), torch.ones(1, T0, dtype=torch.bool), torch.arange(T0)[None]
    chunk = ChunkInputs(input_ids_Rn=torch.full((1, n), model.config.token_ids["mask_context"]),
                        slot_Rn=torch.arange(1, 1 + n)[None], slot_inputs_RnC=torch.randn(1, n, model.vqvae.cfg.z_channels),
                        valid_Rn=torch.ones(1, n, dtype=torch.bool), position_ids_Rn=torch.arange(T0, T0 + n)[None])
    reads = {}
    for decoder in (EagerDecoder(model), StaticDecoder.allocate(model, 1, 256)):
        with torch.no_grad():
            decoder.prefill(embeds, valid, positions)
            reads[type(decoder).__name__] = _host_reads(lambda: decoder.step(chunk))   # noqa: B023
    assert reads == {"EagerDecoder": 2, "StaticDecoder": 0}
