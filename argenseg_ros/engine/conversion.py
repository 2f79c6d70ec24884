"""Official ARGenSeg-8B checkpoint -> the package's native model directory (no remote code).

The release uses InternVL's "internvl_chat" layout: an InternViT vision tower (`vision_model.*`),
the `mlp1` projector, an InternLM2 LLM with a packed `attention.wqkv` (`language_model.*`), the
next-scale modules `word_embed` / `pos_1LC` / `lvl_embed`, and optionally the VAR VQ-VAE under
`image_tokenizer.*` (else it comes from VAR's `vae_ch160v4096z32.pth`). The native format is
`backbone.<InternVLForConditionalGeneration key>` with a Llama text model (see docs/DESIGN.md).

Conversion streams: every source tensor is read from its (memory-mapped) safetensors shard, renamed
or split, cast, and appended to an output shard that is written as soon as it is full, so RAM holds
about one output shard plus one tensor (8B with 4 GB shards: well under 24 GB). All names and
shapes are checked against the target model (built on the meta device) before anything is written.

The sentencepiece `tokenizer.model` becomes a fast tokenizer that gives the reference's ids
(`release_tokenizer.py`); every added token, special and visual, keeps its original id.

CLI: argenseg-convert --checkpoint DIR [--vqvae vae_ch160v4096z32.pth] --out DIR [--dtype bfloat16]
                      [--shard-size-gb 4]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .config import CONFIG_FILE
from .model import ARGenSegModel, ShardedSafetensorsWriter
from .release import ConversionError, config_from_official
from .release_tokenizer import convert_tokenizer
from .vqvae import VQVAEConfig

__all__ = ["ConversionError", "convert_checkpoint", "plan_conversion", "split_wqkv", "convert_tokenizer", "main"]

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
OFFICIAL_INDEX = "model.safetensors.index.json"
OFFICIAL_SINGLE = "model.safetensors"

# ------------------------------------------------------------------------------------------------
# weights: the plan (names and shapes, no data) and the transforms


def split_wqkv(wqkv: torch.Tensor, num_heads: int, num_kv_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """InternLM2 packed `wqkv` (rows per KV group: its query heads, one key head, one value head)
    -> Llama q_proj, k_proj, v_proj (head-major rows). Works for weights (2-D) and biases (1-D)."""
    groups = num_heads // num_kv_heads
    rows = wqkv.shape[0]
    head_dim = rows // (num_heads + 2 * num_kv_heads)
    if head_dim * (num_heads + 2 * num_kv_heads) != rows or groups * num_kv_heads != num_heads:
        raise ConversionError(f"wqkv with {rows} rows does not hold {num_heads} query + 2x{num_kv_heads} kv heads")
    packed = wqkv.reshape(num_kv_heads, groups + 2, head_dim, *wqkv.shape[1:])
    q = packed[:, :groups].reshape(num_heads * head_dim, *wqkv.shape[1:])
    k = packed[:, groups].reshape(num_kv_heads * head_dim, *wqkv.shape[1:])
    v = packed[:, groups + 1].reshape(num_kv_heads * head_dim, *wqkv.shape[1:])
    return q.contiguous(), k.contiguous(), v.contiguous()


def _split_rows3(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if t.shape[0] % 3:
        raise ConversionError(f"vision qkv with {t.shape[0]} rows cannot be split in three")
    return tuple(x.contiguous() for x in t.chunk(3, dim=0))  # type: ignore[return-value]


V = "backbone.model.vision_tower."
T = "backbone.model.language_model."
_VISION_LAYER = {
    "attn.proj": "attention.projection_layer", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    "norm1": "layernorm_before", "norm2": "layernorm_after", "attn.q_norm": "attention.q_norm",
    "attn.k_norm": "attention.k_norm",
}
_TEXT_LAYER = {
    "attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj", "feed_forward.w3": "mlp.up_proj",
    "feed_forward.w2": "mlp.down_proj", "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
_PROJECTOR = {"0": "layer_norm", "1": "linear_1", "3": "linear_2"}
_SIMPLE = {
    "vision_model.embeddings.class_embedding": V + "embeddings.cls_token",
    "vision_model.embeddings.position_embedding": V + "embeddings.position_embeddings",
    "vision_model.embeddings.patch_embedding.weight": V + "embeddings.patch_embeddings.projection.weight",
    "vision_model.embeddings.patch_embedding.bias": V + "embeddings.patch_embeddings.projection.bias",
    "language_model.model.tok_embeddings.weight": T + "embed_tokens.weight",
    "language_model.model.norm.weight": T + "norm.weight",
    "language_model.output.weight": "backbone.lm_head.weight",
    "word_embed.weight": "word_embed.weight", "word_embed.bias": "word_embed.bias",
    "pos_1LC": "pos_1LC", "lvl_embed.weight": "lvl_embed.weight",
}
_RE_VISION = re.compile(r"vision_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_RE_VISION_LS = re.compile(r"vision_model\.encoder\.layers\.(\d+)\.ls([12])$")
_RE_PROJECTOR = re.compile(r"mlp1\.(\d+)\.(weight|bias)$")
_RE_TEXT = re.compile(r"language_model\.model\.layers\.(\d+)\.(.+)\.(weight|bias)$")

Transform = Callable[[torch.Tensor], list[torch.Tensor]]


@dataclass
class KeyPlan:
    """One source tensor -> one or more native tensors."""
    source: str
    targets: list[str]
    transform: Transform | None = None          # None: the tensor as it is


def map_key(key: str, num_heads: int, num_kv_heads: int) -> KeyPlan | None:
    """The native key(s) of one official key; None for a key this converter does not know."""
    if key in _SIMPLE:
        return KeyPlan(key, [_SIMPLE[key]])
    if key.startswith("image_tokenizer."):
        return KeyPlan(key, ["vqvae." + key[len("image_tokenizer."):]])
    if m := _RE_VISION_LS.fullmatch(key):
        return KeyPlan(key, [f"{V}encoder.layer.{m[1]}.lambda_{m[2]}"])
    if m := _RE_VISION.fullmatch(key):
        layer, name, kind = m.groups()
        base = f"{V}encoder.layer.{layer}."
        if name == "attn.qkv":
            return KeyPlan(key, [f"{base}attention.{p}_proj.{kind}" for p in "qkv"], _split_rows3)
        if name in _VISION_LAYER:
            return KeyPlan(key, [f"{base}{_VISION_LAYER[name]}.{kind}"])
        return None
    if m := _RE_PROJECTOR.fullmatch(key):
        if m[1] in _PROJECTOR:
            return KeyPlan(key, [f"backbone.model.multi_modal_projector.{_PROJECTOR[m[1]]}.{m[2]}"])
        return None
    if m := _RE_TEXT.fullmatch(key):
        layer, name, kind = m.groups()
        base = f"{T}layers.{layer}."
        if name == "attention.wqkv":
            return KeyPlan(key, [f"{base}self_attn.{p}_proj.{kind}" for p in "qkv"],
                           lambda t: list(split_wqkv(t, num_heads, num_kv_heads)))
        if name in _TEXT_LAYER:
            return KeyPlan(key, [f"{base}{_TEXT_LAYER[name]}.{kind}"])
        return None
    return None


@dataclass
class ConversionPlan:
    shards: list[tuple[Path, list[KeyPlan]]]      # official shard -> its keys, in order
    vqvae_from_pth: bool
    skipped: list[str] = field(default_factory=list)


def _official_shards(checkpoint: Path) -> list[Path]:
    index = checkpoint / OFFICIAL_INDEX
    if index.is_file():
        try:
            names = list(dict.fromkeys(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise ConversionError(f"{index} is not a valid safetensors index: {err}") from err
        missing = [n for n in names if not (checkpoint / n).is_file()]
        if missing:
            raise ConversionError(f"{checkpoint} lacks the shard(s) {', '.join(missing)} named by {OFFICIAL_INDEX}")
        return [checkpoint / n for n in names]
    if (checkpoint / OFFICIAL_SINGLE).is_file():
        return [checkpoint / OFFICIAL_SINGLE]
    found = sorted(p.name for p in checkpoint.glob("*.safetensors"))
    hint = f" (found {', '.join(found[:3])} but no index)" if found else ""
    raise ConversionError(f"{checkpoint} has neither {OFFICIAL_INDEX} nor {OFFICIAL_SINGLE}{hint}")


def _shape_after(plan: KeyPlan, shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    if plan.transform is None:
        return [shape]
    return [tuple(t.shape) for t in plan.transform(torch.empty(shape, device="meta"))]


def plan_conversion(checkpoint: Path, expected: dict[str, torch.Size], num_heads: int, num_kv_heads: int,
                    vqvae_keys: dict[str, tuple[int, ...]] | None, skip: re.Pattern[str] | None = None) -> ConversionPlan:
    """Map every official key, check names and shapes against `expected` (native key -> shape).

    `vqvae_keys`: shapes of an external VQ-VAE state dict (`.pth`), or None (then the checkpoint's
    `image_tokenizer.*` keys must provide it). Raises ConversionError listing every problem.
    """
    unknown: list[str] = []
    wrong: list[str] = []
    produced: dict[str, str] = {}
    shards: list[tuple[Path, list[KeyPlan]]] = []
    skipped: list[str] = []
    has_image_tokenizer = False
    for shard in _official_shards(checkpoint):
        plans = []
        with safe_open(str(shard), framework="pt", device="cpu") as f:
            for key in sorted(f.keys()):
                if skip is not None and skip.search(key):
                    skipped.append(key)
                    continue
                plan = map_key(key, num_heads, num_kv_heads)
                if plan is None:
                    unknown.append(key)
                    continue
                if key.startswith("image_tokenizer."):
                    has_image_tokenizer = True
                    if vqvae_keys is not None:    # the .pth wins; the embedded copy is not converted
                        skipped.append(key)
                        continue
                shape = tuple(f.get_slice(key).get_shape())
                try:
                    out_shapes = _shape_after(plan, shape)
                except (ConversionError, RuntimeError) as err:
                    wrong.append(f"{key} {list(shape)}: {err}")
                    continue
                for target, out_shape in zip(plan.targets, out_shapes):
                    if target in produced:
                        wrong.append(f"{target} comes from both {produced[target]} and {key}")
                    produced[target] = key
                    if target not in expected:
                        unknown.append(f"{key} (-> {target}, which the model does not have)")
                    elif tuple(expected[target]) != out_shape:
                        wrong.append(f"{key} {list(shape)} -> {target} {list(out_shape)}, "
                                     f"expected {list(expected[target])}")
                plans.append(plan)
        shards.append((shard, plans))
    if vqvae_keys is not None:
        for key, shape in vqvae_keys.items():
            target = "vqvae." + key
            produced[target] = "--vqvae"
            if target not in expected:
                unknown.append(f"{key} of the --vqvae file")
            elif tuple(expected[target]) != tuple(shape):
                wrong.append(f"{key} {list(shape)} of the --vqvae file, expected {list(expected[target])}")
    missing = sorted(set(expected) - set(produced))
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} unknown key(s): " + "; ".join(unknown[:8]))
    if wrong:
        problems.append(f"{len(wrong)} wrong shape(s): " + "; ".join(wrong[:8]))
    if missing:
        vq_missing = [k for k in missing if k.startswith("vqvae.")]
        hint = (" (the checkpoint has no image_tokenizer.* keys: pass the VAR tokenizer with --vqvae "
                "vae_ch160v4096z32.pth)") if vq_missing and not has_image_tokenizer and vqvae_keys is None else ""
        problems.append(f"{len(missing)} missing key(s): " + ", ".join(missing[:8]) + hint)
    if problems:
        raise ConversionError(f"{checkpoint} does not match the expected ARGenSeg layout:\n  " + "\n  ".join(problems))
    return ConversionPlan(shards=shards, vqvae_from_pth=vqvae_keys is not None, skipped=skipped)


def load_vqvae_state(path: Path) -> dict[str, torch.Tensor]:
    """VAR's `vae_ch160v4096z32.pth`: a plain state dict (or one under 'state_dict' / 'model')."""
    if not path.is_file():
        raise ConversionError(f"VQ-VAE file {str(path)!r} does not exist")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:   # an old (non-zip) torch file cannot be memory-mapped
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling errors come in many types
        raise ConversionError(f"cannot read the VQ-VAE file {path}: {err}") from err
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path} does not hold a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


# ------------------------------------------------------------------------------------------------
# the conversion


def convert_checkpoint(checkpoint: str | Path, out: str | Path, vqvae_path: str | Path | None = None,
                       dtype: str | torch.dtype = "bfloat16", shard_size_gb: float = 4.0,
                       skip_keys: str | None = None, overwrite: bool = False,
                       vqvae_config: VQVAEConfig | None = None,
                       log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Convert an official ARGenSeg checkpoint directory into a native model directory.

    `vqvae_config`: the mask tokenizer's configuration (default: VAR's vae_ch160v4096z32, 256px).

    Returns a summary (counts, sizes, token ids, files). Raises ConversionError with the reason.
    """
    t0 = time.perf_counter()
    say = log or (lambda _msg: None)
    checkpoint, out = Path(checkpoint).expanduser(), Path(out).expanduser()
    torch_dtype = DTYPES.get(dtype) if isinstance(dtype, str) else dtype
    if torch_dtype is None:
        raise ConversionError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if not checkpoint.is_dir():
        raise ConversionError(f"checkpoint directory {str(checkpoint)!r} does not exist")
    if not (checkpoint / "config.json").is_file():
        raise ConversionError(f"{checkpoint} lacks config.json")
    if out.resolve() == checkpoint.resolve():
        raise ConversionError("--out must differ from --checkpoint")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConversionError(f"output directory {str(out)!r} is not empty (pass --overwrite to replace its model files)")
    try:
        official = json.loads((checkpoint / "config.json").read_text())
    except json.JSONDecodeError as err:
        raise ConversionError(f"{checkpoint / 'config.json'} is not valid JSON: {err}") from err

    vq_cfg = vqvae_config or VQVAEConfig.var_ch160v4096z32()
    converted = convert_tokenizer(checkpoint, vq_cfg.vocab_size)
    tokenizer, token_ids, notes = converted.tokenizer, converted.token_ids, list(converted.notes)
    vocab_size = len(tokenizer)
    declared = official.get("llm_config", {}).get("vocab_size")
    if declared is not None and int(declared) != vocab_size:
        notes.append(f"llm_config.vocab_size {declared} differs from the tokenizer's {vocab_size}; "
                     f"the embedding shapes decide")
    config = config_from_official(official, token_ids, vocab_size, vq_cfg, extra={
        "converted_from": checkpoint.name, "source_template": official.get("template"),
        "converter": "argenseg-convert", "vqvae_source": Path(vqvae_path).name if vqvae_path else "image_tokenizer.*"},
        bos_token_id=converted.bos_token_id)
    try:
        with torch.device("meta"):
            meta_model = ARGenSegModel(config)
    except ValueError as err:
        raise ConversionError(f"checkpoint configuration is inconsistent: {err}") from err
    expected = {k: v.shape for k, v in meta_model.state_dict().items()}
    text_cfg = config.backbone_config().text_config
    vq_state = load_vqvae_state(Path(vqvae_path).expanduser()) if vqvae_path else None
    skip = re.compile(skip_keys) if skip_keys else None
    plan = plan_conversion(checkpoint, expected, text_cfg.num_attention_heads, text_cfg.num_key_value_heads,
                           {k: tuple(v.shape) for k, v in vq_state.items()} if vq_state is not None else None, skip)
    say(f"checked {sum(len(p) for _, p in plan.shards)} tensors in {len(plan.shards)} shard(s) "
        f"against {len(expected)} native tensors")

    out.mkdir(parents=True, exist_ok=True)
    writer = ShardedSafetensorsWriter(out, int(shard_size_gb * 1e9), metadata={"source": checkpoint.name})
    written = 0
    with torch.no_grad():
        for shard, plans in plan.shards:
            with safe_open(str(shard), framework="pt", device="cpu") as f:
                for p in plans:
                    tensor = f.get_tensor(p.source)
                    outputs = p.transform(tensor) if p.transform else [tensor]
                    for target, value in zip(p.targets, outputs):
                        writer.add(target, value.to(torch_dtype) if value.is_floating_point() else value)
                        written += 1
                    del tensor, outputs
            say(f"  {shard.name}: {len(plans)} tensors")
        if vq_state is not None:
            for key, value in vq_state.items():
                writer.add("vqvae." + key, value.to(torch_dtype) if value.is_floating_point() else value)
                written += 1
    files = writer.close()
    (out / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2, ensure_ascii=False))
    tokenizer.save_pretrained(str(out))
    summary = {
        "checkpoint": str(checkpoint), "out": str(out), "dtype": str(torch_dtype).replace("torch.", ""),
        "tensors": written, "bytes": writer.total_bytes, "files": [f.name for f in files],
        "vocab_size": vocab_size, "token_ids": token_ids, "bos_token_id": converted.bos_token_id, "vqvae_from": "--vqvae" if vq_state is not None
        else "image_tokenizer.*", "skipped_keys": len(plan.skipped), "notes": notes,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="argenseg-convert",
        description="Convert the official ARGenSeg-8B checkpoint (InternVL internvl_chat layout) into the "
                    "argenseg_ros native model directory. Local files only.")
    parser.add_argument("--checkpoint", required=True, help="official checkpoint directory (config.json, "
                        "safetensors shards + model.safetensors.index.json, tokenizer.model, tokenizer_config.json)")
    parser.add_argument("--vqvae", default=None, help="VAR tokenizer vae_ch160v4096z32.pth (needed when the "
                        "checkpoint has no image_tokenizer.* keys; takes precedence over them)")
    parser.add_argument("--out", required=True, help="output native model directory (new or empty)")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES), help="storage dtype (default bfloat16)")
    parser.add_argument("--shard-size-gb", type=float, default=4.0, help="largest output shard, GB (default 4)")
    parser.add_argument("--skip-keys", default=None, metavar="REGEX",
                        help="drop official keys matching REGEX instead of failing on them as unknown")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    parser.add_argument("--vqvae-config", default=None, metavar="JSON",
                        help="VQVAEConfig of another mask tokenizer as a JSON file (default: vae_ch160v4096z32, 256px)")
    args = parser.parse_args(argv)
    try:
        vq_cfg = None
        if args.vqvae_config:
            try:
                vq_cfg = VQVAEConfig.from_dict(json.loads(Path(args.vqvae_config).read_text()))
            except (OSError, ValueError, TypeError) as err:
                raise ConversionError(f"--vqvae-config {args.vqvae_config}: {err}") from err
        summary = convert_checkpoint(args.checkpoint, args.out, args.vqvae, args.dtype, args.shard_size_gb,
                                     args.skip_keys, args.overwrite, vq_cfg)
    except ConversionError as err:
        print(f"argenseg-convert: error: {err}", file=sys.stderr)
        return 2
    ids = summary["token_ids"]
    print(f"converted {summary['tensors']} tensors ({summary['bytes'] / 1e9:.2f} GB, {summary['dtype']}) "
          f"into {len(summary['files'])} file(s) in {summary['out']} in {summary['seconds']} s")
    print(f"vocabulary {summary['vocab_size']}: eos {ids['eos']}, <IMG_CONTEXT> {ids['img_context']}, "
          f"<ge_start> {ids['ge_start']}, visual tokens {ids['visual_offset']}..{summary['vocab_size'] - 1}, "
          f"prompt BOS {summary['bos_token_id']}; "
          f"VQ-VAE from {summary['vqvae_from']}")
    for note in summary["notes"]:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
