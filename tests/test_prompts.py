"""A1111 emphasis parsing and long-prompt chunking (unetviz.prompts) against A1111's own examples
and a line-by-line reference transcription of its chunker; hostile prompts."""

from __future__ import annotations

import math

import pytest

from unetviz.prompts import (
    MAX_PROMPT_CHARS,
    PromptError,
    apply_emphasis,
    check_weights,
    chunk_prompt,
    parse_prompt_attention,
    word_weights,
)

# modules/prompt_parser.py (AUTOMATIC1111/stable-diffusion-webui @ 0674fabd) lines 295-314:
# the docstring examples of parse_prompt_attention, verbatim
DOCSTRING = [
    ("normal text", [["normal text", 1.0]]),
    ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
    ("(unbalanced", [["unbalanced", 1.1]]),
    ("\\(literal\\]", [["(literal]", 1.0]]),
    ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ["a ", 1.0],
            ["house", 1.5730000000000004],
            [" ", 1.1],
            ["on", 1.0],
            [" a ", 1.1],
            ["hill", 0.55],
            [", sun, ", 1.1],
            ["sky", 1.4641000000000006],
            [".", 1.1],
        ],
    ),
]


@pytest.mark.parametrize("text, expected", DOCSTRING)
def test_parser_matches_a1111_docstring(text, expected):
    assert parse_prompt_attention(text) == expected  # exact floats, as A1111 prints them


def test_break_nesting_and_escapes():
    assert parse_prompt_attention("a BREAK b") == [["a", 1.0], ["BREAK", -1], ["b", 1.0]]
    assert parse_prompt_attention("[[a]]") == [["a", (1 / 1.1) * (1 / 1.1)]]
    assert parse_prompt_attention("(a:0.5)") == [["a", 0.5]]
    assert parse_prompt_attention("\\\\(a)") == [["\\", 1.0], ["a", 1.1]]
    assert parse_prompt_attention("") == [["", 1.0]]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a)) b ]]", [["a)) b ]]", 1.0]]),  # closers without openers are text
        ("]a[", [["]a", 1.0]]),  # an opener with nothing after it changes nothing
        ("((a", [["a", 1.1 * 1.1]]),  # openers without closers apply to the end
        ("(cat:nan)", [["cat:nan", 1.1]]),  # not a number: ':' and 'nan' are text
        ("(cat:1e5)", [["cat:1e5", 1.1]]),
    ],
)
def test_unbalanced_and_non_numbers_parse_as_a1111(text, expected):
    assert parse_prompt_attention(text) == expected


def test_hostile_prompts_get_a_prompt_error():
    deep = parse_prompt_attention("(" * 10_000 + "cat" + ")" * 10_000)
    assert deep == [["cat", math.inf]]  # 1.1**10000 overflows, as in A1111
    with pytest.raises(PromptError, match="emphasis weight inf on 'cat'"):
        check_weights(deep)
    with pytest.raises(PromptError, match="emphasis weight 1e\\+30 on 'cat'.*at most 100"):
        check_weights(parse_prompt_attention("(cat:1000000000000000000000000000000)"))
    with pytest.raises(PromptError, match="'1.2.3' is not a number"):
        parse_prompt_attention("(cat:1.2.3)")  # A1111 raises ValueError here
    with pytest.raises(PromptError, match=f"at most {MAX_PROMPT_CHARS}"):
        parse_prompt_attention("a" * (MAX_PROMPT_CHARS + 1))
    with pytest.raises(PromptError, match="must be a string"):
        parse_prompt_attention(b"cat")
    many = parse_prompt_attention("(a " * 3000)  # quadratic in A1111; bounded here
    assert len(many) == 3000 and many[0][1] == pytest.approx(1.1)


# ------------------------------------------------------------------ chunking
class _Chunk:
    def __init__(self):
        self.tokens, self.multipliers = [], []


def reference_tokenize_line(line, tokenize, id_start, id_end, id_pad, comma_token):
    """modules/sd_hijack_clip.py (AUTOMATIC1111/stable-diffusion-webui @ 00e09382),
    FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line lines 84-177 with
    opts.comma_padding_backtrack = 20 and no textual-inversion embeddings, then
    process_tokens' padding (the id_pad rule); transcribed line by line."""
    chunk_length, backtrack = 75, 20
    parsed = parse_prompt_attention(line)
    tokenized = tokenize([text for text, _ in parsed])
    chunks, chunk, token_count, last_comma = [], _Chunk(), 0, -1

    def next_chunk(is_last=False):
        nonlocal token_count, last_comma, chunk
        if is_last:
            token_count += len(chunk.tokens)
        else:
            token_count += chunk_length
        to_add = chunk_length - len(chunk.tokens)
        if to_add > 0:
            chunk.tokens += [id_end] * to_add
            chunk.multipliers += [1.0] * to_add
        chunk.tokens = [id_start] + chunk.tokens + [id_end]
        chunk.multipliers = [1.0] + chunk.multipliers + [1.0]
        last_comma = -1
        chunks.append(chunk)
        chunk = _Chunk()

    for tokens, (text, weight) in zip(tokenized, parsed, strict=True):
        if text == "BREAK" and weight == -1:
            next_chunk()
            continue
        position = 0
        while position < len(tokens):
            token = tokens[position]
            if token == comma_token:
                last_comma = len(chunk.tokens)
            elif (
                backtrack != 0
                and len(chunk.tokens) == chunk_length
                and last_comma != -1
                and len(chunk.tokens) - last_comma <= backtrack
            ):
                break_location = last_comma + 1
                reloc_tokens = chunk.tokens[break_location:]
                reloc_mults = chunk.multipliers[break_location:]
                chunk.tokens = chunk.tokens[:break_location]
                chunk.multipliers = chunk.multipliers[:break_location]
                next_chunk()
                chunk.tokens = reloc_tokens
                chunk.multipliers = reloc_mults
            if len(chunk.tokens) == chunk_length:
                next_chunk()
            chunk.tokens.append(token)
            chunk.multipliers.append(weight)
            position += 1
    if chunk.tokens or not chunks:
        next_chunk(is_last=True)
    out = []
    for c in chunks:  # process_tokens: SD 2 pads after the first end token
        ids = list(c.tokens)
        if id_end != id_pad:
            index = ids.index(id_end)
            ids[index + 1 :] = [id_pad] * (len(ids) - index - 1)
        out.append((ids, c.multipliers))
    return out, token_count


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    pytest.importorskip("transformers")
    from transformers import CLIPTokenizer

    from tests.sd_tiny import write_tiny_clip_tokenizer

    folder = tmp_path_factory.mktemp("tok")
    write_tiny_clip_tokenizer(folder)
    return CLIPTokenizer.from_pretrained(folder)


def _ours(tok, prompt, pad):
    return chunk_prompt(
        prompt,
        lambda texts: tok(texts, truncation=False, add_special_tokens=False)["input_ids"],
        bos=tok.bos_token_id,
        eos=tok.eos_token_id,
        pad=pad,
        comma=tok.get_vocab()[",</w>"],
    )


LONG = [
    "a cat",
    "",
    " ".join(["red cat"] * 40),  # 80 tokens: a cut at 75
    " ".join(["red cat"] * 37) + " a, dog " + " ".join(["blue house"] * 30),  # comma near 75
    ", ".join(["a red cat on a mat"] * 14),  # commas everywhere: several backtracks
    "a photo of a (cat:1.3) BREAK a [dog] " + " ".join(["tree"] * 80) + " ((moon))",
    " ".join(["tree"] * 75),  # exactly one full chunk: no empty second chunk
    " ".join(["tree"] * 74) + " zebra house",  # a word of single characters cut at 75
    "painting, " * 30,
]


@pytest.mark.parametrize("prompt", LONG)
@pytest.mark.parametrize("pad", ["eos", 0])
def test_chunks_match_the_a1111_transcription(tokenizer, prompt, pad):
    pad_id = tokenizer.eos_token_id if pad == "eos" else pad
    ref, count = reference_tokenize_line(
        prompt,
        lambda texts: tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"],
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        pad_id,
        tokenizer.get_vocab()[",</w>"],
    )
    ours = _ours(tokenizer, prompt, pad_id)
    assert ours.ids == [ids for ids, _ in ref]
    assert ours.weights == [m for _, m in ref]
    assert ours.token_count == count
    assert all(len(c) == 77 and c[0] == tokenizer.bos_token_id for c in ours.ids)


def test_comma_backtrack_moves_the_clause(tokenizer):
    prompt = " ".join(["red cat"] * 36) + " a, dog blue house"  # ',' is token 74
    ours = _ours(tokenizer, prompt, tokenizer.eos_token_id)
    labels = tokenizer.convert_ids_to_tokens(ours.ids[0])
    assert len(ours.ids) == 2 and labels[74] == ",</w>" and labels[75] == "<|endoftext|>"
    second = tokenizer.convert_ids_to_tokens(ours.ids[1])
    assert second[1:4] == ["dog</w>", "blue</w>", "house</w>"]


def test_emphasis_weights_and_mean_restored():
    torch = pytest.importorskip("torch")
    z = torch.randn(1, 5, 8)
    assert apply_emphasis(z, [1.0] * 5) is z
    out = apply_emphasis(z, [1.0, 1.5, 1.0, 1.0, 1.0])
    assert torch.allclose(out.mean(), z.mean(), atol=1e-6)
    ratio = z.mean() / (z * torch.tensor([1.0, 1.5, 1, 1, 1]).view(1, -1, 1)).mean()
    assert torch.allclose(out[0, 1], z[0, 1] * 1.5 * ratio)
    words = ["a", "zebra", "zebra", None]
    assert word_weights(words, [1.0, 1.2, 1.2, 1.0]) == [
        {"word": "zebra", "weight": 1.2, "tokens": [1, 2]}
    ]
