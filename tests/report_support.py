"""A long-prompt trace for report layout tests: a real capture of the tiny UNet over a
231-token context (3 A1111 chunks of 77), labelled like a CLIP run of a 160-word prompt."""

from __future__ import annotations

from typing import Any

from tests.conftest import tiny_capture

CHUNK = 75  # prompt tokens per chunk (plus its start and end token)


def long_words(n: int = 160) -> list[str]:
    """``n`` distinct prompt words."""
    return [f"word{i:03d}" for i in range(n)]


def long_trace(n_words: int = 160) -> Any:
    """The tiny capture over ``ceil(n_words / 75) * 77`` tokens, with CLIP-style labels:
    every chunk ``<|startoftext|> words... <|endoftext|>`` padded with end tokens."""
    words = long_words(n_words)
    chunks = [words[i : i + CHUNK] for i in range(0, len(words), CHUNK)]
    tokens: list[str] = []
    labels: list[str | None] = []
    for part in chunks:
        pad = CHUNK - len(part)
        tokens += ["<|startoftext|>", *(w + "</w>" for w in part), *["<|endoftext|>"] * (1 + pad)]
        labels += [None, *part, *[None] * (1 + pad)]
    trace = tiny_capture(timesteps=(900, 100), tokens=len(tokens))
    trace.tokens, trace.words = tokens, labels
    trace.meta.update(prompt=" ".join(words), chunks=len(chunks), seed=0, steps=2)
    return trace
