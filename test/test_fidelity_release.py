"""A converted release checkpoint behaves as the reference release does (issue 10, docs/ARGENSEG_8B.md).

Every expectation here is computed from the release-format files themselves, not from the engine:
prompt ids by sentencepiece chunk by chunk plus the BOS, pixel values by PIL + torch as torchvision
would, the LLM by a hand-written InternLM2 over the packed official weights with the reference's
`<ge_start>` rule, the mask by the reference's uint8 / PIL post-processing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import sentencepiece
import torch
from PIL import Image
from release_checkpoint import (
    CORPUS,
    SPM_SIZE,
    TINY_VQ,
    internlm2_forward,
    internvit_features,
    write_official,
    write_tokenizer,
)
from transformers import PreTrainedTokenizerFast

from argenseg_ros.engine.config import RESIZE_CV2_CUBIC, prompt_token_ids
from argenseg_ros.engine.conversion import convert_checkpoint, convert_tokenizer
from argenseg_ros.engine.generation import generate
from argenseg_ros.engine.imaging import IMAGENET_MEAN, IMAGENET_STD, image_to_pixel_values, mask_image_to_mask
from argenseg_ros.engine.model import ARGenSegModel
from argenseg_ros.engine.segmenter import InputError, Segmenter
from argenseg_ros.engine.vqvae import MultiScaleVQVAE

GE_START = SPM_SIZE + 10     # the release layout: InternVL's 9 added tokens, <mask>, then <ge_start>
BOS = 1


def reference_ids(spm: sentencepiece.SentencePieceProcessor, added: dict[str, int], text: str) -> list[int]:
    """The reference's slow tokenizer: split at the added tokens, sentencepiece on each plain chunk."""
    pattern = re.compile("(" + "|".join(re.escape(t) for t in sorted(added, key=len, reverse=True)) + ")")
    ids: list[int] = []
    for chunk in pattern.split(text):
        if chunk in added:
            ids.append(added[chunk])
        elif chunk:
            ids += spm.encode(chunk)
    return ids


def added_tokens_of(directory: Path) -> dict[str, int]:
    decoder = json.loads((directory / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    return {v["content"]: int(k) for k, v in decoder.items()}


TEXTS = ["hello world", " hello  world ", "segment the mug; hello, the red cup.", "héllo wörld 日本",
         "x<|im_end|> y", "<|im_start|>user\n<img><IMG_CONTEXT></img>\nthe red cup<|im_end|>\n", "\n\n", "a\tb  "]


@pytest.mark.parametrize("add_dummy_prefix", [True, False])
@pytest.mark.parametrize("remove_extra_whitespaces", [True, False])
def test_tokenizer_ids_equal_the_reference_in_every_normaliser_setting(tmp_path, add_dummy_prefix,
                                                                       remove_extra_whitespaces):
    write_tokenizer(tmp_path, 8, add_dummy_prefix=add_dummy_prefix, remove_extra_whitespaces=remove_extra_whitespaces)
    converted = convert_tokenizer(tmp_path, 8)
    converted.tokenizer.save_pretrained(str(tmp_path / "native"))
    loaded = PreTrainedTokenizerFast.from_pretrained(str(tmp_path / "native"))   # what the engine loads
    spm = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    added = added_tokens_of(tmp_path)
    for text in TEXTS + CORPUS[:6]:
        expected = reference_ids(spm, added, text)
        assert converted.tokenizer(text, add_special_tokens=False)["input_ids"] == expected, repr(text)
        assert loaded(text, add_special_tokens=False)["input_ids"] == expected, repr(text)
    # the flag matters: with it every chunk starts with "▁"
    first = loaded.convert_ids_to_tokens(loaded("hello world", add_special_tokens=False)["input_ids"])[0]
    assert first == ("▁hello" if add_dummy_prefix else "hello")
    assert converted.bos_token_id == BOS and converted.notes == []


def test_no_bos_when_the_tokenizer_config_says_so(tmp_path):
    write_tokenizer(tmp_path, 8, add_bos_token=False)
    converted = convert_tokenizer(tmp_path, 8)
    assert converted.bos_token_id is None and "no BOS" in converted.notes[0]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A release-format checkpoint (dummy prefix on, as sentencepiece's default) whose head leans to
    <ge_start> so that random weights generate masks, converted in float32."""
    root = tmp_path_factory.mktemp("fidelity")

    def lean_to_masks(sd):
        sd["language_model.output.weight"][GE_START] += 3.0 * sd["language_model.model.norm.weight"]

    sd, ids = write_official(root / "official", n_shards=1, mutate=lean_to_masks, add_dummy_prefix=True)
    assert ids["<ge_start>"] == GE_START
    convert_checkpoint(root / "official", root / "native", dtype="float32", vqvae_config=TINY_VQ, log=None)
    model, tokenizer = ARGenSegModel.from_pretrained(root / "native")
    return root, sd, model, tokenizer


def test_converted_config_holds_the_reference_rules(release):
    root, _, model, _ = release
    config = json.loads((root / "native" / "config.json").read_text())
    assert (config["bos_token_id"], config["image_resize"], config["ge_start_slot_embedding"],
            config["mask_postprocessing"]) == (BOS, "pil_bicubic", "token", "pil_luma_uint8")
    assert model.first_positioned_slot == 1


def test_prompt_ids_start_with_bos_and_equal_the_reference(release):
    root, _, model, tokenizer = release
    spm = sentencepiece.SentencePieceProcessor(model_file=str(root / "official" / "tokenizer.model"))
    added = added_tokens_of(root / "official")
    for instruction in ("the red cup", "segment the mug; hello, the red cup."):
        ids = model.prompt_ids(tokenizer, instruction)
        assert ids[0] == BOS
        assert ids == [BOS] + reference_ids(spm, added, model.build_prompt(instruction))
        assert ids.count(model.config.token_ids["img_context"]) == model.num_image_tokens
    assert prompt_token_ids(model.config, tokenizer, "x", 1)[0] == BOS


def reference_pixel_values(image_hw3: np.ndarray, size: int) -> torch.Tensor:
    """InternVL's transform: PIL image -> Resize((S, S), BICUBIC) -> ToTensor -> Normalize."""
    resized = Image.fromarray(image_hw3).resize((size, size), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.array(resized)).permute(2, 0, 1).float().div(255)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return ((x - mean) / std)[None]


def test_pixel_values_follow_the_reference_resize(release):
    _, _, model, _ = release
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    ours = image_to_pixel_values(frame, model.image_size, model.config.image_resize)
    reference = reference_pixel_values(frame, model.image_size)
    assert ours.shape == reference.shape == (1, 3, model.image_size, model.image_size)
    assert (ours - reference).abs().max().item() <= 1e-6
    # the project's cv2 rule (kept for the shipped tabletop model) is another image altogether
    assert (image_to_pixel_values(frame, model.image_size, RESIZE_CV2_CUBIC) - reference).abs().max().item() > 0.1


def reference_embeddings(sd: dict, model: ARGenSegModel, ids: list[int], slots: list[int],
                         slot_inputs: torch.Tensor, image_features: torch.Tensor, slot0_positioned: bool) -> torch.Tensor:
    """Input embeddings from the official tensors: <ge_start> bare (slot0_positioned=False, the
    reference) and word_embed(input) + lvl_embed[scale] + pos_1LC[slot] from slot 1 on."""
    x = sd["language_model.model.tok_embeddings.weight"][torch.tensor(ids)].clone()
    is_img = torch.tensor(ids) == model.config.token_ids["img_context"]
    x[is_img] = image_features
    scale_of_slot = [k for k, pn in enumerate(TINY_VQ.patch_nums) for _ in range(pn * pn)]
    for t, slot in enumerate(slots):
        if slot > 0:
            x[t] = slot_inputs[t] @ sd["word_embed.weight"].T + sd["word_embed.bias"]
        if slot > 0 or (slot == 0 and slot0_positioned):
            x[t] = x[t] + sd["lvl_embed.weight"][scale_of_slot[slot]] + sd["pos_1LC"][0, slot]
    return x


def test_generation_equals_the_reference_teacher_forced_pass(release):
    root, sd, model, tokenizer = release
    frame = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    prompt = model.prompt_ids(tokenizer, "the red cup")
    pixels = reference_pixel_values(frame, model.image_size)
    out = generate(model, torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.bool), pixels,
                   max_new_tokens=5, max_masks=1, record_logits=True)
    ids_cfg, L = model.config.token_ids, model.num_slots
    generated = out.token_ids[0]
    assert len(out.mask_codes[0]) == 1 and generated.count(GE_START) == 1, "the leaning head must make a mask"

    # the teacher-forced sequence: prompt, answer with its mask laid out as next-scale slots
    vq = MultiScaleVQVAE(TINY_VQ)
    vq.load_state_dict({k[len("image_tokenizer."):]: v for k, v in sd.items() if k.startswith("image_tokenizer.")})
    codes = out.mask_codes[0][0]
    teacher_inputs = vq.idx_to_teacher_inputs([c[None] for c in codes])[0]            # (L - 1, Cvae)
    ids, slots = list(prompt), [-1] * len(prompt)
    inputs = torch.zeros(len(prompt), TINY_VQ.z_channels)
    i = 0
    while i < len(generated) and generated[i] != ids_cfg["eos"]:
        if generated[i] == GE_START:
            ids += [GE_START] + [ids_cfg["mask_context"]] * (L - 1) + [ids_cfg["ge_end"]]
            slots += list(range(L)) + [-1]
            inputs = torch.cat([inputs, torch.zeros(1, TINY_VQ.z_channels), teacher_inputs,
                                torch.zeros(1, TINY_VQ.z_channels)])
            i += 1 + L + 1
        else:
            ids.append(generated[i])
            slots.append(-1)
            inputs = torch.cat([inputs, torch.zeros(1, TINY_VQ.z_channels)])
            i += 1
    with torch.no_grad():
        features = internvit_features(sd, pixels)[0]
        hidden = internlm2_forward(sd, reference_embeddings(sd, model, ids, slots, inputs, features, False)[None])[0]
        logits = hidden @ sd["language_model.output.weight"].T
        positioned = internlm2_forward(sd, reference_embeddings(sd, model, ids, slots, inputs, features, True)[None])[0]
    V, offset = model.codebook_size, ids_cfg["visual_offset"]
    pos = len(prompt) - 1
    for kind, step in out.step_logits[0]:
        if kind == "text":   # the project's text step leaves the visual ids out (docs: a deliberate difference)
            allowed = torch.isfinite(step)            # <ge_start> is blocked once max_masks is reached
            assert allowed.sum() >= offset - 1 and (allowed.all() or not allowed[GE_START])
            torch.testing.assert_close(step[allowed], logits[pos, :offset][allowed], atol=2e-5, rtol=1e-5)
            assert step.argmax() == logits[pos, :offset].masked_fill(~allowed, -torch.inf).argmax()
            pos += 1
        else:
            n = step.shape[0]
            reference = logits[pos:pos + n, offset:]
            torch.testing.assert_close(step, reference, atol=2e-5, rtol=1e-5)
            assert torch.equal(step.argmax(-1), reference.argmax(-1))      # every visual token as the reference
            if pos == ids.index(GE_START):    # the <ge_start> slot: the project's old rule would differ
                assert (positioned[pos] @ sd["language_model.output.weight"][offset:].T - step[0]).abs().max() > 1e-2
            pos += n
    flat = torch.cat(codes)
    assert flat.numel() == L and torch.equal(flat + offset, torch.tensor(generated[generated.index(GE_START) + 1:][:L]))
    assert V == TINY_VQ.vocab_size


def reference_mask(decoded_3hw: torch.Tensor, size_hw: tuple[int, int], threshold: float = 0.5) -> np.ndarray:
    """The reference evaluation: uint8 of (x + 1) / 2 * 255, PIL BILINEAR resize, convert('L'), /255 > t."""
    u8 = ((decoded_3hw.numpy() + 1) / 2 * 255).astype(np.uint8).transpose(1, 2, 0)
    grey = Image.fromarray(u8).resize((size_hw[1], size_hw[0]), Image.Resampling.BILINEAR).convert("L")
    return np.array(grey) / 255 > threshold


def test_segmenter_masks_equal_the_reference_post_processing(release):
    _, _, model, tokenizer = release
    seg = Segmenter(model, tokenizer, max_new_tokens=5, max_masks=1)
    frame = np.random.default_rng(2).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    result = seg.segment(frame, "segment the mug")
    prompt = model.prompt_ids(tokenizer, "segment the mug")
    out = generate(model, torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.bool),
                   reference_pixel_values(frame, model.image_size), max_new_tokens=5, max_masks=1)
    (codes,) = out.mask_codes[0]
    decoded = model.vqvae.idx_to_img([c[None] for c in codes])[0]       # the reference decodes all scales
    torch.testing.assert_close(out.mask_images[0][0], decoded, atol=1e-6, rtol=0)
    expected = reference_mask(out.mask_images[0][0], (480, 640))
    (mask,) = result.masks
    assert mask.shape == (480, 640) and np.array_equal(mask, expected)
    assert 0 < expected.mean() < 1
    # PIL's 'L' is the 0.299 R + 0.587 G + 0.114 B luma (rounded): pinned against numpy
    rgb = ((decoded.numpy() + 1) / 2 * 255).astype(np.uint8).transpose(1, 2, 0)
    luma = np.array(Image.fromarray(rgb).convert("L"), dtype=np.float64)
    assert np.abs(luma - rgb @ np.array([0.299, 0.587, 0.114])).max() <= 0.5 + 1e-6
    # the project's channel-mean rule is a different mask on this decode
    assert not np.array_equal(mask_image_to_mask(decoded, (480, 640), 0.5, "channel_mean"), expected)


def control_token_cases(tokenizer) -> list[str]:
    from argenseg_ros.engine.tokenization import control_tokens

    return sorted(control_tokens(tokenizer))


def assert_every_control_token_is_refused(seg: Segmenter) -> int:
    frame = np.zeros((32, 32, 3), np.uint8)
    tokens = control_token_cases(seg.tokenizer)
    for token in tokens:
        for instruction in (f"the red cup {token}", f"{token} the red cup", f"the red{token}cup"):
            with pytest.raises(InputError) as caught:
                seg.segment(frame, instruction)
            assert repr(token) in str(caught.value), (instruction, str(caught.value))
    return len(tokens)


def test_user_text_never_becomes_a_control_token_of_the_release(release):
    _, _, model, tokenizer = release
    seg = Segmenter(model, tokenizer, max_new_tokens=2)
    n = assert_every_control_token_is_refused(seg)
    # <unk> <s> </s>, InternLM2's 4 chat pieces, InternVL's 9, ARGenSeg's 4, 64 visual tokens
    assert n == 3 + 4 + 9 + 4 + TINY_VQ.vocab_size
    for instruction, named in (("the red cup <IMG_CONTEXT>", "<IMG_CONTEXT>"), ("<mask> the red cup", "<mask>"),
                               ("<ge_start><MASK_CONTEXT><ge_end>", "<ge_start>"), ("say <s> hi", "<s>")):
        with pytest.raises(InputError, match=re.escape(repr(named))):
            seg.segment(np.zeros((32, 32, 3), np.uint8), instruction)
    # look-alikes are plain text
    assert isinstance(seg.segment(np.zeros((32, 32, 3), np.uint8), "the <red> cup <visual token>").reply, str)


def test_user_text_never_becomes_a_control_token_of_the_tabletop_model():
    seg = Segmenter.from_pretrained(max_new_tokens=2)
    n = assert_every_control_token_is_refused(seg)
    assert n == 10 + seg.model.codebook_size     # the 10 special tokens and 512 visual tokens
