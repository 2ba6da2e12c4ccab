"""``syntax="compel"``: prompts read and encoded by the compel package (``word++``, ``(word)1.3``,
``word--``), for users who write compel's syntax. Opt-in, only when compel is installed.

The embeddings are compel's own (``Compel(..., truncate_long_prompts=False)``: its weighting,
its long-prompt chunks); the tokens shown with the maps are the ids compel encodes, so every map
belongs to the token it was computed for. Blends, conjunctions and ``.swap()`` are refused.
"""

from __future__ import annotations

from typing import Any

import torch

from unetviz.prompts import MAX_CHUNKS, PromptError

from .clip_tokens import Tokens, chunked_tokens


def _compel(pipe: Any) -> Any:
    from compel import Compel, ReturnedEmbeddingsType

    dev = pipe.device if not pipe.offload else torch.device("cpu")
    if not pipe.is_xl:
        return Compel(
            tokenizer=pipe.tokenizers[0],
            text_encoder=pipe.text_encoders[0],
            truncate_long_prompts=False,
            device=str(dev),
        )
    return Compel(
        tokenizer=pipe.tokenizers,
        text_encoder=pipe.text_encoders,
        returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
        requires_pooled=[False, True],
        truncate_long_prompts=False,
        device=str(dev),
    )


def _fragments(text: str) -> list[tuple[str, float]]:
    """compel's parse of ``text`` as (fragment, weight) pairs; PromptError for what has no
    single token sequence (blends, conjunctions, swaps)."""
    from compel import Compel
    from compel.prompt_parser import FlattenedPrompt

    conj = Compel.parse_prompt_string(text)
    prompt = conj.prompts[0] if len(conj.prompts) == 1 else None
    if not isinstance(prompt, FlattenedPrompt) or any(
        not hasattr(f, "weight") for f in prompt.children
    ):
        raise PromptError(
            f"syntax='compel': {text[:60]!r} uses blends, conjunctions or swaps, which have no "
            "single token sequence to map; use weights (word++, (word)1.3) only"
        )
    return [(f.text, float(f.weight)) for f in prompt.children]


def _tokens(comp: Any, tokenizer: Any, text: str, chunks: int) -> Tokens:
    provider = comp.conditioning_provider
    provider = getattr(provider, "embedding_providers", [provider])[0]
    frags = _fragments(text) or [("", 1.0)]
    ids, weights, _ = provider.get_token_ids_and_expand_weights(
        [t for t, _ in frags], [w for _, w in frags], device="cpu"
    )
    window = int(tokenizer.model_max_length)
    ids, weights = ids.tolist(), weights.tolist()
    cut = [ids[i : i + window] for i in range(0, len(ids), window)]
    wcut = [weights[i : i + window] for i in range(0, len(weights), window)]
    return chunked_tokens(
        tokenizer, cut, wcut, min_chunks=chunks, parsed=[[t, w] for t, w in frags]
    )


def compel_encode(
    pipe: Any, prompt: str, negative_prompt: str, cfg: bool
) -> tuple[torch.Tensor, torch.Tensor | None, Tokens, Tokens]:
    """Like ``SDPipeline.encode``: ``[uncond, cond]`` (or ``cond``) embeddings, SDXL's pooled
    embeddings and the tokens of prompt and negative prompt, all through compel."""
    for text in (prompt, negative_prompt):  # refused before compel sees them
        _fragments(text)
    comp = _compel(pipe)
    with torch.no_grad():
        out = [comp(prompt)] + ([comp(negative_prompt)] if cfg else [])
    conds = [o[0] if isinstance(o, tuple) else o for o in out]
    pooled = [o[1] for o in out] if pipe.is_xl else None
    conds = comp.pad_conditioning_tensors_to_same_length(conds)
    window = int(pipe.tokenizers[0].model_max_length)
    chunks = conds[0].shape[1] // window
    if chunks > MAX_CHUNKS:
        raise PromptError(
            f"syntax='compel': the prompt makes {chunks} chunks of {window} tokens; at most "
            f"{MAX_CHUNKS} are taken"
        )
    pos = _tokens(comp, pipe.tokenizers[0], prompt, chunks)
    neg = _tokens(comp, pipe.tokenizers[0], negative_prompt, chunks)
    if cfg and pipe.is_xl and negative_prompt == "" and pipe.parts.force_zeros_for_empty_prompt:
        conds[1], pooled[1] = torch.zeros_like(conds[0]), torch.zeros_like(pooled[0])
    order = conds[::-1]  # [uncond, cond]
    embeds = torch.cat(order).to(device=pipe.device, dtype=pipe.dtype)
    if pooled is not None:
        pooled = torch.cat(pooled[::-1]).to(device=pipe.device, dtype=pipe.dtype)
    return embeds, pooled, pos, neg
