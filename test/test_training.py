"""Training and inference agree: a tiny tabletop model overfit on one scene answers exactly."""

import numpy as np
import pytest
import torch

from argenseg_ros.engine.generation import generate
from argenseg_ros.engine.model import image_to_pixel_values
from argenseg_ros.engine.segmenter import Segmenter
from argenseg_ros.tabletop import world as tabletop
from argenseg_ros.tabletop.training import (
    ConversationEncoder,
    Losses,
    build_tabletop_model,
    cosine_lr,
    make_collate,
    prepare_batch,
    scene_samples,
    sincos_2d,
)

TINY_VQVAE = dict(vocab_size=32, z_channels=8, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                  patch_nums=(1, 2, 4), image_size=8, share_quant_resi=2)
TINY_SIZES = dict(image_size=56, patch_size=14, vision_hidden=32, vision_layers=1, vision_heads=2,
                  text_hidden=64, text_layers=2, text_heads=4, text_kv_heads=2, text_intermediate=128)


@pytest.mark.timeout(900)   # ~2 CPU-minutes of training: beyond the 180 s default on a loaded machine
def test_overfit_scene_is_reproduced_by_generation():
    torch.manual_seed(0)
    model, tokenizer = build_tabletop_model(None, seed=0, vqvae=TINY_VQVAE, sizes=TINY_SIZES)
    scene = tabletop.render_scene(7, 160, 120)
    queries = [q for q in tabletop.all_queries(scene) if q.expression_type in ("colour_kind", "absent")][:3]
    queries += [q for q in tabletop.all_queries(scene) if q.expression_type == "count_kind"][:1]
    encoder = ConversationEncoder(model, tokenizer)
    collate = make_collate(model.config.token_ids, model.scale_of_slot.tolist(), 8, 8, encoder.grid)
    raw = collate([scene_samples(scene, queries, encoder, model.image_size)])
    losses = Losses(model, grounding_weight=1.0)
    params = [p for p in model.parameters() if p.requires_grad] + list(losses.parameters())
    opt = torch.optim.AdamW(params, lr=3e-3)
    model.train()
    first = None
    for _ in range(150):
        batch = prepare_batch(model, raw, torch.device("cpu"))
        out = losses(model, batch, model.image_features(batch.pixel_values)[batch.scene_index])
        opt.zero_grad()
        out["total"].backward()
        opt.step()
        first = first if first is not None else out["total"].item()
    assert out["total"].item() < 0.05 * first
    model.eval()

    segmenter = Segmenter(model, tokenizer, max_new_tokens=24)
    batch = prepare_batch(model, raw, torch.device("cpu"))
    visual = batch.teacher.targets - model.config.token_ids["visual_offset"]
    for i, query in enumerate(queries):
        result = segmenter.segment(scene.image, query.instruction)
        assert result.reply == query.reply
        assert len(result.masks) == (1 if "<mask>" in query.reply else 0)
        if result.masks:
            ids = tokenizer(model.build_prompt(query.instruction), add_special_tokens=False)["input_ids"]
            out = generate(model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.bool),
                           image_to_pixel_values(scene.image, model.image_size))
            generated = torch.cat(out.mask_codes[0][0])
            trained = visual[i][batch.teacher.slots[i] >= 0]
            assert torch.equal(generated, trained)   # the exact codes it was taught


def test_cosine_schedule_and_position_code():
    assert cosine_lr(1.0, 0.0) == 0.0
    assert abs(cosine_lr(1.0, 0.03) - 1.0) < 1e-9
    assert abs(cosine_lr(1.0, 1.0) - 0.05) < 1e-9
    emb = sincos_2d(4, 16)
    assert emb.shape == (16, 16)
    # cells in the same column share their x half, cells in the same row their y half
    assert torch.allclose(emb[0, :8], emb[4, :8]) and torch.allclose(emb[0, 8:], emb[1, 8:])
    assert not torch.allclose(emb[0], emb[5])
    assert np.isfinite(emb.numpy()).all()


def test_trainer_reads_the_on_disk_dataset(tmp_path):
    from argenseg_ros.tabletop.dataset import generate_tabletop_dataset
    from argenseg_ros.tabletop.training import DiskConversations

    generate_tabletop_dataset(tmp_path / "data", range(2), queries_per_scene=3, width=160, height=120)
    model, tokenizer = build_tabletop_model(None, seed=0, vqvae=TINY_VQVAE, sizes=TINY_SIZES)
    encoder = ConversationEncoder(model, tokenizer)
    source = DiskConversations(str(tmp_path / "data"), encoder, model.image_size, seed=0)
    assert len(source.records) == 6
    stream = iter(source)
    collate = make_collate(model.config.token_ids, model.scale_of_slot.tolist(), 8, 8, encoder.grid)
    raw = collate([next(stream) for _ in range(4)])
    n_masks = sum(int(sample_has_mask) for sample_has_mask in (raw.teacher.mask_index.amax(1) >= 0))
    assert raw.masks.shape[0] == n_masks
    batch = prepare_batch(model, raw, torch.device("cpu"))
    out = Losses(model, grounding_weight=1.0)(model, batch, model.image_features(batch.pixel_values)[batch.scene_index])
    assert torch.isfinite(out["total"]) and out["text"] > 0


def test_training_continues_from_a_model_directory_keeping_its_vqvae(tmp_path):
    from argenseg_ros.engine.model import ARGenSegModel
    from argenseg_ros.tabletop.training import main

    model, tokenizer = build_tabletop_model(None, seed=0, vqvae=TINY_VQVAE, sizes=TINY_SIZES)
    model.save_pretrained(tmp_path / "start", tokenizer)
    main(["--out", str(tmp_path / "run"), "--init", str(tmp_path / "start"), "--minutes", "0.1",
          "--workers", "0", "--batch", "8", "--device", "cpu", "--log-every", "1"])
    trained, _ = ARGenSegModel.from_pretrained(tmp_path / "run" / "model")
    start = model.state_dict()
    after = trained.state_dict()
    assert all(torch.equal(after[k], start[k].half().float()) for k in start if k.startswith("vqvae."))
    assert not torch.equal(after["pos_1LC"], start["pos_1LC"].half().float())
    assert trained.config.extra["training"]["steps"] >= 1
    assert (tmp_path / "run" / "checkpoint.pt").is_file() and (tmp_path / "run" / "train.log").is_file()
