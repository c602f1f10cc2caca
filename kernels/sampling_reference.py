"""Pure-torch reference of the float64-safe Gumbel-max categorical draw (Zheng et al. 2024, "Masked
Diffusion Models are Secretly Time-Agnostic Masked Models and Exploit Inaccurate Categorical Sampling").

token = argmax_v( logits_v / temperature + G_v ),  G_v = -log(-log u_v),  in float64.

The uniforms u are a counter-based hash of (seed, row, token id), so the Triton kernel draws the very same
token, whatever its block size. Rows are processed in chunks, so the float64 work never exceeds a bounded
budget: there is never a float64 copy of the whole (rows, vocab) logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MASK32 = 0xFFFFFFFF
# Extra memory budget of one chunk, in float64-sized elements (chunk rows x vocab x live temporaries).
CHUNK_ELEMENTS = 1 << 22


@dataclass
class CategoricalSample:
    """One draw per row, with what remasking policies need from the same pass over the vocabulary.

    Log-probabilities and entropy are those of the model's own distribution, softmax(logits) at
    temperature 1 and without top-k/top-p, because confidence-based policies rank by the model's belief.
    """

    tokens: torch.Tensor  # (...,) long
    logprob: torch.Tensor  # (...,) float64, log p(token)
    top1_logprob: torch.Tensor  # (...,) float64
    top2_logprob: torch.Tensor  # (...,) float64 (-inf when the vocabulary has one finite logit)
    entropy: torch.Tensor  # (...,) float64


def fmix32(x: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finaliser on int64 tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & MASK32
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & MASK32
    return x ^ (x >> 16)


def hash_uniform(seed: int, rows: torch.Tensor, cols: torch.Tensor, precision: str = "float64") -> torch.Tensor:
    """Uniforms in the open interval (0, 1) from (seed, row, col); rows (R, 1) and cols (1, C) int64.

    float64: two 32-bit hashes make a 53-bit uniform (k + 0.5) / 2^53. float32: one hash makes a 24-bit
    uniform, the resolution of torch.rand in float32 (kept to show the truncation it causes)."""
    base = fmix32((rows * 0x9E3779B9 + (seed & MASK32)) & MASK32)
    h1 = fmix32(base ^ ((cols * 2) & MASK32))
    if precision == "float32":
        return (((h1 >> 8).to(torch.float32)) + 0.5) * (2.0 ** -24)
    h2 = fmix32(base ^ ((cols * 2 + 1) & MASK32))
    k = (h1 >> 5) * (1 << 26) + (h2 >> 6)  # 27 + 26 = 53 bits
    return (k.to(torch.float64) + 0.5) * (2.0 ** -53)


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the smallest top-p nucleus (top-1 kept)."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits.double(), dim=-1)
        mass_before = probs.cumsum(-1) - probs
        drop_sorted = mass_before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def resolve_seed(seed: int | None, generator: torch.Generator | None) -> int:
    if seed is not None:
        return int(seed) & MASK32
    return int(torch.randint(0, 2**31 - 1, (), generator=generator)) & MASK32


def sample_categorical_reference(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    precision: str = "float64",
    chunk_elements: int = CHUNK_ELEMENTS,
) -> CategoricalSample:
    if precision not in ("float64", "float32"):
        raise ValueError(f"precision must be 'float64' or 'float32', got {precision!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    seed = resolve_seed(seed, generator)
    lead, V = logits.shape[:-1], logits.shape[-1]
    flat = logits.reshape(-1, V)
    R = flat.shape[0]
    out = {name: torch.empty(R, dtype=torch.float64, device=logits.device)
           for name in ("logprob", "top1_logprob", "top2_logprob", "entropy")}
    tokens = torch.empty(R, dtype=torch.long, device=logits.device)
    cols = torch.arange(V, device=logits.device, dtype=torch.int64)[None]
    chunk = max(1, chunk_elements // V)
    for start in range(0, R, chunk):
        rows = slice(start, min(R, start + chunk))
        block = flat[rows]
        # Model statistics at temperature 1 (float64 within the chunk only).
        logp = torch.log_softmax(block.double(), dim=-1)
        top2 = torch.topk(logp, min(2, V), dim=-1).values
        out["top1_logprob"][rows] = top2[:, 0]
        out["top2_logprob"][rows] = top2[:, 1] if V > 1 else float("-inf")
        p = logp.exp()
        out["entropy"][rows] = -(p * logp.masked_fill(p == 0, 0.0)).sum(-1)
        del p
        scores = filter_logits(block, top_k, top_p)
        if temperature == 0:
            choice = scores.argmax(-1)
        else:
            row_ids = torch.arange(rows.start, rows.stop, device=logits.device, dtype=torch.int64)[:, None]
            u = hash_uniform(seed, row_ids, cols, precision)
            dtype = torch.float64 if precision == "float64" else torch.float32
            gumbel = -torch.log(-torch.log(u))
            choice = (scores.to(dtype) / temperature + gumbel).argmax(-1)
            del u, gumbel
        tokens[rows] = choice
        out["logprob"][rows] = logp.gather(-1, choice[:, None])[:, 0]
    return CategoricalSample(tokens.view(lead), *(out[n].view(lead) for n in
                             ("logprob", "top1_logprob", "top2_logprob", "entropy")))
