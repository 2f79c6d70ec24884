"""The ARGenSeg engine on real tensors: generation vs teacher forcing, CFG, save/load, bad input."""

import numpy as np
import pytest
import torch

from argenseg_ros.engine.config import GE_START_BARE, GE_START_WITH_LEVEL_AND_POSITION, ARGenSegConfig
from argenseg_ros.engine.generation import cfg_logits, generate
from argenseg_ros.engine.model import ARGenSegModel, ModelLoadError, random_model
from argenseg_ros.engine.segmenter import InputError, Segmenter
from argenseg_ros.engine.sequence import build_teacher_batch, mask_tokens_from_ids, teacher_forward


@pytest.fixture(scope="module", params=[GE_START_BARE, GE_START_WITH_LEVEL_AND_POSITION])
def tiny(request):
    """A random model with either <ge_start> slot rule: the release's, and the shipped tabletop model's."""
    model, tokenizer = random_model(seed=0, ge_start_slot_embedding=request.param)
    ids = model.config.token_ids
    # Bias the head towards <ge_start> so that random weights still produce masks.
    with torch.no_grad():
        model.backbone.lm_head.weight[ids["ge_start"]] += 2.0 * model.backbone.model.language_model.norm.weight
    return model, tokenizer


def _prompts(model, tokenizer, instructions):
    rows = [model.prompt_ids(tokenizer, t) for t in instructions]
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), model.config.token_ids["pad"])
    valid = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, T - len(r):] = torch.tensor(r)
        valid[i, T - len(r):] = True
    return rows, ids, valid


def _answer_items(model, token_ids, codes_per_mask):
    """Generated ids -> answer items for the teacher batch (masks as MaskTokens)."""
    ids = model.config.token_ids
    items, masks, i = [], iter(codes_per_mask), 0
    while i < len(token_ids):
        if token_ids[i] == ids["ge_start"]:
            items.append(mask_tokens_from_ids(model, [c[None] for c in next(masks)])[0])
            i += 1 + model.num_slots + 1   # <ge_start>, L visual ids, <ge_end>
        else:
            items.append(token_ids[i])
            i += 1
    return items


def test_kv_cache_generation_matches_one_teacher_forced_forward(tiny):
    model, tokenizer = tiny
    instructions = ["the red cup", "segment the small blue box left of the ball"]
    prompts, ids, valid = _prompts(model, tokenizer, instructions)
    pixels = torch.randn(2, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(1))
    out = generate(model, ids, valid, pixels, max_new_tokens=6, max_masks=2, record_logits=True)
    assert all(len(m) >= 1 for m in out.mask_codes), "the biased model must generate masks"
    # a random model's text may be any token; an <IMG_CONTEXT> would take image features in the
    # teacher-forced pass only (seeded so that it does not come up)
    assert not any(model.config.token_ids["img_context"] in row for row in out.token_ids)

    answers = [_answer_items(model, out.token_ids[b], out.mask_codes[b]) for b in range(2)]
    # The final eos (if any) is an output, not an input: drop it from the teacher sequence.
    answers = [a[:-1] if a and a[-1] == model.config.token_ids["eos"] else a for a in answers]
    batch = build_teacher_batch(model, prompts, answers)
    with torch.no_grad():
        feats = model.image_features(pixels)
        hidden = teacher_forward(model, batch, feats).last_hidden_state
    V = model.codebook_size
    for b in range(2):
        pos = len(prompts[b]) - 1
        n_visual_tokens = 0
        for kind, logits in out.step_logits[b]:
            if kind == "text":
                ref = model.text_logits(hidden[b, pos])
                allowed = torch.isfinite(logits)  # <ge_start> is blocked once max_masks is reached
                torch.testing.assert_close(logits[allowed], ref[allowed], atol=1e-4, rtol=1e-4)
                # the position after a text step: the fed token, or the <ge_start> slot
                pos += 1
            else:
                n = logits.shape[0]
                ref = model.visual_logits(hidden[b, pos:pos + n])
                torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)
                # greedy tokens equal the teacher-forced argmax
                assert torch.equal(logits.argmax(-1), ref.argmax(-1))
                n_visual_tokens += n
                pos += n
        assert n_visual_tokens == len(out.mask_codes[b]) * model.num_slots
        assert out.step_logits[b][-1][0] == "text"
    assert V == model.vocab_size - model.config.token_ids["visual_offset"]


def test_ge_start_slot_embedding_follows_the_config(tiny):
    model, _ = tiny
    ids = model.config.token_ids
    L, C = model.num_slots, model.pos_1LC.shape[-1]
    tokens = torch.tensor([[5, ids["ge_start"]] + [ids["mask_context"]] * (L - 1)])
    slots = torch.tensor([[-1] + list(range(L))])
    inputs = torch.randn(1, L + 1, model.vqvae.cfg.z_channels, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = model.embed(tokens, slot_BT=slots, slot_inputs_BTC=inputs)[0]
        table = model.backbone.get_input_embeddings().weight
        lvl, pos = model.lvl_embed.weight, model.pos_1LC[0]
        assert torch.equal(got[0], table[5])                                    # text: its token only
        slot0 = table[ids["ge_start"]]
        if model.config.ge_start_slot_embedding == GE_START_WITH_LEVEL_AND_POSITION:
            slot0 = slot0 + pos[0] + lvl[0]
        torch.testing.assert_close(got[1], slot0, rtol=0, atol=1e-6)
        scale = model.scale_of_slot
        expected = model.word_embed(inputs[0, 2:]) + pos[1:] + lvl[scale[1:]]  # slots >= 1: either rule
        torch.testing.assert_close(got[2:], expected, rtol=0, atol=1e-6)
    assert got.shape == (L + 1, C)


def test_config_rules_are_checked_and_default_to_the_reference(tiny):
    model, _ = tiny
    data = model.config.to_dict()
    for key in ("bos_token_id", "image_resize", "ge_start_slot_embedding", "mask_postprocessing"):
        data.pop(key)
    old = ARGenSegConfig.from_dict(data)    # a config.json written before these fields: the reference's rules
    assert (old.bos_token_id, old.image_resize, old.ge_start_slot_embedding, old.mask_postprocessing) == (
        None, "pil_bicubic", "token", "pil_luma_uint8")
    for key, bad in (("image_resize", "bilinear"), ("ge_start_slot_embedding", "lvl"), ("mask_postprocessing", "mean"),
                     ("bos_token_id", "1")):
        with pytest.raises(ModelLoadError, match=key):
            ARGenSegConfig.from_dict({**data, key: bad})


def test_teacher_targets_follow_the_layout(tiny):
    model, tokenizer = tiny
    ids = model.config.token_ids
    L = model.num_slots
    codes = torch.arange(L) % model.codebook_size
    per_scale = list(torch.split(codes, [p * p for p in model.patch_nums]))
    mask = mask_tokens_from_ids(model, [c[None] for c in per_scale])[0]
    assert torch.equal(mask.codes, codes)
    prompt = [5, 6, 7]
    batch = build_teacher_batch(model, [prompt], [[11, mask, 12, ids["eos"]]])
    t = batch.targets[0].tolist()
    seq = batch.input_ids[0].tolist()
    assert t[:2] == [-100, -100] and t[2] == 11 and t[3] == ids["ge_start"]
    assert seq[4] == ids["ge_start"] and seq[4 + L] == ids["ge_end"]
    assert t[4:4 + L] == (codes + ids["visual_offset"]).tolist()
    assert t[4 + L] == 12 and t[5 + L] == ids["eos"]
    assert batch.slots[0, 4:4 + L].tolist() == list(range(L))
    assert batch.scale[0, 4:4 + L].tolist() == model.scale_of_slot.tolist()


def test_cfg_formula():
    cond = torch.tensor([[1.0, 2.0]])
    uncond = torch.tensor([[3.0, -1.0]])
    # t = cfg * k / (K - 1) = 4 * 2 / 4 = 2 -> (1 + 2) * cond - 2 * uncond
    assert torch.equal(cfg_logits(cond, uncond, 4.0, 2, 5), torch.tensor([[-3.0, 8.0]]))
    assert torch.equal(cfg_logits(cond, uncond, 4.0, 0, 5), cond)


def test_generation_with_guidance_and_raster_order(tiny):
    model, tokenizer = tiny
    _, ids, valid = _prompts(model, tokenizer, ["the red cup"])
    _, u_ids, u_valid = _prompts(model, tokenizer, [""])
    pixels = torch.randn(1, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(1))
    plain = generate(model, ids, valid, pixels, max_new_tokens=4, max_masks=1)
    guided = generate(model, ids, valid, pixels, max_new_tokens=4, max_masks=1, cfg_scale=3.0,
                      uncond_input_ids_BT=u_ids, uncond_valid_BT=u_valid)
    zero = generate(model, ids, valid, pixels, max_new_tokens=4, max_masks=1, cfg_scale=1e-12,
                    uncond_input_ids_BT=u_ids, uncond_valid_BT=u_valid)
    assert zero.token_ids == plain.token_ids  # guidance ~0: the uncond rows change nothing
    assert len(guided.mask_codes[0]) == len(plain.mask_codes[0]) == 1
    raster = generate(model, ids, valid, pixels, max_new_tokens=4, max_masks=1, raster_order=True)
    visual = [t for t in raster.token_ids[0] if t >= model.config.token_ids["visual_offset"]]
    assert len(visual) == model.num_slots
    assert raster.mask_images[0][0].shape == plain.mask_images[0][0].shape == (3, 8, 8)


def test_save_load_round_trip_gives_identical_outputs(tiny, tmp_path):
    model, tokenizer = tiny
    model.save_pretrained(tmp_path / "m", tokenizer)
    loaded, tok2 = ARGenSegModel.from_pretrained(tmp_path / "m")
    image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    a = Segmenter(model, tokenizer, max_new_tokens=6).segment(image, "the red cup")
    b = Segmenter(loaded, tok2, max_new_tokens=6).segment(image, "the red cup")
    assert a.reply == b.reply
    assert len(a.masks) == len(b.masks) >= 1
    for x, y in zip(a.masks, b.masks):
        assert x.shape == (40, 60) and np.array_equal(x, y)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_loading_reports_missing_and_mismatched_files(tiny, tmp_path):
    model, tokenizer = tiny
    with pytest.raises(ModelLoadError, match="does not exist"):
        ARGenSegModel.from_pretrained(tmp_path / "nope")
    model.save_pretrained(tmp_path / "m", tokenizer)
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="lacks model.safetensors"):
        ARGenSegModel.from_pretrained(tmp_path / "m")
    other, other_tok = random_model(seed=1, text_hidden=32, text_heads=2, text_kv_heads=1)
    other.save_pretrained(tmp_path / "o", other_tok)
    (tmp_path / "m" / "model.safetensors").write_bytes((tmp_path / "o" / "model.safetensors").read_bytes())
    with pytest.raises(ModelLoadError, match="wrong shape"):
        ARGenSegModel.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize("image, message", [
    (np.zeros((0, 0, 3), np.uint8), "at least"),
    (np.zeros((32, 32, 3), np.float32), "uint8"),
    (np.zeros((32, 32), np.uint8), "shape"),
    (np.zeros((32, 32, 1), np.uint8), "shape"),
    (np.zeros((8193, 16, 3), np.uint8), "not supported"),
    ("not an image", "numpy array"),
])
def test_bad_images_raise_clear_errors(tiny, image, message):
    seg = Segmenter(*tiny, max_new_tokens=2)
    with pytest.raises(InputError, match=message):
        seg.segment(image, "the red cup")


@pytest.mark.parametrize("instruction, message", [
    ("", "empty"), ("   ", "empty"), ("x" * 501, "limit"), ("the red\x00cup", "non-printable"), (b"bytes", "text"),
])
def test_bad_instructions_raise_clear_errors(tiny, instruction, message):
    seg = Segmenter(*tiny, max_new_tokens=2)
    with pytest.raises(InputError, match=message):
        seg.segment(np.zeros((32, 32, 3), np.uint8), instruction)


def test_batch_equals_single_requests(tiny):
    model, tokenizer = tiny
    seg = Segmenter(model, tokenizer, max_new_tokens=6)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (30, 50, 3), dtype=np.uint8), rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)]
    texts = ["the red cup", "the large green box right of the plate"]
    batched = seg.segment_batch(images, texts)
    for image, text, res in zip(images, texts, batched):
        single = seg.segment(image, text)
        assert single.reply == res.reply
        assert len(single.masks) == len(res.masks)
        for x, y in zip(single.masks, res.masks):
            assert (x == y).mean() > 0.99  # float noise from padding may flip a boundary pixel
