"""Codebook use of the mask VQ-VAE: restart codes that the encoder never picks.

Why: a VQ codebook trained briefly settles with many codes no latent is nearest to; they cost
vocabulary (and the model's head rows) and give nothing. The usual cheap lever is to move each dead
code onto a latent vector the encoder actually produces (with a little noise), where it will be
picked and trained. ``MultiScaleQuantizer`` keeps an EMA of code hits per scale
(``ema_vocab_hit_SV``); a code whose hits summed over the scales fall below ``threshold`` times the
mean is dead.

Restarting changes codes, so a model trained on the old codes must be trained again (the GPU recipe
trains the model from scratch on a restarted VQ-VAE; ``--init`` continuation needs unchanged codes).
"""

from __future__ import annotations

import torch

from argenseg_ros.engine.vqvae import MultiScaleVQVAE


@torch.no_grad()
def dead_codes(vqvae: MultiScaleVQVAE, threshold: float = 0.03) -> torch.Tensor:
    """Ids of codes hit less than ``threshold`` times the mean code (EMA over training batches)."""
    hits = vqvae.quantize.ema_vocab_hit_SV.sum(0)
    return torch.nonzero(hits < threshold * hits.mean().clamp(min=1e-12)).flatten()


@torch.no_grad()
def restart_dead_codes(vqvae: MultiScaleVQVAE, images: torch.Tensor, generator: torch.Generator,
                       threshold: float = 0.03) -> int:
    """Move every dead code onto a random encoder latent of ``images`` (B, 3, S, S); returns how many.

    The latents are sampled at every scale's resolution (the area-downsampled latent, as the
    quantizer sees it at that scale), so coarse and fine codes are both restarted where they are used.
    Their EMA hits are reset to the mean so that a restarted code gets time before it counts as dead.
    """
    dead = dead_codes(vqvae, threshold)
    if dead.numel() == 0:
        return 0
    q = vqvae.quantize
    f = vqvae.img_to_latent(images)
    pool = torch.cat([q.downsample(f, k).permute(0, 2, 3, 1).reshape(-1, f.shape[1])
                      for k in range(q.num_scales)])
    pick = torch.randint(pool.shape[0], (dead.numel(),), generator=generator, device="cpu").to(pool.device)
    fresh = pool[pick]
    noise = torch.randn(fresh.shape, generator=generator, device="cpu").to(fresh.device)
    q.embedding.weight[dead] = (fresh + 0.01 * fresh.std() * noise).to(q.embedding.weight.dtype)
    q.ema_vocab_hit_SV[:, dead] = q.ema_vocab_hit_SV.mean(1, keepdim=True)
    return int(dead.numel())
