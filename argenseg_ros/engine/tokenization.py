"""Tokens of ARGenSeg: chat markers, image/mask markers and one token per VQ-VAE code.

The released 8B model keeps InternVL2.5's sentencepiece vocabulary and appends its ARGenSeg tokens
(conversion keeps every id). The embedded tabletop model uses a small byte-level BPE trained here on
the tabletop grammar, with the same special tokens, so both go through the same generation code.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IMG_START = "<img>"
IMG_END = "</img>"
IMG_CONTEXT = "<IMG_CONTEXT>"
MASK = "<mask>"
GE_START = "<ge_start>"
GE_END = "<ge_end>"
MASK_CONTEXT = "<MASK_CONTEXT>"
PAD = "<pad>"

# Order matters only for the tabletop tokenizer (ids are assigned in this order after the BPE vocab).
SPECIAL_TOKENS: tuple[str, ...] = (
    PAD, IM_START, IM_END, IMG_START, IMG_END, IMG_CONTEXT, MASK, GE_START, GE_END, MASK_CONTEXT,
)

# Keys of `ARGenSegConfig.token_ids`: the ids generation and training need, resolved once at build time.
TOKEN_ID_KEYS: dict[str, str] = {
    "pad": PAD,
    "eos": IM_END,
    "img_start": IMG_START,
    "img_end": IMG_END,
    "img_context": IMG_CONTEXT,
    "mask": MASK,
    "ge_start": GE_START,
    "ge_end": GE_END,
    "mask_context": MASK_CONTEXT,
}


def visual_token(index: int) -> str:
    """Text form of VQ code `index`, as in the ARGenSeg release."""
    return f"<visual token {index:06d}>"


def resolve_token_ids(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> dict[str, int]:
    """Ids of the special tokens and the first visual token; checks that the visual block is contiguous."""
    ids: dict[str, int] = {}
    for key, text in TOKEN_ID_KEYS.items():
        token_id = tokenizer.convert_tokens_to_ids(text)
        if token_id is None or token_id == tokenizer.unk_token_id:
            if key == "pad":  # the 8B vocabulary has no dedicated pad token: eos pads, masked out anyway
                continue
            raise ValueError(f"tokenizer has no {text!r} token")
        ids[key] = int(token_id)
    ids.setdefault("pad", ids["eos"])
    offset = tokenizer.convert_tokens_to_ids(visual_token(0))
    last = tokenizer.convert_tokens_to_ids(visual_token(vocab_size - 1))
    if offset is None or last != offset + vocab_size - 1:
        raise ValueError(f"tokenizer lacks a contiguous block of {vocab_size} visual tokens")
    ids["visual_offset"] = int(offset)
    return ids


def build_tabletop_tokenizer(corpus: Iterable[str], codebook_size: int,
                             bpe_vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE learnt on `corpus`, then the special tokens, then `codebook_size` visual tokens.

    Byte-level so that any user sentence tokenizes (unknown words fall back to bytes) and decoding
    reproduces replies exactly, spaces and punctuation included.
    """
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(list(corpus), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe)
    tokenizer.add_special_tokens({
        "pad_token": PAD,
        "eos_token": IM_END,
        "additional_special_tokens": [t for t in SPECIAL_TOKENS if t not in (PAD, IM_END)],
    })
    # Visual tokens are added as special so they never merge with text and are skipped when a
    # reply is rendered as text.
    tokenizer.add_tokens([visual_token(i) for i in range(codebook_size)], special_tokens=True)
    return tokenizer


def control_tokens(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Every token that text must never turn into: the tokenizer's added tokens (chat and image/mask
    markers, visual tokens, InternLM2's <s> </s> <unk> ...) and its special tokens; text -> id."""
    tokens = {str(t): int(i) for t, i in tokenizer.get_added_vocab().items()}
    tokens.update({str(t): int(i) for t, i in zip(tokenizer.all_special_tokens, tokenizer.all_special_ids)})
    return tokens
