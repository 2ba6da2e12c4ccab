"""How prompt tokens are shown and matched: one rule for every picture, table and lookup.

Token labels are the tokenizer's own strings: CLIP's BPE marks a word's last piece with
``</w>`` (``cat</w>``), SentencePiece and GPT-2 style tokenizers mark a word's start with ``▁`` /
``Ġ``. Plain string work, no tokenizer needed.
"""

from __future__ import annotations

#: Tokens that start a text (each 77-token chunk of a long prompt starts with one).
START_TOKENS = ("<bos>", "<|startoftext|>", "<s>")
#: Tokens that end the text; what follows them is padding (CLIP pads with ``<|endoftext|>``).
END_TOKENS = ("<eos>", "<|endoftext|>", "</s>")
#: Start, end and padding tokens (unetviz's demo tokenizer and CLIP's): never a prompt word.
SPECIAL_TOKENS = frozenset({"<bos>", "<pad>", "<|startoftext|>", *END_TOKENS})
#: The padding token of unetviz's demo tokenizer.
PAD_TOKEN = "<pad>"
#: CLIP's end-of-word mark.
WORD_END = "</w>"


def token_label(token: str) -> str:
    """What a token shows: ``cat</w>`` -> ``cat``."""
    return token.replace(WORD_END, "")


def label_at(tokens: list[str] | None, i: int, missing: str = "#{i}") -> str:
    """The label of token ``i`` of ``tokens``, ``missing`` (``{i}`` filled in) past the end."""
    tokens = tokens or []
    return token_label(tokens[i]) if 0 <= i < len(tokens) else missing.format(i=i)


def match_key(token: str) -> str:
    """A token as a typed word matches it: word marks and case dropped (``Cat</w>`` -> ``cat``,
    ``▁cat`` -> ``cat``)."""
    return token_label(token).replace("Ġ", "").replace("▁", "").strip().lower()


def weight_at(weights: list | None, i: int) -> float:
    """The emphasis weight of token ``i`` (``(word:1.3)`` -> 1.3), from a trace's
    ``meta["token_weights"]``; 1.0 when none was given or it is not a finite number."""
    try:
        w = float((weights or [])[i]) if 0 <= i < len(weights or []) else 1.0
    except (TypeError, ValueError):
        return 1.0
    return w if w == w and abs(w) != float("inf") else 1.0


def weight_badge(weight: float) -> str:
    """`` ×1.3`` for an emphasised token, ``""`` at weight 1 (two decimals at most)."""
    if weight == 1.0:
        return ""
    return f" ×{weight:.2f}".rstrip("0").rstrip(".")
