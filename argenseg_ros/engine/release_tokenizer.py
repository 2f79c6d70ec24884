"""The release's sentencepiece tokenizer -> a fast tokenizer that gives the reference's ids.

The reference (InternLM2's slow tokenizer) splits the text at its special and added tokens and
encodes each plain chunk with sentencepiece, which normalises the chunk first: with the model file's
`normalizer_spec.remove_extra_whitespaces` it drops leading/trailing spaces and collapses runs of
them, with `add_dummy_prefix` it prepends "▁" to the chunk. The fast tokenizer does the same: added
tokens are split out first, the normaliser below runs on each remaining chunk, and the BPE model
(transformers' conversion of tokenizer.model, byte fallback) encodes it whole, with no pre-tokenizer.
The BOS the reference adds in front of the prompt is the native config's `bos_token_id`.

tokenizer.model is parsed with sentencepiece's own protobuf schema (sentencepiece_model_pb2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError
from sentencepiece import sentencepiece_model_pb2
from tokenizers import AddedToken, Regex, decoders, normalizers
from transformers import LlamaTokenizerFast, PreTrainedTokenizerFast

from .release import INTERNVL2_5_CHAT_TEMPLATE, ConversionError
from .tokenization import resolve_token_ids, visual_token

SPM_FILE = "tokenizer.model"
SPIECE_SPACE = "▁"


@dataclass
class ReleaseTokenizer:
    tokenizer: PreTrainedTokenizerFast
    token_ids: dict[str, int]            # tokenization.resolve_token_ids
    bos_token_id: int | None             # prepended to every prompt (tokenizer_config's add_bos_token)
    notes: list[str] = field(default_factory=list)


def _spm_proto(path: Path) -> Any:
    """tokenizer.model parsed with sentencepiece's ModelProto (sentencepiece_model_pb2, via protobuf)."""
    if not path.is_file():
        raise ConversionError(f"tokenizer file {str(path)!r} does not exist")
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except DecodeError as err:
        raise ConversionError(f"{path} is not a sentencepiece model: {err}") from err
    if not proto.pieces:
        raise ConversionError(f"{path} holds no sentencepiece pieces (not a sentencepiece model?)")
    return proto


def _added_tokens(checkpoint: Path) -> dict[int, dict[str, Any]]:
    """id -> AddedToken fields, from tokenizer_config.json's added_tokens_decoder and added_tokens.json."""
    added: dict[int, dict[str, Any]] = {}
    config_path = checkpoint / "tokenizer_config.json"
    if config_path.is_file():
        for key, value in json.loads(config_path.read_text()).get("added_tokens_decoder", {}).items():
            added[int(key)] = dict(value)
    json_path = checkpoint / "added_tokens.json"
    if json_path.is_file():
        for content, token_id in json.loads(json_path.read_text()).items():
            old = added.get(int(token_id))
            if old is not None and old["content"] != content:
                raise ConversionError(f"id {token_id} is {old['content']!r} in tokenizer_config.json but "
                                      f"{content!r} in added_tokens.json")
            added.setdefault(int(token_id), {"content": content, "special": True})
    return added


def chunk_normalizer(spec: Any) -> normalizers.Normalizer:
    """sentencepiece's normalisation of one chunk (identity rule): optional whitespace clean-up, the
    optional dummy prefix, spaces -> "▁"."""
    if spec.name not in ("identity", "") or spec.precompiled_charsmap:
        raise ConversionError(f"tokenizer.model normalises with the {spec.name!r} rule; only 'identity' is "
                              "supported (the reference's ids could not be reproduced)")
    steps: list[normalizers.Normalizer] = []
    if spec.remove_extra_whitespaces:   # sentencepiece trims and collapses the ASCII space only
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend(SPIECE_SPACE))
    steps.append(normalizers.Replace(" ", SPIECE_SPACE))
    return normalizers.Sequence(steps)


def convert_tokenizer(checkpoint: Path, codebook_size: int) -> ReleaseTokenizer:
    """The release's sentencepiece tokenizer + added tokens -> a fast tokenizer with the same ids.

    transformers converts tokenizer.model's vocabulary and merges; the chunk normaliser follows the
    model file's flags; the added tokens of tokenizer_config.json / added_tokens.json are appended in
    id order, and every one is checked to keep its id.
    """
    spm_path = checkpoint / SPM_FILE
    proto = _spm_proto(spm_path)
    pieces = [p.piece for p in proto.pieces]
    n = len(pieces)
    first: dict[str, int] = {}
    for i, piece in enumerate(pieces):
        if piece in first:
            raise ConversionError(f"tokenizer.model holds piece {piece!r} twice (ids {first[piece]} and {i})")
        first[piece] = i
    if proto.trainer_spec.model_type != proto.trainer_spec.BPE:
        kind = proto.trainer_spec.ModelType.Name(proto.trainer_spec.model_type)
        raise ConversionError(f"tokenizer.model is a sentencepiece {kind} model; the Llama tokenizer needs BPE")

    def piece(index: int) -> str | None:
        return pieces[index] if 0 <= index < n else None

    spec = proto.trainer_spec
    prefix = bool(proto.normalizer_spec.add_dummy_prefix)
    try:
        native = LlamaTokenizerFast.convert_to_native_format(vocab_file=str(spm_path), legacy=False,
                                                             add_prefix_space=False)
        tokenizer = LlamaTokenizerFast(**native, unk_token=piece(spec.unk_id), bos_token=piece(spec.bos_id),
                                       eos_token=piece(spec.eos_id), clean_up_tokenization_spaces=False)
    except Exception as err:  # transformers / sentencepiece raise several types here
        raise ConversionError(f"transformers could not convert {spm_path}: {err}") from err
    if tokenizer.vocab_size != n:
        raise ConversionError(f"the converted vocabulary has {tokenizer.vocab_size} tokens, tokenizer.model {n} pieces")
    backend = tokenizer.backend_tokenizer
    backend.normalizer = chunk_normalizer(proto.normalizer_spec)
    backend.pre_tokenizer = None        # sentencepiece encodes each chunk whole
    backend.decoder = decoders.Sequence(
        [decoders.Replace(SPIECE_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
        + ([decoders.Strip(content=" ", left=1)] if prefix else []))

    added = _added_tokens(checkpoint)
    for token_id, info in sorted(added.items()):
        if token_id < n and info["content"] != pieces[token_id]:
            raise ConversionError(f"added token {info['content']!r} claims id {token_id}, which tokenizer.model "
                                  f"gives to {pieces[token_id]!r}")
    beyond = sorted(i for i in added if i >= n)
    if beyond and beyond != list(range(n, n + len(beyond))):
        gap = next(i for k, i in enumerate(beyond) if i != n + k)
        raise ConversionError(f"added token ids must follow tokenizer.model's {n} pieces without gaps; "
                              f"id {gap} comes after {n + beyond.index(gap) - 1}")
    # In id order, in runs of equal specialness; pieces of tokenizer.model only take the config's flags.
    run: list[AddedToken] = []
    run_special: bool | None = None

    def flush() -> None:
        if run:
            tokenizer.add_tokens(list(run), special_tokens=bool(run_special))
            run.clear()

    for _, info in sorted(added.items()):
        special = bool(info.get("special", True))
        if special != run_special:
            flush()
            run_special = special
        run.append(AddedToken(info["content"], single_word=bool(info.get("single_word", False)),
                              lstrip=bool(info.get("lstrip", False)), rstrip=bool(info.get("rstrip", False)),
                              normalized=bool(info.get("normalized", False)), special=special))
    flush()
    moved = [(info["content"], i, tokenizer.convert_tokens_to_ids(info["content"])) for i, info in sorted(added.items())
             if tokenizer.convert_tokens_to_ids(info["content"]) != i]
    if moved:
        raise ConversionError(f"{len(moved)} added token(s) would change id, e.g. " +
                              ", ".join(f"{c!r} {a}->{b}" for c, a, b in moved[:3]))

    tk_config = {}
    if (checkpoint / "tokenizer_config.json").is_file():
        tk_config = json.loads((checkpoint / "tokenizer_config.json").read_text())
    vocab = tokenizer.get_vocab()
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):   # only tokens it already has
        value = tk_config.get(name)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str) and value in vocab:
            setattr(tokenizer, name, value)
    tokenizer.model_max_length = int(tk_config.get("model_max_length", 8192))
    tokenizer.chat_template = tk_config.get("chat_template") or INTERNVL2_5_CHAT_TEMPLATE
    try:
        token_ids = resolve_token_ids(tokenizer, codebook_size)
    except ValueError as err:
        raise ConversionError(f"the release tokenizer lacks ARGenSeg tokens: {err}") from err
    if tokenizer.convert_tokens_to_ids(visual_token(codebook_size)) not in (None, tokenizer.unk_token_id):
        raise ConversionError(f"tokenizer has more than {codebook_size} visual tokens")
    # InternLM2's tokenizer adds its BOS unless told not to (add_bos_token defaults to true).
    bos = tokenizer.bos_token_id if tk_config.get("add_bos_token", True) else None
    notes = [] if bos is not None else ["the prompt gets no BOS (tokenizer_config.json: add_bos_token false "
                                        "or no bos token)"]
    return ReleaseTokenizer(tokenizer=tokenizer, token_ids=token_ids, bos_token_id=bos, notes=notes)
