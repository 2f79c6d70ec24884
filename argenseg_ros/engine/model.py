"""ARGenSeg: a native transformers InternVL whose LLM also emits multi-scale VQ-VAE tokens.

The backbone is `InternVLForConditionalGeneration` built from its config (no remote code). Next to
it live the three next-scale modules of the release (`word_embed`, `pos_1LC`, `lvl_embed`) and the
frozen VQ-VAE. One head predicts text and visual tokens: the visual logits are the last `V` rows.

Sequence layout of one mask (L = sum(pn^2) slots, K scales), shared by training and generation:

    ... text  <ge_start>  [scale-1 inputs] ... [scale-(K-1) inputs]  <ge_end>  text ...
    slot:        0          1 .. pn_1^2          ..            L-1

Slot 0 (`<ge_start>`) carries its bare token embedding, as in the release (the shipped tabletop
model was trained with `lvl_embed(0) + pos_1LC[0]` added there: config `ge_start_slot_embedding`)
and predicts scale 0; every slot of scale k >= 1 carries `word_embed(area-downsampled f_hat)
+ lvl_embed(k) + pos_1LC[slot]` and predicts the code at the same place of scale k. Attention is
plain causal over the whole sequence, so one forward per scale with a KV cache reproduces the
teacher-forced forward exactly.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import InternVLForConditionalGeneration, PreTrainedTokenizerFast

from .config import (
    CONFIG_FILE,
    GE_START_WITH_LEVEL_AND_POSITION,
    MODEL_TYPE,
    TEXT_FIRST_PROMPT_TEMPLATE,
    ARGenSegConfig,
    ModelLoadError,
    build_config,
    format_prompt,
    prompt_token_ids,
)
from .imaging import image_to_pixel_values  # noqa: F401  (the trainer imports it from here)
from .vqvae import MultiScaleVQVAE, VQVAEConfig

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"   # sharded format: index + model-0000i-of-0000n.safetensors
TOKENIZER_FILE = "tokenizer.json"


def causal_attention_mask(key_valid_BT: torch.Tensor, q_len: int) -> torch.Tensor:
    """Boolean (B, 1, q_len, T) mask, True = attend: causal over cache order, padded keys hidden.

    The queries are the last `q_len` keys. A query always sees itself so padded query rows never
    produce NaNs (their outputs are ignored).
    """
    B, T = key_valid_BT.shape
    q_idx = torch.arange(T - q_len, T, device=key_valid_BT.device)[:, None]   # (q, 1)
    k_idx = torch.arange(T, device=key_valid_BT.device)[None, :]              # (1, T)
    allowed = (k_idx <= q_idx)[None] & key_valid_BT[:, None, :]               # (B, q, T)
    return (allowed | (k_idx == q_idx)[None])[:, None]


class ARGenSegModel(nn.Module):
    def __init__(self, config: ARGenSegConfig):
        super().__init__()
        self.config = config
        backbone_cfg = config.backbone_config()
        vq_cfg = config.vqvae_config()
        self.backbone = InternVLForConditionalGeneration(backbone_cfg)
        hidden = backbone_cfg.text_config.hidden_size
        self.patch_nums: tuple[int, ...] = tuple(vq_cfg.patch_nums)
        L = sum(pn * pn for pn in self.patch_nums)
        self.word_embed = nn.Linear(vq_cfg.z_channels, hidden)
        self.pos_1LC = nn.Parameter(torch.randn(1, L, hidden) * 0.02)
        self.lvl_embed = nn.Embedding(len(self.patch_nums), hidden)
        self.vqvae = MultiScaleVQVAE(vq_cfg)
        self.vqvae.requires_grad_(False)
        # slot -> scale, and the slot range of each scale; derived, so not saved.
        scale_of_slot = torch.cat([torch.full((pn * pn,), k) for k, pn in enumerate(self.patch_nums)])
        self.register_buffer("scale_of_slot", scale_of_slot, persistent=False)
        self.scale_begin: tuple[int, ...] = tuple(
            int(sum(p * p for p in self.patch_nums[:k])) for k in range(len(self.patch_nums)))
        # the first slot that gets lvl_embed + pos_1LC: 1 in the release, 0 for the shipped tabletop model
        self.first_positioned_slot = 0 if config.ge_start_slot_embedding == GE_START_WITH_LEVEL_AND_POSITION else 1
        self._check_token_layout()

    # ---- sizes ---------------------------------------------------------------------------------
    @property
    def codebook_size(self) -> int:
        return self.vqvae.cfg.vocab_size

    @property
    def num_slots(self) -> int:
        return self.pos_1LC.shape[1]

    @property
    def image_size(self) -> int:
        size = self.backbone.config.vision_config.image_size
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    @property
    def num_image_tokens(self) -> int:
        vc = self.backbone.config.vision_config
        patch = vc.patch_size[0] if isinstance(vc.patch_size, (list, tuple)) else vc.patch_size
        side = self.image_size // patch
        return int((side * self.backbone.config.downsample_ratio) ** 2)

    @property
    def vocab_size(self) -> int:
        return self.backbone.lm_head.out_features

    def _check_token_layout(self) -> None:
        ids = self.config.token_ids
        if ids.get("visual_offset", -1) + self.codebook_size != self.vocab_size:
            raise ValueError(
                f"visual tokens must be the last {self.codebook_size} of the {self.vocab_size}-token "
                f"head, but visual_offset is {ids.get('visual_offset')}")
        if ids.get("img_context") != self.backbone.config.image_token_id:
            raise ValueError("token_ids['img_context'] differs from the backbone's image_token_id")

    # ---- prompt ----------------------------------------------------------------------------------
    def build_prompt(self, instruction: str) -> str:
        return format_prompt(self.config, instruction, self.num_image_tokens)

    def prompt_ids(self, tokenizer: PreTrainedTokenizerFast, instruction: str) -> list[int]:
        """The prompt as the model was trained on it: the config's BOS, then the prompt text."""
        return prompt_token_ids(self.config, tokenizer, instruction, self.num_image_tokens)

    # ---- embeddings ------------------------------------------------------------------------------
    def image_features(self, pixel_values_B3SS: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, N_img, C) projected image tokens."""
        out = self.backbone.model.get_image_features(pixel_values=pixel_values_B3SS, return_dict=True)
        return out.pooler_output

    def embed(self, input_ids_BT: torch.Tensor, slot_BT: torch.Tensor | None = None,
              slot_inputs_BTC: torch.Tensor | None = None,
              image_features_BNC: torch.Tensor | None = None) -> torch.Tensor:
        """Input embeddings of a chunk of the sequence.

        slot_BT: mask slot index (0..L-1) of each position, -1 for text. Slot 0 keeps its token
        embedding (<ge_start>); slots >= 1 take `word_embed(slot_inputs)` (Cvae-d next-scale inputs).
        `lvl_embed + pos_1LC` is added from slot `first_positioned_slot` on.
        image_features_BNC replace the <IMG_CONTEXT> positions, in order.
        """
        embeds = self.backbone.get_input_embeddings()(input_ids_BT)
        if image_features_BNC is not None:
            is_img = (input_ids_BT == self.config.token_ids["img_context"])[..., None]
            embeds = embeds.masked_scatter(is_img, image_features_BNC.to(embeds.dtype))
        if slot_BT is not None:
            slot = slot_BT.clamp(min=0)
            extra = self.pos_1LC[0, slot] + self.lvl_embed(self.scale_of_slot[slot])
            if slot_inputs_BTC is not None:
                visual = self.word_embed(slot_inputs_BTC.to(embeds.dtype))
                embeds = torch.where((slot_BT > 0)[..., None], visual, embeds)
            positioned = slot_BT >= self.first_positioned_slot          # text (-1) never
            embeds = torch.where(positioned[..., None], embeds + extra, embeds)
        return embeds

    # ---- decoder ---------------------------------------------------------------------------------
    def decode(self, inputs_embeds_BTC: torch.Tensor, key_valid_BT: torch.Tensor | None,
               position_ids_BT: torch.Tensor, cache: Any = None,
               output_hidden_states: bool = False) -> Any:
        """LLM forward over one chunk; `key_valid_BT` covers the cache plus this chunk.

        `key_valid_BT=None` means plain causal attention over the chunk alone: right-padded
        teacher-forced batches need no mask (valid tokens never look right), which lets SDPA use
        its fused causal kernels.
        """
        mask = None
        if key_valid_BT is not None:
            mask = causal_attention_mask(key_valid_BT, inputs_embeds_BTC.shape[1])
            if self.backbone.config.text_config._attn_implementation == "eager":
                mask = torch.zeros(mask.shape, dtype=inputs_embeds_BTC.dtype, device=mask.device).masked_fill(
                    ~mask, torch.finfo(inputs_embeds_BTC.dtype).min)
        return self.backbone.model.language_model(
            inputs_embeds=inputs_embeds_BTC, attention_mask=mask, position_ids=position_ids_BT,
            cache=cache, use_cache=cache is not None, output_hidden_states=output_hidden_states)

    def logits(self, hidden_BTC: torch.Tensor) -> torch.Tensor:
        return self.backbone.lm_head(hidden_BTC)

    def visual_logits(self, hidden_BTC: torch.Tensor) -> torch.Tensor:
        """Only the last V rows of the head: a mask slot never needs the text logits."""
        weight = self.backbone.lm_head.weight[-self.codebook_size:]
        return F.linear(hidden_BTC, weight)

    def text_logits(self, hidden_BC: torch.Tensor) -> torch.Tensor:
        """Head without the visual rows: text positions never emit a visual token.

        A deliberate difference from the reference, whose greedy text step is over all logits: a
        visual id outside a <ge_start> block is meaningless and would be shown as text."""
        weight = self.backbone.lm_head.weight[: self.vocab_size - self.codebook_size]
        return F.linear(hidden_BC, weight)

    # ---- native format ---------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, tokenizer: PreTrainedTokenizerFast,
                        storage_dtype: torch.dtype | None = None) -> None:
        """Write the native format; `storage_dtype` (e.g. float16) halves the file of a shipped model."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2, ensure_ascii=False))
        state = {k: v.detach().to(storage_dtype if storage_dtype and v.is_floating_point() else v.dtype)
                 .contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt", "model_type": MODEL_TYPE})
        tokenizer.save_pretrained(str(directory))

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> tuple["ARGenSegModel", PreTrainedTokenizerFast]:
        """Load a native model directory from local disk only."""
        directory = Path(directory).expanduser()
        if not directory.is_dir():
            raise ModelLoadError(f"model directory {str(directory)!r} does not exist")
        missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE) if not (directory / f).is_file()]
        if WEIGHTS_FILE in missing and (directory / WEIGHTS_INDEX_FILE).is_file():
            missing.remove(WEIGHTS_FILE)   # sharded weights
        if missing:
            raise ModelLoadError(f"model directory {str(directory)!r} lacks {', '.join(missing)}")
        try:
            config = ARGenSegConfig.from_dict(json.loads((directory / CONFIG_FILE).read_text()))
        except (json.JSONDecodeError, TypeError) as err:
            raise ModelLoadError(f"{directory / CONFIG_FILE} is not a valid ARGenSeg config: {err}") from err
        with _default_dtype(dtype), torch.device(device):
            model = cls(config)
        _load_safetensors_strict(model, weight_files(directory), device, dtype)
        model.eval()
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(directory))
        _check_tokenizer(tokenizer, config, model.codebook_size)
        return model, tokenizer


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def weight_files(directory: str | Path) -> list[Path]:
    """The safetensors files of a native model directory: the shards named by
    `model.safetensors.index.json` if there is one, else `model.safetensors`."""
    directory = Path(directory)
    index_path = directory / WEIGHTS_INDEX_FILE
    if not index_path.is_file():
        if not (directory / WEIGHTS_FILE).is_file():
            raise ModelLoadError(f"model directory {str(directory)!r} lacks {WEIGHTS_FILE}")
        return [directory / WEIGHTS_FILE]
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise ModelLoadError(f"{index_path} is not a valid safetensors index: {err}") from err
    if not names or any(Path(n).name != n for n in names):
        raise ModelLoadError(f"{index_path} must name shard files inside {str(directory)!r}")
    missing = [n for n in names if not (directory / n).is_file()]
    if missing:
        raise ModelLoadError(f"model directory {str(directory)!r} lacks the shard(s) {', '.join(missing)} "
                             f"named by {WEIGHTS_INDEX_FILE}")
    return [directory / n for n in names]


class ShardedSafetensorsWriter:
    """Streams tensors into safetensors shards of at most `max_shard_bytes` each (a tensor larger
    than that gets a shard of its own), so a model far larger than RAM can be written one tensor at
    a time. `close()` names the shards `model-0000i-of-0000n.safetensors` and writes
    `model.safetensors.index.json`; a single shard is written as plain `model.safetensors`."""

    def __init__(self, directory: str | Path, max_shard_bytes: int, metadata: dict[str, str] | None = None):
        if max_shard_bytes <= 0:
            raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_shard_bytes = int(max_shard_bytes)
        self.metadata = {"format": "pt", "model_type": MODEL_TYPE, **(metadata or {})}
        self.total_bytes = 0
        self._buffer: dict[str, torch.Tensor] = {}
        self._buffer_bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []   # (temporary file, keys)
        self._seen: set[str] = set()

    def add(self, key: str, tensor: torch.Tensor) -> None:
        if key in self._seen:
            raise ValueError(f"tensor {key!r} written twice")
        self._seen.add(key)
        tensor = tensor.detach().contiguous().cpu()
        size = tensor.numel() * tensor.element_size()
        if self._buffer and self._buffer_bytes + size > self.max_shard_bytes:
            self._flush()
        self._buffer[key] = tensor
        self._buffer_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        if not self._buffer:
            return
        path = self.directory / f".model-partial-{len(self._shards) + 1:05d}.safetensors"
        save_file(self._buffer, str(path), metadata=self.metadata)
        self._shards.append((path, list(self._buffer)))
        self._buffer, self._buffer_bytes = {}, 0

    def close(self) -> list[Path]:
        """Write the last shard, give the shards their final names; returns the files written."""
        self._flush()
        n = len(self._shards)
        for stale in [self.directory / WEIGHTS_FILE, self.directory / WEIGHTS_INDEX_FILE,
                      *self.directory.glob("model-*-of-*.safetensors")]:
            stale.unlink(missing_ok=True)
        if n == 0:
            raise ValueError("no tensors were written")
        if n == 1:
            target = self.directory / WEIGHTS_FILE
            self._shards[0][0].replace(target)
            return [target]
        weight_map: dict[str, str] = {}
        files = []
        for i, (tmp, keys) in enumerate(self._shards, start=1):
            target = self.directory / f"model-{i:05d}-of-{n:05d}.safetensors"
            tmp.replace(target)
            files.append(target)
            weight_map.update({k: target.name for k in keys})
        index = {"metadata": {"total_size": self.total_bytes, **self.metadata}, "weight_map": weight_map}
        (self.directory / WEIGHTS_INDEX_FILE).write_text(json.dumps(index, indent=2))
        return files


def _load_safetensors_strict(model: nn.Module, path: Path | list[Path], device: str | torch.device,
                             dtype: torch.dtype) -> None:
    """Copy tensors one at a time (no second full copy in RAM) and report every mismatch.

    `path`: one safetensors file, or the shards of a sharded model (a key may live in one shard only).
    """
    paths = [path] if isinstance(path, Path) else list(path)
    expected = model.state_dict()
    where: dict[str, Path] = {}
    duplicated: list[str] = []
    wrong_shape: list[str] = []
    for p in paths:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            for k in f.keys():
                if k in where:
                    duplicated.append(k)
                where[k] = p
                if k in expected and tuple(f.get_slice(k).get_shape()) != tuple(expected[k].shape):
                    wrong_shape.append(k)
    keys = set(where)
    missing = sorted(set(expected) - keys)
    unexpected = sorted(keys - set(expected))
    if missing or unexpected or wrong_shape or duplicated:
        parts = []
        for label, names in (("missing", missing), ("unexpected", unexpected),
                             ("wrong shape", sorted(wrong_shape)), ("in several shards", sorted(duplicated))):
            if names:
                parts.append(f"{len(names)} {label} (e.g. {', '.join(names[:3])})")
        source = str(paths[0]) if len(paths) == 1 else f"the {len(paths)} shards in {paths[0].parent}"
        raise ModelLoadError(f"{source} does not match its config.json: " + "; ".join(parts))
    with torch.no_grad():
        for p in paths:
            with safe_open(str(p), framework="pt", device="cpu") as f:
                for key in f.keys():
                    target = expected[key]
                    target.copy_(f.get_tensor(key).to(device=target.device, dtype=target.dtype))


def _check_tokenizer(tokenizer: PreTrainedTokenizerFast, config: ARGenSegConfig, codebook_size: int) -> None:
    from .tokenization import resolve_token_ids

    try:
        found = resolve_token_ids(tokenizer, codebook_size)
    except ValueError as err:
        raise ModelLoadError(f"tokenizer does not fit the model: {err}") from err
    wrong = {k: (v, found.get(k)) for k, v in config.token_ids.items() if found.get(k) != v}
    if wrong:
        raise ModelLoadError(f"tokenizer ids differ from config.json token_ids: {wrong}")


def random_model(seed: int = 0, vqvae: VQVAEConfig | None = None, corpus: list[str] | None = None,
                 **sizes: Any) -> tuple["ARGenSegModel", PreTrainedTokenizerFast]:
    """A randomly initialised ARGenSeg of the given sizes (tests, benchmarks, bring-up)."""
    from .tokenization import build_tabletop_tokenizer, resolve_token_ids

    vqvae = vqvae or VQVAEConfig(vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                                 patch_nums=(1, 2, 4), image_size=8, share_quant_resi=2)
    corpus = corpus or ["segment the red cup", "Sure, <mask>.", "I don't see a blue box.", "There are 2 cups."]
    tokenizer = build_tabletop_tokenizer(corpus * 4, vqvae.vocab_size, bpe_vocab_size=300)
    token_ids = resolve_token_ids(tokenizer, vqvae.vocab_size)
    defaults: dict[str, Any] = dict(image_size=56, patch_size=14, vision_hidden=32, vision_layers=1,
                                    vision_heads=2, text_hidden=64, text_layers=2, text_heads=4,
                                    text_kv_heads=2, text_intermediate=128,
                                    prompt_template=TEXT_FIRST_PROMPT_TEMPLATE, name="random")
    defaults.update(sizes)
    torch.manual_seed(seed)
    config = build_config(token_ids, len(tokenizer), vqvae, **defaults)
    return ARGenSegModel(config).eval(), tokenizer
