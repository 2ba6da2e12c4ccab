"""CLIP tokens for the SD pipeline: ids, the tokenizer's own labels, and the word each token
spells (a byte-level BPE decoder merges ``ze`` + ``bra</w>`` into ``zebra``).

:func:`tokenize_prompt` reads prompts as A1111 does (:mod:`unetviz.prompts`): emphasis weights,
any length in 75-token chunks each wrapped in BOS/EOS; :func:`tokenize` is diffusers' single
window (truncated), kept for callers that want exactly that."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


class PromptTruncatedWarning(UserWarning):
    """A prompt longer than the pipeline takes (``MAX_CHUNKS`` chunks); the tail was dropped."""


@dataclass
class Tokens:
    """One tokenized prompt: ids (1, T), labels as the tokenizer makes them, owning words."""

    ids: torch.Tensor
    mask: torch.Tensor
    labels: list[str]
    words: list[str | None]
    truncated: str = ""
    n_tokens: int = 0  # content tokens before truncation (SOS/EOS excluded)
    weights: list[float] = field(default_factory=list)  # emphasis weight per position
    chunks: int = 1  # windows of ``window`` ids concatenated along the sequence
    window: int = 77
    parsed: list[list[Any]] = field(default_factory=list)  # [[text, weight], ...]


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


def tokenize_prompt(
    tokenizer: Any, text: str, *, emphasis: bool = True, min_chunks: int = 1
) -> Tokens:
    """A prompt as A1111 feeds CLIP (:func:`unetviz.prompts.chunk_prompt`): emphasis parsed
    (``emphasis=False``: taken literally), chunks of ``model_max_length - 2`` tokens wrapped in
    BOS/EOS (at most ``MAX_CHUNKS``; the rest is reported in ``truncated``), padded with empty
    chunks to ``min_chunks`` (a negative prompt matches its prompt's length). Every position
    keeps its label, its word (a word cut by a chunk boundary keeps one word) and its weight."""
    from unetviz.prompts import MAX_CHUNKS, chunk_prompt, first_eos

    window = int(tokenizer.model_max_length)
    eos = int(tokenizer.eos_token_id)
    pad = tokenizer.pad_token_id
    ch = chunk_prompt(
        text,
        lambda texts: tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"],
        bos=int(tokenizer.bos_token_id),
        eos=eos,
        pad=eos if pad is None else int(pad),
        comma=tokenizer.get_vocab().get(",</w>"),
        emphasis=emphasis,
        chunk_length=window - 2,
    )
    rest = [i for c in ch.ids[MAX_CHUNKS:] for i in c[1 : first_eos(c, eos)]]
    return chunked_tokens(
        tokenizer,
        ch.ids[:MAX_CHUNKS],
        ch.weights[:MAX_CHUNKS],
        min_chunks=min_chunks,
        n_tokens=ch.token_count,
        parsed=ch.parsed,
        truncated=tokenizer.decode(rest) if rest else "",
    )


def chunked_tokens(
    tokenizer: Any,
    ids: list[list[int]],
    weights: list[list[float]],
    *,
    min_chunks: int = 1,
    n_tokens: int = 0,
    parsed: list[list[Any]] | None = None,
    truncated: str = "",
) -> Tokens:
    """:class:`Tokens` of chunks of ``model_max_length`` ids (BOS, prompt tokens, EOS,
    padding) and their weights, padded with empty chunks to ``min_chunks``: every position
    labelled, prompt tokens grouped into words (a word cut by a chunk boundary stays one)."""
    from unetviz.prompts import first_eos

    window = int(tokenizer.model_max_length)
    eos = int(tokenizer.eos_token_id)
    ids, weights = [list(c) for c in ids], [list(w) for w in weights]
    while len(ids) < min_chunks:  # A1111's empty_chunk: BOS, EOS, padding
        ids.append(tokenizer("", padding="max_length", max_length=window)["input_ids"])
        weights.append([1.0] * window)
    flat = [i for c in ids for i in c]
    labels = tokenizer.convert_ids_to_tokens(flat)
    mask = torch.zeros(1, len(flat), dtype=torch.long)
    words: list[str | None] = [None] * len(labels)
    group: list[int] = []
    for k, chunk in enumerate(ids):
        end = first_eos(chunk, eos)
        mask[0, k * window : k * window + end + 1] = 1
        for i in range(k * window + 1, k * window + end):
            group.append(i)
            if labels[i].endswith("</w>"):
                _assign(tokenizer, labels, words, group)
                group = []
    if group:
        _assign(tokenizer, labels, words, group)
    return Tokens(
        ids=torch.tensor([flat], dtype=torch.long),
        mask=mask,
        labels=labels,
        words=words,
        truncated=truncated,
        n_tokens=n_tokens,
        weights=[float(w) for c in weights for w in c],
        chunks=len(ids),
        window=window,
        parsed=list(parsed or []),
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
