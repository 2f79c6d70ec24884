"""Multi-scale residual VQ-VAE (VAR design): the mask tokenizer of ARGenSeg.

A mask image (B, 3, H, W) in [-1, 1] is encoded to a latent f (B, Cvae, h, w) with h = H / 2**(n-1),
then quantized residually over K scales `patch_nums` (pn_0 < ... < pn_{K-1} = h): scale k holds
pn_k * pn_k codebook ids (row-major). The LLM predicts the ids scale by scale; the input it sees for
scale k+1 is the running reconstruction f_hat after scale k, area-downsampled to pn_{k+1}.

With the default config the module's `state_dict()` has exactly the keys and shapes of the public
VAR tokenizer `vae_ch160v4096z32.pth` (see shared/spec/var_vqvae_ch160v4096z32.keys.tsv), so that
file loads with `load_state_dict(strict=True)`.

Shape names: B batch, C channels, H/W image side, h/w latent side, L = sum(pn^2), V vocab.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "VQVAEConfig",
    "MultiScaleVQVAE",
    "masks_to_images",
    "images_to_mask_probs",
    "phi_indices",
]


# ----------------------------------------------------------------------------------------------
# config


@dataclass
class VQVAEConfig:
    vocab_size: int = 4096
    z_channels: int = 32  # Cvae: width of the latent and of every codebook vector
    ch: int = 160  # base width; GroupNorm(32) needs every width to be a multiple of 32
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    dropout: float = 0.0
    using_sa: bool = True  # self-attention after every block of the lowest-resolution level
    using_mid_sa: bool = True  # self-attention between the two mid blocks
    share_quant_resi: int = 4  # number of phi convs shared by the scales; 0 = one per scale
    quant_resi: float = 0.5  # phi(h) = (1 - r) * h + r * conv(h)
    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    beta: float = 0.25  # commitment loss weight
    image_size: int = 256

    def __post_init__(self) -> None:
        # JSON gives lists; keep tuples so configs compare equal and stay hashable
        self.ch_mult = tuple(self.ch_mult)
        self.patch_nums = tuple(self.patch_nums)
        self.validate()

    # -- presets -------------------------------------------------------------------------------
    @classmethod
    def var_ch160v4096z32(cls, **overrides: Any) -> VQVAEConfig:
        """The VAR tokenizer `vae_ch160v4096z32.pth` used by ARGenSeg-8B (256px, 680 tokens).

        For 512px pass image_size=512, patch_nums=(1, 2, 3, 4, 6, 9, 13, 18, 24, 32)."""
        base = dict(
            vocab_size=4096, z_channels=32, ch=160, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
            dropout=0.0, using_sa=True, using_mid_sa=True, share_quant_resi=4, quant_resi=0.5,
            patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), beta=0.25, image_size=256,
        )
        base.update(overrides)
        return cls(**base)

    # -- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        d["patch_nums"] = list(self.patch_nums)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VQVAEConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:  # a typo in config.json must not silently fall back to a default
            raise ValueError(f"VQVAEConfig: unknown keys {unknown}")
        return cls(**d)

    # -- derived -------------------------------------------------------------------------------
    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.downsample

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    @property
    def seq_len(self) -> int:
        """L = sum(pn^2): visual tokens per mask."""
        return sum(pn * pn for pn in self.patch_nums)

    @property
    def scale_slices(self) -> tuple[tuple[int, int], ...]:
        """(begin, end) of each scale inside the flat L-long token sequence."""
        out, b = [], 0
        for pn in self.patch_nums:
            out.append((b, b + pn * pn))
            b += pn * pn
        return tuple(out)

    @property
    def num_phi(self) -> int:
        return self.share_quant_resi if self.share_quant_resi > 0 else self.num_scales

    def validate(self) -> None:
        def bad(msg: str) -> ValueError:
            return ValueError(f"VQVAEConfig: {msg}")

        def is_int(x: Any) -> bool:
            return isinstance(x, int) and not isinstance(x, bool)

        for name in ("vocab_size", "z_channels", "ch", "num_res_blocks", "image_size"):
            v = getattr(self, name)
            if not is_int(v) or v < 1:
                raise bad(f"{name} must be a positive int, got {v!r}")
        if self.ch % 32 != 0:
            raise bad(f"ch must be a multiple of 32 (GroupNorm uses 32 groups), got {self.ch}")
        if not self.ch_mult or not all(is_int(m) and m >= 1 for m in self.ch_mult):
            raise bad(f"ch_mult must be a non-empty tuple of positive ints, got {self.ch_mult}")
        if not 0.0 <= self.dropout < 1.0:
            raise bad(f"dropout must be in [0, 1), got {self.dropout}")
        if not is_int(self.share_quant_resi) or self.share_quant_resi < 0:
            raise bad(f"share_quant_resi must be an int >= 0, got {self.share_quant_resi!r}")
        if not 0.0 <= self.quant_resi <= 1.0:
            raise bad(f"quant_resi must be in [0, 1], got {self.quant_resi}")
        if self.beta < 0:
            raise bad(f"beta must be >= 0, got {self.beta}")
        if self.image_size % self.downsample != 0:
            raise bad(
                f"image_size {self.image_size} is not divisible by the downsample factor "
                f"{self.downsample} (= 2**(len(ch_mult)-1))"
            )
        pns = self.patch_nums
        if not pns or not all(is_int(p) and p >= 1 for p in pns):
            raise bad(f"patch_nums must be a non-empty tuple of positive ints, got {pns}")
        if any(b <= a for a, b in zip(pns, pns[1:])):
            raise bad(f"patch_nums must be strictly increasing, got {pns}")
        if pns[-1] != self.latent_size:
            raise bad(
                f"the last patch_num ({pns[-1]}) must equal the latent side "
                f"image_size/downsample = {self.latent_size}"
            )


def phi_indices(num_scales: int, num_phi: int) -> tuple[int, ...]:
    """Which phi conv each of `num_scales` scales uses, as VAR picks it: the conv whose tick is
    nearest to k/(K-1), ticks = linspace(1/(3n), 1 - 1/(3n), n) for n == 4 convs and
    linspace(1/(2n), 1 - 1/(2n), n) for any other n.

    Evaluated in float64 exactly like VAR's numpy code (arange * step + start, last tick = stop,
    first index wins a tie) because for K=10 and 4 convs scales 2 and 7 sit on exact mathematical
    ties that only rounding resolves: the result is (0, 0, 1, 1, 1, 2, 2, 3, 3, 3). VAR itself cannot
    run a single scale (it divides by K-1); here that scale takes conv 0."""
    third_or_half = 3 if num_phi == 4 else 2
    start, stop = 1.0 / third_or_half / num_phi, 1.0 - 1.0 / third_or_half / num_phi
    step = (stop - start) / (num_phi - 1) if num_phi > 1 else 0.0
    ticks = [i * step + start for i in range(num_phi)]
    ticks[-1] = stop
    out = []
    for k in range(num_scales):
        at = k / (num_scales - 1) if num_scales > 1 else 0.0
        out.append(min(range(num_phi), key=lambda i: abs(ticks[i] - at)))
    return tuple(out)


# ----------------------------------------------------------------------------------------------
# encoder / decoder building blocks


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, dropout: float):
        super().__init__()
        self.norm1 = _norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.norm2 = _norm(c_out)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        # a 1x1 projection only where the width changes (its key exists only there in VAR)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1, 1, 0) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, C_out, H, W)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions; q, k, v from one 1x1 conv."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = _norm(c)
        self.qkv = nn.Conv2d(c, 3 * c, 1, 1, 0)
        self.proj_out = nn.Conv2d(c, c, 1, 1, 0)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, C, H * W)
        q, k, v = (t.transpose(1, 2).unsqueeze(1) for t in qkv.unbind(1))  # each (B, 1, HW, C)
        h = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(C), as in VAR
        h = h.squeeze(1).transpose(1, 2).reshape(B, C, H, W)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 2, 0)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, H/2, W/2)
        # asymmetric pad (right/bottom only) + unpadded stride-2 conv: exactly halves even sides
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, 2H, 2W)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: `block.i` (+ `attn.i` after each block at the lowest resolution)."""

    def __init__(self, c_in: int, c_out: int, n_blocks: int, attn: bool, dropout: float):
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()
        for _ in range(n_blocks):
            self.block.append(ResnetBlock(c_in, c_out, dropout))
            c_in = c_out
            if attn:
                self.attn.append(AttnBlock(c_out))

    def forward(self, x: Tensor) -> Tensor:
        for i, blk in enumerate(self.block):
            x = blk(x)
            if len(self.attn):
                x = self.attn[i](x)
        return x


class _Mid(nn.Module):
    def __init__(self, c: int, attn: bool, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(c, c, dropout)
        self.attn_1 = AttnBlock(c) if attn else nn.Identity()
        self.block_2 = ResnetBlock(c, c, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """(B, 3, H, W) -> (B, Cvae, H/2^(n-1), W/2^(n-1))."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        n = len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(3, cfg.ch, 3, 1, 1)
        self.down = nn.ModuleList()
        c_in = cfg.ch
        for i, m in enumerate(cfg.ch_mult):
            c_out = cfg.ch * m
            level = _Level(c_in, c_out, cfg.num_res_blocks, cfg.using_sa and i == n - 1, cfg.dropout)
            if i != n - 1:
                level.downsample = Downsample(c_out)
            self.down.append(level)
            c_in = c_out
        self.mid = _Mid(c_in, cfg.using_mid_sa, cfg.dropout)
        self.norm_out = _norm(c_in)
        self.conv_out = nn.Conv2d(c_in, cfg.z_channels, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """(B, Cvae, h, w) -> (B, 3, h*2^(n-1), w*2^(n-1)); `up.0` is the full-resolution level."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        n = len(cfg.ch_mult)
        c_in = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, c_in, 3, 1, 1)
        self.mid = _Mid(c_in, cfg.using_mid_sa, cfg.dropout)
        levels: list[_Level] = []
        for i in reversed(range(n)):  # built coarse -> fine, stored fine -> coarse (VAR key order)
            c_out = cfg.ch * cfg.ch_mult[i]
            level = _Level(c_in, c_out, cfg.num_res_blocks + 1, cfg.using_sa and i == n - 1, cfg.dropout)
            if i != 0:
                level.upsample = Upsample(c_out)
            levels.insert(0, level)
            c_in = c_out
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(c_in)
        self.conv_out = nn.Conv2d(c_in, 3, 3, 1, 1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ----------------------------------------------------------------------------------------------
# quantizer


class Phi(nn.Conv2d):
    """phi(h) = (1 - r) * h + r * conv3x3(h): a light learned refinement of each scale's code map."""

    def __init__(self, c: int, resi_ratio: float):
        super().__init__(c, c, 3, 1, 1)
        self.resi_ratio = resi_ratio

    def forward(self, h: Tensor) -> Tensor:  # (B, C, h, w)
        return h.mul(1 - self.resi_ratio) + super().forward(h).mul_(self.resi_ratio)


PHI_IDENTITY_BELOW = 1e-6   # VAR: |quant_resi| <= 1e-6 means phi is the identity (no conv, no keys)


class PhiConvs(nn.Module):
    """The phi convs of the K scales, stored under VAR's keys for each `share_quant_resi`:
    0 -> one per scale, `{i}.*`; 1 -> one for all, `qresi.*`; n >= 2 -> n shared, `qresi_ls.{i}.*`.
    `self[k]` is the module of scale k (VAR's tick rule, `phi_indices`)."""

    def __init__(self, c: int, resi_ratio: float, share_quant_resi: int, num_scales: int):
        super().__init__()

        def make() -> nn.Module:
            return Phi(c, resi_ratio) if abs(resi_ratio) > PHI_IDENTITY_BELOW else nn.Identity()

        if share_quant_resi == 0:
            for i in range(num_scales):
                self.add_module(str(i), make())
            self._convs: list[nn.Module] = [getattr(self, str(i)) for i in range(num_scales)]
        elif share_quant_resi == 1:
            self.qresi = make()
            self._convs = [self.qresi]
        else:
            self.qresi_ls = nn.ModuleList(make() for _ in range(share_quant_resi))
            self._convs = list(self.qresi_ls)
        self.scale_to_phi = phi_indices(num_scales, len(self._convs))

    def __getitem__(self, k: int) -> nn.Module:
        return self._convs[self.scale_to_phi[k]]


class MultiScaleQuantizer(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.patch_nums = cfg.patch_nums
        self.vocab_size = cfg.vocab_size
        self.c = cfg.z_channels
        self.latent_size = cfg.latent_size
        self.beta = cfg.beta
        self.quant_resi = PhiConvs(cfg.z_channels, cfg.quant_resi, cfg.share_quant_resi, cfg.num_scales)
        # EMA of per-scale code hits (kept for VAR checkpoint compatibility and usage monitoring)
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(cfg.num_scales, cfg.vocab_size))
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.z_channels)

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    def nearest(self, z: Tensor) -> Tensor:
        """(B, C, p, p) -> ids (B, p*p), nearest codebook vector by L2 (computed in float32)."""
        B, C, p, _ = z.shape
        z_NC = z.permute(0, 2, 3, 1).reshape(-1, C).float()
        e_VC = self.embedding.weight.detach().float()
        # |z - e|^2 = |z|^2 + |e|^2 - 2 z.e ; |z|^2 is constant per row but keeps d interpretable
        d_NV = torch.addmm(
            z_NC.pow(2).sum(1, keepdim=True) + e_VC.pow(2).sum(1), z_NC, e_VC.t(), beta=1, alpha=-2
        )
        return d_NV.argmin(dim=1).view(B, p * p)

    def code_map(self, k: int, idx: Tensor) -> Tensor:
        """Scale-k ids (B, pn^2) -> phi_k(codes upsampled to the latent) (B, C, h, w)."""
        pn, s = self.patch_nums[k], self.latent_size
        B = idx.shape[0]
        h = self.embedding(idx.reshape(B, pn, pn)).permute(0, 3, 1, 2)  # (B, C, pn, pn)
        if k != self.num_scales - 1:  # last scale is already at the latent size
            h = F.interpolate(h, size=(s, s), mode="bicubic")
        return self.quant_resi[k](h.contiguous())

    def downsample(self, f: Tensor, k: int) -> Tensor:
        pn = self.patch_nums[k]
        return f if pn == f.shape[-1] else F.interpolate(f, size=(pn, pn), mode="area")

    @torch.no_grad()
    def f_to_idx_fhat(self, f: Tensor) -> tuple[list[Tensor], Tensor]:
        """Residual encode of a latent f (B, C, h, w) -> (ids per scale, final f_hat)."""
        f_hat = torch.zeros_like(f)
        f_rest = f.clone()
        ids: list[Tensor] = []
        for k in range(self.num_scales):
            idx = self.nearest(self.downsample(f_rest, k))
            h = self.code_map(k, idx)
            f_hat = f_hat + h
            f_rest = f_rest - h
            ids.append(idx)
        return ids, f_hat

    def forward(self, f: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Training quantization of f (B, C, h, w) -> (straight-through f_hat, vq_loss, usage).

        As VAR: codes are chosen on the detached residual; the loss at each scale compares the
        running f_hat with f (commitment beta*|sg(f_hat) - f|^2 to the encoder, codebook
        |f_hat - sg(f)|^2 to the embedding and phi convs) and is averaged over the scales."""
        f_ng = f.detach()
        f_rest = f_ng.clone()
        f_hat = torch.zeros_like(f)
        vq_loss = f.new_zeros(())
        hits_SV = f.new_zeros(self.num_scales, self.vocab_size, dtype=torch.float32)
        for k in range(self.num_scales):
            idx = self.nearest(self.downsample(f_rest, k))
            hits_SV[k] = torch.bincount(idx.flatten(), minlength=self.vocab_size).float()
            h = self.code_map(k, idx)
            f_hat = f_hat + h
            f_rest = f_rest - h.detach()
            vq_loss = vq_loss + self.beta * F.mse_loss(f_hat.detach(), f) + F.mse_loss(f_hat, f_ng)
        vq_loss = vq_loss / self.num_scales
        if self.training:
            with torch.no_grad():
                ema = self.ema_vocab_hit_SV
                fresh = ema.sum(1, keepdim=True) == 0  # first batch: take the counts as they are
                hits = hits_SV.to(ema.dtype)
                ema.copy_(torch.where(fresh, hits, ema * 0.99 + hits * 0.01))
        usage = (hits_SV.sum(0) > 0).float().mean()
        f_hat_st = f_hat.detach() - f_ng + f  # value of f_hat, gradient of f
        return f_hat_st, vq_loss, usage


# ----------------------------------------------------------------------------------------------
# the tokenizer


def masks_to_images(masks: Tensor, size: int | None = None) -> Tensor:
    """Masks (B, H, W) bool or float in [0, 1] -> images (B, 3, H, W) in [-1, 1], white object on
    black. With `size`, resized (bilinear, antialiased) to (size, size)."""
    if masks.dim() != 3:
        raise ValueError(f"masks must be (B, H, W), got shape {tuple(masks.shape)}")
    x = masks if masks.is_floating_point() else masks.float()
    x = x.unsqueeze(1)  # (B, 1, H, W)
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x.clamp(0, 1) * 2 - 1).expand(-1, 3, -1, -1).contiguous()


def images_to_mask_probs(img: Tensor) -> Tensor:
    """Decoded images (B, 3, H, W) in [-1, 1] -> grey (B, H, W) in [0, 1] (channel mean)."""
    if img.dim() != 4 or img.shape[1] != 3:
        raise ValueError(f"img must be (B, 3, H, W), got shape {tuple(img.shape)}")
    return ((img.mean(dim=1) + 1) / 2).clamp(0, 1)


class MultiScaleVQVAE(nn.Module):
    """VAR multi-scale VQ-VAE. Images (B, 3, H, W) in [-1, 1]; ids: list of K LongTensors
    (B, pn_k^2), row-major; f_hat: (B, Cvae, h, w)."""

    masks_to_images = staticmethod(masks_to_images)
    images_to_mask_probs = staticmethod(images_to_mask_probs)

    def __init__(self, cfg: VQVAEConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg if cfg is not None else VQVAEConfig()
        # registration order = VAR's key order: encoder, decoder, quantize, quant_conv, post_quant_conv
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = MultiScaleQuantizer(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 3, 1, 1)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 3, 1, 1)

    @classmethod
    def from_checkpoint(cls, path: str | Path, cfg: VQVAEConfig | None = None, prefix: str = "") -> MultiScaleVQVAE:
        """Load VAR weights strictly: a `.pth` state dict (e.g. vae_ch160v4096z32.pth) or a
        `.safetensors` file; `prefix` selects a sub-tree (e.g. "image_tokenizer." or "vqvae.")."""
        path = Path(path)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        if prefix:
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        model = cls(cfg)
        model.load_state_dict(sd, strict=True)
        return model.eval()

    # -- checks --------------------------------------------------------------------------------
    def _check_img(self, img: Tensor) -> None:
        s = self.cfg.image_size
        if img.dim() != 4 or tuple(img.shape[1:]) != (3, s, s):
            raise ValueError(f"expected images (B, 3, {s}, {s}), got shape {tuple(img.shape)}")

    def _check_ids(self, ids: list[Tensor], n: int) -> list[Tensor]:
        if len(ids) < n:
            raise ValueError(f"expected ids for at least {n} scales, got {len(ids)}")
        B = ids[0].shape[0]
        out = []
        for k in range(n):
            pn = self.cfg.patch_nums[k]
            if ids[k].shape[0] != B or ids[k].numel() != B * pn * pn:
                raise ValueError(f"scale {k}: expected ids (B={B}, {pn * pn}), got {tuple(ids[k].shape)}")
            out.append(ids[k].reshape(B, pn * pn))
        return out

    # -- encode / decode -----------------------------------------------------------------------
    def img_to_latent(self, img: Tensor) -> Tensor:
        """(B, 3, H, W) -> continuous latent f (B, Cvae, h, w), before quantization."""
        self._check_img(img)
        return self.quant_conv(self.encoder(img))

    @torch.no_grad()
    def img_to_idx_fhat(self, img: Tensor) -> tuple[list[Tensor], Tensor]:
        """(B, 3, H, W) -> (ids per scale, final f_hat (B, Cvae, h, w))."""
        return self.quantize.f_to_idx_fhat(self.img_to_latent(img))

    @torch.no_grad()
    def img_to_idx(self, img: Tensor) -> list[Tensor]:
        """(B, 3, H, W) -> K LongTensors (B, pn_k^2)."""
        return self.img_to_idx_fhat(img)[0]

    @torch.no_grad()
    def idx_to_fhat(self, ids: list[Tensor]) -> Tensor:
        """K id tensors -> f_hat (B, Cvae, h, w) = sum_k phi_k(upsampled codes of scale k)."""
        ids = self._check_ids(ids, self.cfg.num_scales)
        f_hat = self.empty_fhat(ids[0].shape[0])
        for k, idx in enumerate(ids):
            f_hat = f_hat + self.quantize.code_map(k, idx)
        return f_hat

    @torch.no_grad()
    def fhat_to_img(self, f_hat: Tensor) -> Tensor:
        """f_hat (B, Cvae, h, w) -> images (B, 3, H, W) clamped to [-1, 1]."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp_(-1, 1)

    @torch.no_grad()
    def idx_to_img(self, ids: list[Tensor]) -> Tensor:
        return self.fhat_to_img(self.idx_to_fhat(ids))

    # -- next-scale interface for the LLM ------------------------------------------------------
    def empty_fhat(self, B: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> Tensor:
        """Zero f_hat (B, Cvae, h, w); device/dtype default to the module's parameters."""
        w = self.quant_conv.weight
        s = self.cfg.latent_size
        return torch.zeros(B, self.cfg.z_channels, s, s, device=w.device if device is None else device,
                           dtype=w.dtype if dtype is None else dtype)

    @torch.no_grad()
    def next_scale_step(self, k: int, f_hat: Tensor, idx_k: Tensor) -> tuple[Tensor, Tensor | None]:
        """Generation step: add scale k's ids (B, pn_k^2) to f_hat (not in place).

        Returns (f_hat, next_inputs) with next_inputs = area-downsample(f_hat, pn_{k+1}) as
        (B, pn_{k+1}^2, Cvae), or None after the last scale."""
        K = self.cfg.num_scales
        if not 0 <= k < K:
            raise ValueError(f"scale index {k} out of range [0, {K})")
        pn = self.cfg.patch_nums[k]
        B = f_hat.shape[0]
        if idx_k.numel() != B * pn * pn:
            raise ValueError(f"scale {k}: expected ids (B={B}, {pn * pn}), got {tuple(idx_k.shape)}")
        f_hat = f_hat + self.quantize.code_map(k, idx_k.reshape(B, pn * pn))
        if k == K - 1:
            return f_hat, None
        nxt = self.quantize.downsample(f_hat, k + 1)  # (B, C, pn', pn')
        return f_hat, nxt.flatten(2).transpose(1, 2)  # (B, pn'^2, C)

    @torch.no_grad()
    def idx_to_teacher_inputs(self, ids: list[Tensor]) -> Tensor:
        """Teacher forcing inputs (B, L - pn_0^2, Cvae): for k < K-1 the area-downsampled f_hat after
        scale k at pn_{k+1}, row-major, concatenated. The last scale's ids are not needed."""
        K = self.cfg.num_scales
        B = ids[0].shape[0] if len(ids) else 0  # before trimming: K=1 keeps no scale but has a batch
        ids = self._check_ids(ids, K - 1)
        f_hat = self.empty_fhat(B)
        chunks = []
        for k in range(K - 1):
            f_hat, nxt = self.next_scale_step(k, f_hat, ids[k])
            chunks.append(nxt)
        if not chunks:  # single-scale tokenizer: nothing but the first slot
            return f_hat.new_zeros(B, 0, self.cfg.z_channels)
        return torch.cat(chunks, dim=1)

    # -- flat <-> per-scale ids ----------------------------------------------------------------
    def ids_to_flat(self, ids: list[Tensor]) -> Tensor:
        """K id tensors -> (B, L) LongTensor, scale by scale."""
        return torch.cat(self._check_ids(ids, self.cfg.num_scales), dim=1)

    def flat_to_ids(self, flat: Tensor) -> list[Tensor]:
        """(B, L) -> K id tensors (B, pn_k^2)."""
        if flat.dim() != 2 or flat.shape[1] != self.cfg.seq_len:
            raise ValueError(f"expected (B, {self.cfg.seq_len}), got {tuple(flat.shape)}")
        return [flat[:, b:e] for b, e in self.cfg.scale_slices]

    # -- training ------------------------------------------------------------------------------
    def forward(self, img: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Training pass: img (B, 3, H, W) -> (recon (B, 3, H, W) unclamped so its gradient is not cut,
        vq_loss scalar, fraction of the codebook hit by this batch over all scales)."""
        f = self.img_to_latent(img)
        f_hat, vq_loss, usage = self.quantize(f)
        recon = self.decoder(self.post_quant_conv(f_hat))
        return recon, vq_loss, usage
