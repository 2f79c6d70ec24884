"""Tests for argenseg_ros.engine.vqvae: VAR key compatibility, the residual multi-scale algorithm, and the
next-scale interface the LLM relies on (teacher forcing == generation, exactly)."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from anywhere, installed or not
    sys.path.insert(0, str(ROOT))

from argenseg_ros.engine.vqvae import (  # noqa: E402
    AttnBlock,
    Downsample,
    MultiScaleVQVAE,
    VQVAEConfig,
    images_to_mask_probs,
    masks_to_images,
    phi_indices,
)

# The VAR release state-dict key list (key, shape), a copy of the spec's, kept in the test data.
TSV = ROOT / "test" / "data" / "var_vqvae_ch160v4096z32.keys.tsv"

torch.set_num_threads(1)


def small_cfg(**kw) -> VQVAEConfig:
    base = dict(ch=32, ch_mult=(1, 2, 2), z_channels=8, vocab_size=64, num_res_blocks=1,
                patch_nums=(1, 2, 4, 8), image_size=32)
    base.update(kw)
    return VQVAEConfig(**base)


@pytest.fixture(scope="module")
def model() -> MultiScaleVQVAE:
    torch.manual_seed(0)
    return MultiScaleVQVAE(small_cfg()).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(3, 32, 32, generator=g) > 0.6
    masks[0] = False  # an empty mask too
    return masks_to_images(masks)


def read_tsv() -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in TSV.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape = line.split("\t")
        rows.append((key, tuple(ast.literal_eval(shape))))
    return rows


# ---------------------------------------------------------------------------------------------
# VAR checkpoint compatibility


def test_full_config_state_dict_equals_var_tsv_keys_shapes_and_order():
    with torch.device("meta"):
        m = MultiScaleVQVAE(VQVAEConfig.var_ch160v4096z32())
    got = [(k, tuple(v.shape)) for k, v in m.state_dict().items()]
    expected = read_tsv()
    assert len(expected) == 324
    assert got == expected


def test_full_config_strict_load_of_tsv_shaped_tensors():
    torch.manual_seed(0)
    m = MultiScaleVQVAE(VQVAEConfig.var_ch160v4096z32())
    sd = {k: torch.randn(shape) for k, shape in read_tsv()}
    res = m.load_state_dict(sd, strict=True)
    assert not res.missing_keys and not res.unexpected_keys
    assert torch.equal(m.quantize.embedding.weight, sd["quantize.embedding.weight"])
    assert torch.equal(m.quantize.ema_vocab_hit_SV, sd["quantize.ema_vocab_hit_SV"])
    bad = dict(sd)
    bad["quant_conv.weight"] = torch.randn(32, 32, 1, 1)
    with pytest.raises(RuntimeError):
        m.load_state_dict(bad, strict=True)


def test_from_checkpoint_loads_pth_and_safetensors_with_prefix(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    cfg = small_cfg()
    src = MultiScaleVQVAE(cfg)
    torch.save(src.state_dict(), tmp_path / "vae.pth")
    save_file({"vqvae." + k: v.contiguous() for k, v in src.state_dict().items()} | {"other.w": torch.zeros(1)},
              str(tmp_path / "model.safetensors"))
    for m in (MultiScaleVQVAE.from_checkpoint(tmp_path / "vae.pth", cfg),
              MultiScaleVQVAE.from_checkpoint(tmp_path / "model.safetensors", cfg, prefix="vqvae.")):
        assert not m.training
        for k, v in src.state_dict().items():
            assert torch.equal(m.state_dict()[k], v), k
    with pytest.raises(RuntimeError):  # strict: the unprefixed file has the extra key
        MultiScaleVQVAE.from_checkpoint(tmp_path / "model.safetensors", cfg)


def test_full_width_architecture_runs_at_small_resolution():
    # the 8B widths/attention layout at 32px: 2x2 latent, cheap enough for a unit test
    cfg = VQVAEConfig.var_ch160v4096z32(image_size=32, patch_nums=(1, 2))
    torch.manual_seed(0)
    m = MultiScaleVQVAE(cfg).eval()
    x = masks_to_images(torch.rand(2, 32, 32) > 0.5)
    ids, f_hat = m.img_to_idx_fhat(x)
    assert [tuple(i.shape) for i in ids] == [(2, 1), (2, 4)]
    assert f_hat.shape == (2, 32, 2, 2)
    assert m.fhat_to_img(f_hat).shape == (2, 3, 32, 32)


# ---------------------------------------------------------------------------------------------
# config


def test_var_preset_derived_properties():
    c = VQVAEConfig.var_ch160v4096z32()
    assert c == VQVAEConfig()
    assert (c.downsample, c.latent_size, c.num_scales, c.seq_len) == (16, 16, 10, 680)
    assert c.scale_slices[0] == (0, 1) and c.scale_slices[-1] == (424, 680)
    c512 = VQVAEConfig.var_ch160v4096z32(image_size=512, patch_nums=(1, 2, 3, 4, 6, 9, 13, 18, 24, 32))
    assert (c512.latent_size, c512.seq_len) == (32, 2240)


def test_config_dict_roundtrip_through_json():
    c = small_cfg(quant_resi=0.25, share_quant_resi=0)
    d = json.loads(json.dumps(c.to_dict()))
    assert VQVAEConfig.from_dict(d) == c
    with pytest.raises(ValueError, match="unknown"):
        VQVAEConfig.from_dict({**d, "vocab": 3})


@pytest.mark.parametrize("kw", [
    dict(ch=48),                                   # not a multiple of 32 (GroupNorm 32)
    dict(ch=16),
    dict(patch_nums=(1, 2, 4)),                    # last != latent side (8)
    dict(patch_nums=(1, 4, 2, 8)),                 # not increasing
    dict(patch_nums=(1, 1, 8)),
    dict(patch_nums=()),
    dict(image_size=36),                           # not divisible by 4
    dict(ch_mult=()),
    dict(ch_mult=(1, 0, 2)),
    dict(vocab_size=0),
    dict(z_channels=0),
    dict(num_res_blocks=0),
    dict(dropout=1.0),
    dict(quant_resi=1.5),
    dict(share_quant_resi=-1),
    dict(beta=-0.1),
])
def test_bad_configs_raise(kw):
    with pytest.raises(ValueError):
        small_cfg(**kw)


# ---------------------------------------------------------------------------------------------
# phi


def test_phi_tick_selection_matches_var_rule():
    # K=10, 4 shared convs, ticks linspace(1/12, 11/12, 4); scales 2 and 7 are float-resolved ties
    assert phi_indices(10, 4) == (0, 0, 1, 1, 1, 2, 2, 3, 3, 3)
    assert phi_indices(6, 4) == (0, 0, 1, 2, 3, 3)
    assert phi_indices(5, 5) == (0, 1, 2, 3, 4)
    assert small_cfg(share_quant_resi=0).num_phi == 4  # share 0 -> one conv per scale
    assert phi_indices(3, 1) == (0, 0, 0)
    with torch.device("meta"):
        m = MultiScaleVQVAE(VQVAEConfig())
    q = m.quantize.quant_resi
    assert q.scale_to_phi == (0, 0, 1, 1, 1, 2, 2, 3, 3, 3)
    assert q[7] is q.qresi_ls[3] and q[2] is q.qresi_ls[1]


def var_phi_choice(num_phi: int, num_scales: int) -> tuple[int, ...]:
    """VAR's rule, as its numpy code computes it: ticks, then argmin |ticks - k/(K-1)|."""
    n = num_phi
    ticks = np.linspace(1 / 3 / n, 1 - 1 / 3 / n, n) if n == 4 else np.linspace(1 / 2 / n, 1 - 1 / 2 / n, n)
    return tuple(int(np.argmin(np.abs(ticks - k / (num_scales - 1)))) for k in range(num_scales))


@pytest.mark.parametrize("num_phi", [1, 2, 3, 4, 5, 6])
def test_phi_ticks_follow_var_for_every_number_of_convs(num_phi):
    for num_scales in range(2, 13):
        assert phi_indices(num_scales, num_phi) == var_phi_choice(num_phi, num_scales), num_scales
    # VAR's 10 scales: 1/(3n) ticks only for n == 4; k = 3 (at 1/3) for n = 3 and 6 is an exact tie
    # of two ticks in real numbers, which float64 resolves to the lower conv
    expected_10 = {1: (0,) * 10, 2: (0,) * 5 + (1,) * 5, 3: (0, 0, 0, 0, 1, 1, 1, 2, 2, 2),
                   4: (0, 0, 1, 1, 1, 2, 2, 3, 3, 3), 5: (0, 0, 1, 1, 2, 2, 3, 3, 4, 4),
                   6: (0, 0, 1, 1, 2, 3, 3, 4, 5, 5)}
    assert phi_indices(10, num_phi) == expected_10[num_phi]


@pytest.mark.parametrize("share, prefixes", [
    (0, ["quant_resi.0.", "quant_resi.1.", "quant_resi.2.", "quant_resi.3."]),   # one conv per scale
    (1, ["quant_resi.qresi."]),                                                      # one for all
    (2, ["quant_resi.qresi_ls.0.", "quant_resi.qresi_ls.1."]),
    (3, ["quant_resi.qresi_ls.0.", "quant_resi.qresi_ls.1.", "quant_resi.qresi_ls.2."]),
    (4, [f"quant_resi.qresi_ls.{i}." for i in range(4)]),
    (6, [f"quant_resi.qresi_ls.{i}." for i in range(6)]),
])
def test_phi_key_layout_and_choice_follow_var_for_every_share_setting(share, prefixes):
    cfg = small_cfg(share_quant_resi=share)      # 4 scales
    torch.manual_seed(0)
    q = MultiScaleVQVAE(cfg).quantize
    keys = [k for k in q.state_dict() if k.startswith("quant_resi.")]
    assert keys == [p + w for p in prefixes for w in ("weight", "bias")]
    convs = [q.get_submodule(p.rstrip(".")) for p in prefixes]
    # share 0: four convs for four scales, ticked as n = 4 (1/12 .. 11/12); share 1: the one conv
    choice = var_phi_choice(len(convs), cfg.num_scales)
    for k in range(cfg.num_scales):
        assert q.quant_resi[k] is convs[choice[k]], k
    if share == 0:
        assert choice == (0, 1, 2, 3)
    # VAR's identity: |quant_resi| <= 1e-6 builds no conv, so no keys, and phi(h) = h
    q0 = MultiScaleVQVAE(small_cfg(share_quant_resi=share, quant_resi=1e-7)).quantize
    assert not [k for k in q0.state_dict() if k.startswith("quant_resi.")]
    h = torch.randn(2, 8, 8, 8)
    assert all(torch.equal(q0.quant_resi[k](h), h) for k in range(cfg.num_scales))


def test_phi_is_half_identity_half_conv(model):
    phi = model.quantize.quant_resi.qresi_ls[0]
    h = torch.randn(2, 8, 8, 8)
    expected = 0.5 * h + 0.5 * F.conv2d(h, phi.weight, phi.bias, padding=1)
    torch.testing.assert_close(phi(h), expected, rtol=0, atol=1e-6)


def test_attention_is_single_head_softmax_over_positions():
    torch.manual_seed(0)
    blk = AttnBlock(64).eval()
    x = torch.randn(2, 64, 3, 5)
    B, C, H, W = x.shape
    q, k, v = blk.qkv(blk.norm(x)).reshape(B, 3, C, H * W).unbind(1)
    w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) * C ** -0.5, dim=-1)  # (B, HW, HW)
    h = torch.einsum("bij,bcj->bci", w, v).reshape(B, C, H, W)
    torch.testing.assert_close(blk(x), x + blk.proj_out(h), rtol=1e-5, atol=1e-5)


def test_downsample_pads_only_right_and_bottom():
    torch.manual_seed(0)
    down = Downsample(32)
    x = torch.randn(1, 32, 8, 8)
    y = down(x)
    assert y.shape == (1, 32, 4, 4)
    w, b = down.conv.weight, down.conv.bias
    # output (0, 0) sees input rows/cols 0..2 (no top/left padding) ...
    top_left = (w * x[:, None, :, 0:3, 0:3]).sum(dim=(2, 3, 4)) + b
    torch.testing.assert_close(y[:, :, 0, 0], top_left, rtol=1e-5, atol=1e-5)
    # ... and output (3, 3) sees rows/cols 6, 7 and one zero pad row/col
    bottom_right = (w[:, :, :2, :2] * x[:, None, :, 6:8, 6:8]).sum(dim=(2, 3, 4)) + b
    torch.testing.assert_close(y[:, :, 3, 3], bottom_right, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# encode / decode and the next-scale interface


def test_shapes_of_every_api(model, images):
    cfg = model.cfg
    B = images.shape[0]
    f = model.img_to_latent(images)
    assert f.shape == (B, 8, 8, 8)
    ids = model.img_to_idx(images)
    assert [tuple(i.shape) for i in ids] == [(B, pn * pn) for pn in cfg.patch_nums]
    assert all(i.dtype == torch.long and 0 <= i.min() and i.max() < cfg.vocab_size for i in ids)
    f_hat = model.idx_to_fhat(ids)
    assert f_hat.shape == (B, 8, 8, 8)
    img = model.fhat_to_img(f_hat)
    assert img.shape == (B, 3, 32, 32) and img.min() >= -1 and img.max() <= 1
    assert model.idx_to_teacher_inputs(ids).shape == (B, cfg.seq_len - 1, 8)
    e = model.empty_fhat(B, dtype=torch.float64)
    assert e.shape == (B, 8, 8, 8) and e.dtype == torch.float64 and not e.any()
    flat = model.ids_to_flat(ids)
    assert flat.shape == (B, cfg.seq_len)
    assert all(torch.equal(a, b) for a, b in zip(model.flat_to_ids(flat), ids))
    probs = images_to_mask_probs(img)
    assert probs.shape == (B, 32, 32) and probs.min() >= 0 and probs.max() <= 1


def test_decoded_fhat_of_encoded_ids_equals_encoder_fhat(model, images):
    ids, f_hat_enc = model.img_to_idx_fhat(images)
    assert torch.equal(model.idx_to_fhat(ids), f_hat_enc)
    # and the encoder's f_hat is the phi'd sum of the scales, computed independently here
    q = model.quantize
    manual = torch.zeros_like(f_hat_enc)
    for k, (pn, idx) in enumerate(zip(model.cfg.patch_nums, ids)):
        h = q.embedding.weight[idx].reshape(-1, pn, pn, 8).permute(0, 3, 1, 2)
        if k < len(ids) - 1:
            h = F.interpolate(h, size=(8, 8), mode="bicubic")
        manual += q.quant_resi[k](h)
    torch.testing.assert_close(manual, f_hat_enc, rtol=0, atol=1e-5)


def test_residual_encoding_picks_nearest_code_of_area_downsampled_residual(model, images):
    ids, _ = model.img_to_idx_fhat(images)
    q = model.quantize
    f_rest = model.img_to_latent(images)
    E = q.embedding.weight
    for k, pn in enumerate(model.cfg.patch_nums):
        z = F.adaptive_avg_pool2d(f_rest, pn) if pn != 8 else f_rest
        z = z.permute(0, 2, 3, 1).reshape(-1, 8)
        assert torch.equal(torch.cdist(z, E).argmin(1).view(-1, pn * pn), ids[k])
        f_rest = f_rest - q.code_map(k, ids[k])


def test_teacher_inputs_equal_incremental_generation_exactly(model, images):
    ids = model.img_to_idx(images)
    teacher = model.idx_to_teacher_inputs(ids)
    f_hat = model.empty_fhat(images.shape[0])
    chunks = []
    for k, idx in enumerate(ids):
        f_hat, nxt = model.next_scale_step(k, f_hat, idx)
        if k < len(ids) - 1:
            assert nxt.shape == (images.shape[0], model.cfg.patch_nums[k + 1] ** 2, 8)
            chunks.append(nxt)
        else:
            assert nxt is None
    assert torch.equal(torch.cat(chunks, dim=1), teacher)
    assert torch.equal(f_hat, model.idx_to_fhat(ids))
    # the last scale's ids are not needed for teacher forcing
    assert torch.equal(model.idx_to_teacher_inputs(ids[:-1]), teacher)
    # first chunk by definition: area-downsample(phi_0(bicubic(e[id_0]))) at pn_1, row-major
    h0 = model.quantize.code_map(0, ids[0])
    first = F.adaptive_avg_pool2d(h0, 2).flatten(2).transpose(1, 2)
    torch.testing.assert_close(teacher[:, :4], first, rtol=0, atol=1e-6)


def test_codebook_vectors_at_a_single_1x1_scale_roundtrip():
    cfg = VQVAEConfig(ch=32, ch_mult=(1, 2), z_channels=8, vocab_size=64, num_res_blocks=1,
                      patch_nums=(1,), image_size=2)
    torch.manual_seed(0)
    m = MultiScaleVQVAE(cfg).eval()
    E = m.quantize.embedding.weight.detach()
    f = E[:, :, None, None]  # (V, C, 1, 1): every code once
    ids, f_hat = m.quantize.f_to_idx_fhat(f)
    assert torch.equal(ids[0].squeeze(1), torch.arange(64))
    # f_hat = phi(f). Not compared bit for bit: the code map reaches the conv as a permuted view whose
    # strides (8, 1, 8, 8) also read as channels-last, f as (8, 1, 1, 1); the CPU conv picks its
    # kernel (and so its summation order) by layout and ISA, so the two differ by an ulp on some
    # machines. On a 1x1 map with padding 1 only the centre tap of the 3x3 kernel sees data:
    phi = m.quantize.quant_resi[0]
    expected = 0.5 * f + 0.5 * (f[:, :, 0, 0] @ phi.weight[:, :, 1, 1].T + phi.bias)[:, :, None, None]
    torch.testing.assert_close(f_hat, expected, rtol=0, atol=1e-6)
    # a single-scale tokenizer has no next-scale inputs
    assert m.idx_to_teacher_inputs(ids).shape == (64, 0, 8)
    assert m.next_scale_step(0, m.empty_fhat(64), ids[0])[1] is None


def test_constant_code_map_is_absorbed_by_the_first_scale_when_phi_is_identity():
    torch.manual_seed(0)
    m = MultiScaleVQVAE(small_cfg(quant_resi=0.0)).eval()
    with torch.no_grad():
        m.quantize.embedding.weight[0].zero_()  # a zero code for the empty residual
    E = m.quantize.embedding.weight.detach()
    f = E[[5, 17, 63]][:, :, None, None].expand(-1, -1, 8, 8).contiguous()
    ids, f_hat = m.quantize.f_to_idx_fhat(f)
    assert ids[0].squeeze(1).tolist() == [5, 17, 63]
    for idx in ids[1:]:
        assert not idx.any()
    torch.testing.assert_close(f_hat, f, rtol=0, atol=1e-5)


def test_bad_inputs_raise(model, images):
    with pytest.raises(ValueError):
        model.img_to_idx(images[:, :, :16])
    ids = model.img_to_idx(images)
    with pytest.raises(ValueError):
        model.idx_to_fhat(ids[:-1])
    with pytest.raises(ValueError):
        model.idx_to_fhat([ids[0], ids[2], ids[1], ids[3]])
    with pytest.raises(ValueError):
        model.next_scale_step(4, model.empty_fhat(3), ids[-1])
    with pytest.raises(ValueError):
        model.next_scale_step(1, model.empty_fhat(3), ids[0])
    with pytest.raises(ValueError):
        model.flat_to_ids(torch.zeros(3, 84, dtype=torch.long))


# ---------------------------------------------------------------------------------------------
# training forward


def test_training_forward_loss_usage_gradients_and_hit_buffer(images):
    torch.manual_seed(0)
    m = MultiScaleVQVAE(small_cfg())
    m.eval()
    ids, _ = m.img_to_idx_fhat(images)
    f = m.img_to_latent(images).detach()
    # expected: mean over scales of (1 + beta) * mse(f_hat after scale k, f)
    partial, losses = torch.zeros_like(f), []
    for k, idx in enumerate(ids):
        partial = partial + m.quantize.code_map(k, idx).detach()
        losses.append(F.mse_loss(partial, f))
    expected_loss = (1 + m.cfg.beta) * torch.stack(losses).mean()
    expected_usage = torch.cat(ids, dim=1).unique().numel() / m.cfg.vocab_size

    m.train()
    recon, vq_loss, usage = m(images)
    assert recon.shape == images.shape
    assert vq_loss.dim() == 0
    torch.testing.assert_close(vq_loss.detach(), expected_loss, rtol=1e-5, atol=1e-7)
    assert usage.item() == pytest.approx(expected_usage)
    # EMA hits: first batch takes the counts; every scale saw B*pn^2 codes
    hits = m.quantize.ema_vocab_hit_SV
    assert hits.sum(1).tolist() == [3.0 * pn * pn for pn in m.cfg.patch_nums]

    (recon.square().mean() + vq_loss).backward()
    for name in ("encoder.conv_in.weight", "decoder.conv_out.weight", "quantize.embedding.weight",
                 "quantize.quant_resi.qresi_ls.0.weight", "quant_conv.weight", "post_quant_conv.weight"):
        g = m.get_parameter(name).grad
        assert g is not None and g.abs().sum() > 0, name

    # straight-through: the recon gradient alone reaches the encoder
    m.zero_grad()
    recon, _, _ = m(images)
    recon.sum().backward()
    assert m.encoder.conv_in.weight.grad.abs().sum() > 0
    assert m.quantize.embedding.weight.grad is None or not m.quantize.embedding.weight.grad.any()

    # eval mode leaves the buffer alone
    before = hits.clone()
    m.eval()
    m(images)
    assert torch.equal(m.quantize.ema_vocab_hit_SV, before)


# ---------------------------------------------------------------------------------------------
# mask helpers


def test_mask_image_helpers_roundtrip():
    masks = torch.zeros(2, 6, 5, dtype=torch.bool)
    masks[0, 1:4, 2:4] = True
    img = masks_to_images(masks)
    assert img.shape == (2, 3, 6, 5)
    assert set(img.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(img[:, 0], img[:, 2])
    assert torch.equal(images_to_mask_probs(img), masks.float())
    soft = masks_to_images(torch.full((1, 4, 4), 0.25))
    torch.testing.assert_close(soft, torch.full((1, 3, 4, 4), -0.5))
    assert masks_to_images(masks, size=16).shape == (2, 3, 16, 16)
    assert MultiScaleVQVAE.masks_to_images is masks_to_images
    with pytest.raises(ValueError):
        masks_to_images(torch.zeros(6, 5))
    with pytest.raises(ValueError):
        images_to_mask_probs(torch.zeros(1, 1, 4, 4))
