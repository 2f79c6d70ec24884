"""Dead-code restart on the shipped mask VQ-VAE, and the trainer's scene-mix options."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from argenseg_ros.engine.vqvae import masks_to_images
from argenseg_ros.tabletop import randomisation, training
from argenseg_ros.tabletop.codebook import dead_codes, restart_dead_codes
from argenseg_ros.tabletop.tokenizer_eval import load_vqvae


@pytest.fixture(scope="module")
def heldout_images() -> torch.Tensor:
    return masks_to_images(training.heldout_masks(64, scenes=3))


def test_restart_moves_dead_codes_onto_encoder_latents(heldout_images: torch.Tensor) -> None:
    vqvae = load_vqvae()
    q = vqvae.quantize
    with torch.no_grad():
        q.ema_vocab_hit_SV.fill_(1.0)
        q.ema_vocab_hit_SV[:, :40] = 0.0            # codes 0..39 never hit
    assert dead_codes(vqvae).tolist() == list(range(40))
    before = q.embedding.weight.detach().clone()
    n = restart_dead_codes(vqvae, heldout_images, torch.Generator().manual_seed(0))
    assert n == 40 and dead_codes(vqvae).numel() == 0
    after = q.embedding.weight.detach()
    assert torch.equal(after[40:], before[40:]) and not torch.equal(after[:40], before[:40])
    # Each restarted code sits (up to 1% noise) on a latent of the batch at some scale.
    with torch.no_grad():
        f = vqvae.img_to_latent(heldout_images)
        pool = torch.cat([q.downsample(f, k).permute(0, 2, 3, 1).reshape(-1, f.shape[1])
                          for k in range(q.num_scales)])
        nearest = torch.cdist(after[:40], pool).min(dim=1).values
    assert float(nearest.max()) < 0.05 * float(pool.norm(dim=1).mean())
    assert restart_dead_codes(vqvae, heldout_images, torch.Generator().manual_seed(0)) == 0


def test_vqvae_config_128_keeps_the_token_layout() -> None:
    c64, c128 = training.vqvae_config(64), training.vqvae_config(128)
    assert c64 == training.TABLETOP_VQVAE
    assert c128["image_size"] == 128 and c128["patch_nums"] == c64["patch_nums"]
    from argenseg_ros.engine.vqvae import VQVAEConfig

    assert VQVAEConfig(**c128).latent_size == VQVAEConfig(**c64).latent_size == 16
    with pytest.raises(ValueError):
        training.vqvae_config(96)


def test_scene_mix_feeds_the_mask_trainer() -> None:
    plain = training.TabletopMasks(64, seed=0)
    mixed = training.TabletopMasks(64, seed=0, mix=training.SceneMix(1.0, randomisation.FULL))
    take = 60
    a = [m for m, _ in zip(iter(plain), range(take))]
    b = [m for m, _ in zip(iter(mixed), range(take))]
    area = lambda ms: float(np.mean([float(m.sum()) for m in ms]))   # noqa: E731
    assert area(b) < area(a)          # small and crowded compositions, log-uniform sizes
    with pytest.raises(ValueError):
        training.SceneMix(1.5)


def test_scene_mix_feeds_the_conversation_trainer() -> None:
    """With mix 1.0 every scene is a randomised failure-mix scene, encoded like a plain one."""
    tiny_vq = dict(vocab_size=32, z_channels=8, ch=32, ch_mult=(1, 2), num_res_blocks=1, patch_nums=(1, 2, 4),
                   image_size=8, share_quant_resi=2)
    tiny = dict(image_size=56, patch_size=14, vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=64,
                text_layers=1, text_heads=2, text_kv_heads=2, text_intermediate=128)
    model, tokenizer = training.build_tabletop_model(None, seed=0, vqvae=tiny_vq, sizes=tiny)
    encoder = training.ConversationEncoder(model, tokenizer)
    plain = training.TabletopConversations(encoder, model.image_size, seed=0, queries=4)
    mixed = training.TabletopConversations(encoder, model.image_size, seed=0, queries=4,
                                           mix=training.SceneMix(1.0, randomisation.FULL))
    (p_pix, p_samples), (m_pix, m_samples) = next(iter(plain)), next(iter(mixed))
    assert p_pix.shape == m_pix.shape == (3, 56, 56) and 1 <= len(m_samples) <= 4 and len(p_samples) == 4
    assert not torch.equal(p_pix, m_pix)
    for sample in m_samples:
        assert all(m.shape == (8, 8) for m in sample.masks)
