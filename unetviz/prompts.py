"""What Stable Diffusion users write: A1111 emphasis syntax and prompts longer than 75 tokens.

Tokenizer-agnostic (a tokenizer is passed in as plain callables and ids); torch only for
:func:`apply_emphasis`. Transcribed from AUTOMATIC1111/stable-diffusion-webui:

- :func:`parse_prompt_attention` = ``modules/prompt_parser.py`` ``re_attention``,
  ``re_break`` and ``parse_prompt_attention`` (commit 0674fabd, lines 263-369);
- :func:`chunk_prompt` = ``modules/sd_hijack_clip.py``
  ``FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line`` (commit 00e09382, lines 84-177:
  75-token chunks, each wrapped in BOS/EOS; at a chunk's end the text after the last comma
  within ``comma_padding_backtrack`` = 20 tokens moves to the next chunk, lines 136-152;
  ``BREAK`` starts a new chunk, lines 128-130) plus ``process_tokens``'s padding rule
  (positions after the first EOS become the pad id when it differs, as SD 2 / SDXL's second
  encoder need);
- :func:`apply_emphasis` = ``modules/sd_emphasis.py`` ``EmphasisOriginal.after_transformers``
  (A1111's default "Original": multiply each token's embedding by its weight, then rescale so
  the chunk's mean is unchanged).

A1111 raises on a weight text such as ``(a:1.2.3)`` (``float()`` fails) and lets ``1.1**10000``
overflow to inf; here the first is a :class:`PromptError` naming it, and
:func:`check_weights` refuses weights that are not finite or beyond ``MAX_WEIGHT`` before any
embedding is made.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from unetviz.errors import UnetvizError

if TYPE_CHECKING:
    import torch


class PromptError(UnetvizError, ValueError):
    """A prompt this module cannot turn into tokens (too long, a bad weight); says which."""


#: A1111's chunk: 75 prompt tokens, plus BOS and EOS = CLIP's 77 (sd_hijack_clip.py line 43)
CHUNK_LENGTH = 75
#: A1111's default ``comma_padding_backtrack`` (shared_options.py: 20 tokens)
COMMA_BACKTRACK = 20
#: the longest prompt text accepted (10,000 nested brackets around a word fit)
MAX_PROMPT_CHARS = 24_000
#: the most chunks one prompt may make (4 x 77 = the 308 tokens a trace bundle holds)
MAX_CHUNKS = 4
#: the largest emphasis weight accepted (A1111 has no bound; beyond this CLIP's output is noise)
MAX_WEIGHT = 100.0

#: how a prompt is read: A1111's emphasis syntax, literally (A1111's emphasis "None"), or compel's
SYNTAXES = ("a1111", "literal", "compel")
#: where weights act: on the token embeddings (A1111), or as prompt-to-prompt's attention
#: ``Reweight`` of the same tokens (``unetviz.edits``), the text encoded unweighted
EMPHASIS_MODES = ("embeddings", "reweight")


def check_syntax(syntax: Any) -> str:
    """``syntax`` if it is one of SYNTAXES (``"compel"`` needs the compel package)."""
    if syntax not in SYNTAXES:
        raise PromptError(f"syntax={syntax!r}: expected one of {', '.join(SYNTAXES)}")
    if syntax == "compel":
        try:
            import compel  # noqa: F401
        except ImportError:
            raise PromptError(
                "syntax='compel' needs the compel package: pip install compel"
            ) from None
    return syntax


def check_emphasis(mode: Any) -> str:
    """``mode`` if it is one of EMPHASIS_MODES."""
    if mode not in EMPHASIS_MODES:
        raise PromptError(f"emphasis={mode!r}: expected one of {', '.join(EMPHASIS_MODES)}")
    return mode


# modules/prompt_parser.py lines 263-277 (re.X: the newlines are not part of the pattern)
RE_ATTENTION = re.compile(
    r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:([+-]?[.\d]+)\)|
\)|
]|
[^\\()\[\]:]+|
:
""",
    re.X,
)
# modules/prompt_parser.py line 279
RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)

ROUND = 1.1  # line 321
SQUARE = 1 / 1.1  # line 322


def parse_prompt_attention(text: str) -> list[list[Any]]:
    """``[[text, weight], ...]`` exactly as A1111 parses emphasis (``("BREAK", -1)`` marks a
    BREAK). ``(a)`` x1.1, ``[a]`` /1.1, ``(a:1.3)`` x1.3, ``\\(`` a literal bracket; unbalanced
    brackets apply to the end; runs of equal weight merge.

    >>> parse_prompt_attention("an (important) word")
    [['an ', 1.0], ['important', 1.1], [' word', 1.0]]
    """
    if not isinstance(text, str):
        raise PromptError(f"prompt must be a string, got {type(text).__name__}")
    if len(text) > MAX_PROMPT_CHARS:
        raise PromptError(
            f"prompt has {len(text)} characters: at most {MAX_PROMPT_CHARS} are accepted"
        )
    texts: list[str] = []  # res[i][0] of A1111, kept apart so a range multiply is one slice
    weights: list[float] = []  # res[i][1]
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply_range(start: int, multiplier: float) -> None:  # lines 324-326
        weights[start:] = [w * multiplier for w in weights[start:]]

    for m in RE_ATTENTION.finditer(text):  # lines 328-349
        part, weight = m.group(0), m.group(1)
        if part.startswith("\\"):
            texts.append(part[1:])
            weights.append(1.0)
        elif part == "(":
            round_brackets.append(len(texts))
        elif part == "[":
            square_brackets.append(len(texts))
        elif weight is not None and round_brackets:
            multiply_range(round_brackets.pop(), _weight(weight, m.group(0)))
        elif part == ")" and round_brackets:
            multiply_range(round_brackets.pop(), ROUND)
        elif part == "]" and square_brackets:
            multiply_range(square_brackets.pop(), SQUARE)
        else:
            for i, piece in enumerate(RE_BREAK.split(part)):
                if i > 0:
                    texts.append("BREAK")
                    weights.append(-1)
                texts.append(piece)
                weights.append(1.0)
    for pos in round_brackets:  # lines 351-355
        multiply_range(pos, ROUND)
    for pos in square_brackets:
        multiply_range(pos, SQUARE)
    res = [[t, w] for t, w in zip(texts, weights, strict=True)] or [["", 1.0]]  # 357-358
    merged: list[list[Any]] = []  # lines 360-367: merge runs of identical weights
    for t, w in res:
        if merged and merged[-1][1] == w:
            merged[-1][0] += t
        else:
            merged.append([t, w])
    return merged


def _weight(text: str, where: str) -> float:
    """``float(text)`` as A1111 calls it (line 339), but a PromptError where it would crash."""
    try:
        return float(text)
    except ValueError:
        raise PromptError(
            f"emphasis weight {where!r}: {text!r} is not a number (expected e.g. (word:1.3))"
        ) from None


def check_weights(parsed: Sequence[Sequence[Any]]) -> None:
    """PromptError naming the fragment whose weight is not finite or beyond ``MAX_WEIGHT``
    (``(((...)))`` 10,000 deep is 1.1**10000 = inf); BREAK markers are skipped."""
    for text, weight in parsed:
        if text == "BREAK" and weight == -1:
            continue
        if not (math.isfinite(weight) and abs(weight) <= MAX_WEIGHT):
            raise PromptError(
                f"emphasis weight {weight:g} on {str(text)[:40]!r}: expected a finite weight "
                f"of at most {MAX_WEIGHT:g} (too many nested brackets or too large a number)"
            )


# ---------------------------------------------------------------------------- chunking
@dataclass
class Chunks:
    """A prompt as A1111 feeds CLIP: chunks of ``CHUNK_LENGTH + 2`` ids (BOS, 75 tokens or
    padding, EOS), the weight of every position, and where each prompt token came from."""

    ids: list[list[int]]
    weights: list[list[float]]
    token_count: int  # A1111's count (chunks x 75 for all but the last)
    parsed: list[list[Any]] = field(default_factory=list)

    @property
    def flat_ids(self) -> list[int]:
        return [i for chunk in self.ids for i in chunk]

    @property
    def flat_weights(self) -> list[float]:
        return [w for chunk in self.weights for w in chunk]


def chunk_prompt(
    prompt: str,
    tokenize: Callable[[list[str]], list[list[int]]],
    *,
    bos: int,
    eos: int,
    pad: int,
    comma: int | None,
    emphasis: bool = True,
    chunk_length: int = CHUNK_LENGTH,
    backtrack: int = COMMA_BACKTRACK,
) -> Chunks:
    """A1111's ``tokenize_line``: the prompt parsed for emphasis (``emphasis=False``: taken
    literally, A1111's "None"), each fragment tokenized without specials by ``tokenize``, packed
    into chunks with the comma backtrack, each chunk padded and wrapped in BOS/EOS."""
    parsed = parse_prompt_attention(prompt) if emphasis else [[prompt, 1.0]]
    check_weights(parsed)
    tokenized = tokenize([text for text, _ in parsed])
    chunks: list[tuple[list[int], list[float]]] = []
    tokens: list[int] = []
    mults: list[float] = []
    count = 0
    last_comma = -1

    def next_chunk(is_last: bool = False) -> None:  # lines 103-125
        nonlocal tokens, mults, count, last_comma
        count += len(tokens) if is_last else chunk_length
        to_add = chunk_length - len(tokens)
        if to_add > 0:
            tokens += [eos] * to_add
            mults += [1.0] * to_add
        chunks.append(([bos, *tokens, eos], [1.0, *mults, 1.0]))
        tokens, mults, last_comma = [], [], -1

    for ids, (text, weight) in zip(tokenized, parsed, strict=True):  # lines 127-161
        if text == "BREAK" and weight == -1:
            next_chunk()
            continue
        for token in ids:
            if token == comma:
                last_comma = len(tokens)
            elif (
                backtrack != 0
                and len(tokens) == chunk_length
                and last_comma != -1
                and len(tokens) - last_comma <= backtrack
            ):
                cut = last_comma + 1
                moved, moved_mults = tokens[cut:], mults[cut:]
                tokens, mults = tokens[:cut], mults[:cut]
                next_chunk()
                tokens, mults = moved, moved_mults
            if len(tokens) == chunk_length:
                next_chunk()
            tokens.append(token)
            mults.append(weight)
    if tokens or not chunks:  # lines 174-175
        next_chunk(is_last=True)
    return Chunks(
        ids=[_pad_after_eos(c, eos, pad) for c, _ in chunks],
        weights=[w for _, w in chunks],
        token_count=count,
        parsed=parsed,
    )


def first_eos(chunk: Sequence[int], eos: int) -> int:
    """Index of a chunk's EOS (the first after BOS; the last position if there is none)."""
    try:
        return chunk.index(eos, 1)
    except ValueError:
        return len(chunk) - 1


def _pad_after_eos(chunk: list[int], eos: int, pad: int) -> list[int]:
    """``process_tokens``: after the first EOS, the pad id (SD 1 pads with EOS itself)."""
    if eos == pad:
        return chunk
    first = first_eos(chunk, eos)
    return chunk[: first + 1] + [pad] * (len(chunk) - first - 1)


def apply_emphasis(z: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """A1111's "Original" emphasis on one chunk's encoder output ``z`` (1, T, C): every token's
    vector times its weight, then the whole chunk rescaled to its original mean. All weights 1:
    ``z`` itself, bit for bit."""
    import torch

    if all(w == 1.0 for w in weights):
        return z
    w = torch.tensor(list(weights), dtype=z.dtype, device=z.device)
    original_mean = z.mean()
    z = z * w.reshape(1, -1, 1).expand(z.shape)
    new_mean = z.mean()
    return z * (original_mean / new_mean)


def word_weights(words: Sequence[str | None], weights: Sequence[float]) -> list[dict[str, Any]]:
    """``[{"word", "weight", "tokens": [positions]}]`` for every word whose weight is not 1, in
    prompt order (a word's pieces share one weight; the words have no brackets)."""
    out: list[dict[str, Any]] = []
    for i, (word, weight) in enumerate(zip(words, weights, strict=True)):
        if word is None or weight == 1.0:
            continue
        if out and out[-1]["word"] == word and out[-1]["tokens"][-1] == i - 1:
            out[-1]["tokens"].append(i)
            continue
        out.append({"word": word, "weight": float(weight), "tokens": [i]})
    return out
