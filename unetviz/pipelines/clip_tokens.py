"""CLIP tokens for the SD pipeline: ids, the tokenizer's own labels, and the word each token
spells (a byte-level BPE decoder merges ``ze`` + ``bra</w>`` into ``zebra``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


class PromptTruncatedWarning(UserWarning):
    """A prompt longer than the text encoder's 75-token window; the tail was dropped."""


@dataclass
class Tokens:
    """One tokenized prompt: ids (1, T), labels as the tokenizer makes them, owning words."""

    ids: torch.Tensor
    mask: torch.Tensor
    labels: list[str]
    words: list[str | None]
    truncated: str = ""
    n_tokens: int = 0  # content tokens before truncation (SOS/EOS excluded)


def tokenize(tokenizer: Any, text: str, max_length: int | None = None) -> Tokens:
    """Tokenize like diffusers (pad to ``max_length``, truncate) and label every position.

    Labels are the tokenizer's own strings (``<|startoftext|>``, ``cat</w>``,
    ``<|endoftext|>``; padding positions keep the pad token's label). ``words`` merges BPE
    pieces into the word they spell (``zebra`` for ``ze`` + ``bra</w>``); specials and padding
    are ``None``.
    """
    max_length = int(max_length or tokenizer.model_max_length)
    enc = tokenizer(
        text, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
    )
    ids = enc.input_ids
    full = tokenizer(text, padding="longest", return_tensors="pt", verbose=False).input_ids[0]
    n_content = max(int(full.shape[0]) - 2, 0)
    truncated = ""
    if full.shape[0] > max_length:
        truncated = tokenizer.decode(full[max_length - 1 : -1])
    labels = tokenizer.convert_ids_to_tokens(ids[0].tolist())
    specials = set(tokenizer.all_special_tokens)
    words: list[str | None] = [None] * len(labels)
    eos_seen = False
    group: list[int] = []
    for i, label in enumerate(labels):
        if eos_seen or label in specials:
            eos_seen = eos_seen or (i > 0 and label == tokenizer.eos_token)
            if group:  # a word cut by truncation
                _assign(tokenizer, labels, words, group)
                group = []
            continue
        group.append(i)
        if label.endswith("</w>"):
            _assign(tokenizer, labels, words, group)
            group = []
    if group:
        _assign(tokenizer, labels, words, group)
    return Tokens(
        ids=ids,
        mask=enc.attention_mask,
        labels=labels,
        words=words,
        truncated=truncated,
        n_tokens=n_content,
    )


def _byte_decoder() -> dict[str, int]:
    """Inverse of CLIP's byte -> printable-unicode table (GPT-2 style byte-level BPE)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


_BYTE_DECODER = _byte_decoder()


def _assign(tokenizer: Any, labels: list[str], words: list[str | None], group: list[int]) -> None:
    text = "".join(labels[i] for i in group).replace("</w>", "")
    try:
        word = bytearray(_BYTE_DECODER[c] for c in text).decode("utf-8", errors="replace")
    except KeyError:  # not a byte-level BPE vocabulary
        word = tokenizer.convert_tokens_to_string([labels[i] for i in group])
    word = word.strip() or None
    for i in group:
        words[i] = word
