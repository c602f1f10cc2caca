"""Pure-torch reference of the float64-safe Gumbel-max categorical draw (Zheng et al. 2024, "Masked
Diffusion Models are Secretly Time-Agnostic Masked Models and Exploit Inaccurate Categorical Sampling").

token = argmax_v( logits_v / temperature + G_v ),  G_v = -log(E_v),  E_v = -log(u_v),  in float64.

Float32 uniforms have resolution 2^-24, so G is capped near 16.6 (float64: near 36.7) and tokens that need
a large draw to win are under-sampled; `precision="float32"` keeps that path for comparison.

The uniforms u are a counter-based hash of (seed, row, token id) (murmur3's 32-bit finaliser), so the
Triton kernel draws the very same token, whatever its block size, and the draw of a row does not depend on
how rows are chunked. Rows are processed in chunks through reused buffers, so the float64 work never
exceeds a fixed budget: there is never a float64 copy of the whole (rows, vocab) logits.

Within a chunk the draw uses the exponential-race form of Gumbel-max, which is the same argmax:
argmax_v (x_v / T - log E_v) = argmax_v exp((x_v - max x) / T) / E_v. It needs one float64 log per entry
instead of two, and at temperature 1 the exponentials are the ones the softmax statistics need anyway.

Top-k / top-p are a per-row threshold on the logits (`filter_threshold`): an entry is kept when its logit is
>= the threshold, so entries tied with the last kept one are kept too. The order is the ecosystem's
(transformers' TemperatureLogitsWarper before TopK/TopP, vLLM): temperature first, then top-k, then the top-p
nucleus of the *tempered* distribution softmax(logits / T). Dividing by T > 0 keeps the ranking, so the
threshold can stay in raw-logit units; only the nucleus mass depends on T. The Triton kernel takes the same
thresholds from the same function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MASK32 = 0xFFFFFFFF
# murmur3 fmix32 multipliers, as uint32 and as the int32 with the same bits.
FMIX_C1, FMIX_C2 = 0x85EBCA6B, 0xC2B2AE35
FMIX_C1_I32, FMIX_C2_I32 = FMIX_C1 - (1 << 32), FMIX_C2 - (1 << 32)
ROW_MULTIPLIER = 0x9E3779B9  # golden-ratio constant spreading row ids before the row's own hash
# Largest uniforms below 1: (k + 0.5) 2^-53 rounds to 1.0 for the top k, so u is clamped to these.
U64_MAX = 1.0 - 2.0 ** -53
U32_MAX = 1.0 - 2.0 ** -24
# Elements (rows x vocab) of one chunk. Its working set is WORKING_BYTES_PER_ELEMENT bytes per element
# (three float64 and three int32 buffers), ~9 MiB, small enough to stay near the CPU caches; a chunk is
# never less than one row.
CHUNK_ELEMENTS = 1 << 18
WORKING_BYTES_PER_ELEMENT = 3 * 8 + 3 * 4


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


# ---------------------------------------------------------------------------------------------------------
# The noise: a counter-based hash of (seed, row, token id). This int64 form is the specification; the Triton
# kernel computes it in uint32 and the chunk loop below in int32 (same bits, tested equal).


def fmix32(x: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finaliser on int64 tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = (x * FMIX_C1) & MASK32
    x = x ^ (x >> 13)
    x = (x * FMIX_C2) & MASK32
    return x ^ (x >> 16)


def row_base_hash(seed: int, rows: torch.Tensor) -> torch.Tensor:
    """The per-row key fmix32(row * 0x9E3779B9 + seed) (int64 holding uint32) that every column hash xors in."""
    return fmix32((rows.to(torch.int64) * ROW_MULTIPLIER + (seed & MASK32)) & MASK32)


def hash_uniform(seed: int, rows: torch.Tensor, cols: torch.Tensor, precision: str = "float64") -> torch.Tensor:
    """Uniforms in the open interval (0, 1) from (seed, row, col); rows (R, 1) and cols (1, C) int64.

    float64: two 32-bit hashes make a 53-bit uniform (k + 0.5) 2^-53, clamped to <= 1 - 2^-53. float32: one
    hash makes a 24-bit uniform, the resolution of torch.rand in float32 (kept to show the truncation)."""
    base = row_base_hash(seed, rows)
    h1 = fmix32(base ^ ((cols * 2) & MASK32))
    if precision == "float32":
        return ((((h1 >> 8).to(torch.float32)) + 0.5) * (2.0 ** -24)).clamp_max(U32_MAX)
    h2 = fmix32(base ^ ((cols * 2 + 1) & MASK32))
    k = (h1 >> 5) * (1 << 26) + (h2 >> 6)  # 27 + 26 = 53 bits
    return ((k.to(torch.float64) + 0.5) * (2.0 ** -53)).clamp_max(U64_MAX)


def _fmix32_int32_(x: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """fmix32 in place on an int32 tensor holding uint32 bits (int32 multiply wraps like uint32; the
    arithmetic right shift is made logical by masking the sign-extended bits)."""
    for shift, multiplier in ((16, FMIX_C1_I32), (13, FMIX_C2_I32), (16, None)):
        torch.bitwise_right_shift(x, shift, out=scratch)
        scratch.bitwise_and_((1 << (32 - shift)) - 1)
        x.bitwise_xor_(scratch)
        if multiplier is not None:
            x.mul_(multiplier)
    return x


def _as_int32_bits(values: torch.Tensor) -> torch.Tensor:
    """int64 tensor of uint32 values -> int32 tensor with the same bits."""
    return (values - ((values >> 31) << 32)).to(torch.int32)


# ---------------------------------------------------------------------------------------------------------
# Top-k / top-p as a per-row threshold.


def filter_threshold(logits: torch.Tensor, top_k: int | None, top_p: float | None,
                     temperature: float = 1.0) -> torch.Tensor | None:
    """Per-row logit threshold (rows,) of top-k then top-p, or None when neither filters anything.

    Entries with logit >= threshold are kept: the k largest (and entries tied with the k-th), then of
    those the smallest set of the largest whose probability under softmax(logits / temperature) reaches
    top_p (the top-1 is always kept). temperature 0 (argmax) keeps the top-1 whatever the nucleus."""
    V = logits.shape[-1]
    top_k = None if top_k is None else int(top_k)
    use_k = top_k is not None and top_k < V
    use_p = top_p is not None and top_p < 1.0
    if not (use_k or use_p):
        return None
    rows = logits.reshape(-1, V).float()
    if use_p:
        values = torch.sort(rows, dim=-1, descending=True).values
        if use_k:
            kth = values[:, top_k - 1: top_k]
            values = values.masked_fill(values < kth, float("-inf"))
        probs = torch.softmax(values.double() / (temperature if temperature > 0 else 1.0), dim=-1)
        mass_before = probs.cumsum(-1) - probs
        n_keep = (mass_before < top_p).sum(-1).clamp_min(1)
        return values.gather(-1, (n_keep - 1)[:, None])[:, 0]
    return torch.topk(rows, top_k, dim=-1).values[:, -1]


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None,
                  temperature: float = 1.0) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the smallest top-p nucleus of
    softmax(logits / temperature) (top-1 kept)."""
    threshold = filter_threshold(logits, top_k, top_p, temperature)
    if threshold is None:
        return logits
    return logits.masked_fill(logits < threshold.view(*logits.shape[:-1], 1).to(logits.dtype), float("-inf"))


def categorical_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                      top_p: float | None = None) -> torch.Tensor:
    """(..., V) float64 probabilities of the distribution `sample_categorical` draws from with these
    settings (temperature first, then top-k and the top-p nucleus of the tempered distribution); the
    one-hot argmax at temperature 0. Speculative acceptance compares these."""
    scores = filter_logits(logits, top_k, top_p, temperature).double()  # (..., V)
    if temperature == 0:
        return torch.nn.functional.one_hot(scores.argmax(-1), logits.shape[-1]).double()
    return torch.softmax(scores / temperature, dim=-1)


# ---------------------------------------------------------------------------------------------------------
# Argument checks shared with the Triton path.


def check_sampling_arguments(logits, temperature, top_k, top_p, precision) -> None:
    if precision not in ("float64", "float32"):
        raise ValueError(f"precision must be 'float64' or 'float32', got {precision!r}")
    if not torch.is_floating_point(logits):
        raise TypeError(f"logits must be a floating-point tensor, got {logits.dtype}")
    if logits.dim() == 0 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have shape (..., vocab) with vocab >= 1, got {tuple(logits.shape)}")
    if temperature < 0 or math.isnan(temperature):
        raise ValueError(f"temperature must be >= 0 (0 = argmax), got {temperature}")
    if top_k is not None and (int(top_k) != top_k or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")


def resolve_seed(seed: int | None, generator: torch.Generator | None) -> int:
    if seed is not None:
        return int(seed) & MASK32
    device = generator.device if generator is not None else "cpu"  # a CUDA generator draws on its device
    return int(torch.randint(0, 2**31 - 1, (), generator=generator, device=device)) & MASK32


def rows_per_chunk(vocab: int, chunk_elements: int = CHUNK_ELEMENTS) -> int:
    """Rows processed together; the extra memory is rows_per_chunk * vocab * WORKING_BYTES_PER_ELEMENT."""
    return max(1, chunk_elements // vocab)


# ---------------------------------------------------------------------------------------------------------


class _ChunkBuffers:
    """Buffers reused across chunks: allocating fresh large temporaries costs page faults every time."""

    def __init__(self, rows: int, vocab: int, device):
        f64 = dict(dtype=torch.float64, device=device)
        i32 = dict(dtype=torch.int32, device=device)
        self.shifted = torch.empty(rows, vocab, **f64)  # x - max x
        self.weights = torch.empty(rows, vocab, **f64)  # exp(x - max x), then the scores' weights
        self.race = torch.empty(rows, vocab, **f64)  # E = -log u, then weights / E
        self.hash1 = torch.empty(rows, vocab, **i32)
        self.hash2 = torch.empty(rows, vocab, **i32)
        self.scratch = torch.empty(rows, vocab, **i32)

    def view(self, rows: int):
        return [b[:rows] for b in (self.shifted, self.weights, self.race, self.hash1, self.hash2, self.scratch)]


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
    check_sampling_arguments(logits, temperature, top_k, top_p, precision)
    seed = resolve_seed(seed, generator)
    lead, V = logits.shape[:-1], logits.shape[-1]
    flat = logits.reshape(-1, V)
    R, device = flat.shape[0], logits.device
    stats = torch.empty(4, R, dtype=torch.float64, device=device)  # logprob, top1, top2, entropy
    tokens = torch.empty(R, dtype=torch.long, device=device)
    chunk = max(1, min(R, rows_per_chunk(V, chunk_elements)))
    buffers = _ChunkBuffers(chunk, V, device)
    cols2 = torch.arange(0, 2 * V, 2, dtype=torch.int32, device=device)[None]  # 2 * token id
    all_bases = _as_int32_bits(row_base_hash(seed, torch.arange(R, device=device)))
    for start in range(0, R, chunk):
        stop = min(R, start + chunk)
        x = flat[start:stop]
        shifted, weights, race, hash1, hash2, scratch = buffers.view(stop - start)
        log_total, top1_index = _model_statistics(x, start, shifted, weights, race, stats[1:, start:stop])

        threshold = filter_threshold(x, top_k, top_p, temperature)
        if temperature == 0:
            choice = top1_index[:, 0]
        else:
            bases = all_bases[start:stop, None]
            torch.bitwise_xor(bases, cols2, out=hash1)
            _fmix32_int32_(hash1, scratch)
            if precision == "float32":
                choice = _gumbel_argmax_float32(x, threshold, temperature, hash1)
            else:
                torch.bitwise_xor(bases, cols2 + 1, out=hash2)
                _fmix32_int32_(hash2, scratch)
                choice = _race_argmax_float64(x, threshold, temperature, shifted, weights, race, hash1, hash2)
        tokens[start:stop] = choice
        stats[0, start:stop] = shifted.gather(-1, choice[:, None])[:, 0] - log_total
    return CategoricalSample(tokens.view(lead), *(row.view(lead) for row in stats))


def _model_statistics(x, start, shifted, weights, products, out):
    """Top-1/top-2 log-probabilities and entropy of softmax(x) in float64 into out (3, rows); leaves
    shifted = x - max and weights = exp(shifted). Returns log(sum exp(shifted)) and the argmax."""
    shifted.copy_(x)
    top1, top1_index = shifted.max(-1, keepdim=True)
    if not bool(torch.isfinite(top1).all()):
        bad = int(start + (~torch.isfinite(top1[:, 0])).nonzero()[0, 0])
        raise ValueError(f"row {bad} of the logits has no finite maximum (all -inf, +inf or NaN); every "
                         "row needs at least one finite logit and no NaN/+inf")
    shifted.sub_(top1)
    torch.exp(shifted, out=weights)
    total = weights.sum(-1)
    log_total = total.log()
    out[0] = -log_total
    shifted.scatter_(-1, top1_index, float("-inf"))  # the runner-up is the max of the rest
    out[1] = shifted.amax(-1) - log_total
    shifted.scatter_(-1, top1_index, 0.0)
    # H = log(total) - sum w (x - max) / total; nansum because w (x - max) is 0 * -inf at -inf logits.
    out[2] = log_total - torch.mul(weights, shifted, out=products).nansum(-1) / total
    return log_total, top1_index


def _race_argmax_float64(x, threshold, temperature, shifted, weights, race, hash1, hash2) -> torch.Tensor:
    """Exponential race: argmax exp((x - max) / T) / E with E = -log u, the argmax of x/T + G in float64.

    hash1, hash2: the two 32-bit hashes of each entry (consumed); weights holds exp(x - max) on entry."""
    if temperature != 1.0:
        torch.div(shifted, temperature, out=weights).exp_()
    if threshold is not None:
        weights.masked_fill_(x < threshold[:, None].to(x.dtype), 0.0)
    hash1.bitwise_right_shift_(5).bitwise_and_((1 << 27) - 1)  # 27 high bits of the 53
    hash2.bitwise_right_shift_(6).bitwise_and_((1 << 26) - 1)  # 26 low bits
    race.copy_(hash1).mul_(float(1 << 26)).add_(hash2)  # k, exact in float64
    race.add_(0.5).mul_(2.0 ** -53).clamp_max_(U64_MAX).log_().neg_()  # E = -log u
    return torch.div(weights, race, out=race).argmax(-1)


def _gumbel_argmax_float32(x, threshold, temperature, hash1) -> torch.Tensor:
    """The float32 Gumbel-max of torch.rand-like 24-bit uniforms (G capped near 16.6): for comparison only.

    Same uniforms as hash_uniform(..., "float32"), from the first hash of each entry."""
    u = hash1.bitwise_right_shift_(8).bitwise_and_((1 << 24) - 1).to(torch.float32)
    u.add_(0.5).mul_(2.0 ** -24).clamp_max_(U32_MAX)
    scores = u.log_().neg_().log_().neg_().add_(x.float() / temperature)  # x/T + G, G = -log(-log u)
    if threshold is not None:
        scores.masked_fill_(x < threshold[:, None].to(x.dtype), float("-inf"))
    return scores.argmax(-1)
