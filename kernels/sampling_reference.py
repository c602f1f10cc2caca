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
The first of the two 32-bit hashes of an entry already bounds its race value from above (computed in
float32, with an allowance for its rounding); only the entry with the largest bound gets its second hash,
and a row is raced exactly, entry by entry, only when another bound comes within 1e-9 of that entry's
exact value (`negative_race_bounds`, `_settle_race`): the same token, half the hashing, and no float64
log or division per entry. The top-1/top-2 log-probabilities and the entropy cost three more passes and
are computed only when asked for (`statistics`).

Top-k / top-p are a per-row threshold on the logits (`filter_threshold`): an entry is kept when its logit is
>= the threshold, so entries tied with the last kept one are kept too. The order is the ecosystem's
(transformers' TemperatureLogitsWarper before TopK/TopP, vLLM): temperature first, then top-k, then the top-p
nucleus of the *tempered* distribution softmax(logits / T). Dividing by T > 0 keeps the ranking, so the
threshold can stay in raw-logit units; only the nucleus mass depends on T. The Triton kernel takes the same
thresholds from the same function.
"""

from __future__ import annotations

import functools
import math
import threading
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
# (two float64 and two int32 buffers), 1.5 MiB: it stays in a core's L2 cache, and the chunk is still
# large enough that the ~35 torch calls per chunk cost little next to the arithmetic; a chunk is never
# less than one row.
CHUNK_ELEMENTS = 1 << 16
WORKING_BYTES_PER_ELEMENT = 2 * 8 + 2 * 4
# An upper bound of the race closer than this (relative) to the exact winner's value sends the row to the
# exact path: far above float64 rounding (1e-16), far below the gaps between race values (~1/vocab).
RACE_BOUND_MARGIN = 1e-9
# The race bounds are computed in float32 from the 24 high bits of the first hash. Their rounding (w to
# float32, a 1-ulp log, one division: under 2^-22 relative) is covered by inflating the runner-up bound by
# BOUND_ROUNDING before it is compared with the winner's exact float64 value.
U_HI_BITS = 24
BOUND_ROUNDING = 2.0 ** -20
# The largest chunk workspace kept between calls (in elements; WORKING_BYTES_PER_ELEMENT each): 3 MiB.
KEPT_WORKSPACE_ELEMENTS = 2 * CHUNK_ELEMENTS

@dataclass
class CategoricalSample:
    """One draw per row, with what remasking policies need from the same pass over the vocabulary.

    Log-probabilities and entropy are those of the model's own distribution, softmax(logits) at
    temperature 1 and without top-k/top-p, because confidence-based policies rank by the model's belief.
    A draw asked for without statistics (`statistics=False`) leaves the last three None.
    """

    tokens: torch.Tensor  # (...,) long
    logprob: torch.Tensor  # (...,) float64, log p(token)
    top1_logprob: torch.Tensor | None  # (...,) float64
    top2_logprob: torch.Tensor | None  # (...,) float64 (-inf when the vocabulary has one finite logit)
    entropy: torch.Tensor | None  # (...,) float64


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
    """The chunk loop's buffers, as (rows, vocab) views of flat storage that is kept between calls (per
    thread and device): fresh multi-megabyte temporaries would cost a page fault per 4 KiB on every call,
    about 1 ns per entry. Storage beyond KEPT_WORKSPACE_ELEMENTS (a vocabulary larger than a chunk) is
    allocated for the call only."""

    _kept = threading.local()

    def __init__(self, rows: int, vocab: int, device):
        self.vocab = vocab
        elements = rows * vocab
        key = str(device)
        kept = getattr(self._kept, "storage", {})
        storage = kept.get(key)
        if storage is None or storage[0].numel() < 2 * elements:
            storage = (torch.empty(2 * elements, dtype=torch.float64, device=device),
                       torch.empty(2 * elements, dtype=torch.int32, device=device))
            if elements <= KEPT_WORKSPACE_ELEMENTS:
                self._kept.storage = {**kept, key: storage}
        self.float64, self.int32 = storage

    @classmethod
    def release(cls) -> None:
        """Free this thread's kept storage (the sampling benchmark measures memory with it allocated)."""
        cls._kept.storage = {}

    def view(self, rows: int):
        """shifted (x - max, then the bounds of the race values), weights (exp(x - max), then the race's),
        hash1, scratch: each (rows, vocab)."""
        n = rows * self.vocab
        f64 = [self.float64[i * n:(i + 1) * n].view(rows, self.vocab) for i in range(2)]
        i32 = [self.int32[i * n:(i + 1) * n].view(rows, self.vocab) for i in range(2)]
        return f64 + i32


class _RowResults:
    """What each chunk leaves per row (R,); the few per-row operations then run once per call."""

    def __init__(self, rows: int, device):
        f64 = dict(dtype=torch.float64, device=device)
        self.top1 = torch.empty(rows, **f64)  # max logit
        self.total = torch.empty(rows, **f64)  # sum exp(x - max)
        self.runner_up = torch.empty(rows, **f64)  # second largest x - max
        self.weighted = torch.empty(rows, **f64)  # sum exp(x - max) (x - max)
        self.tokens = torch.empty(rows, dtype=torch.long, device=device)
        self.best_weight = torch.empty(rows, **f64)  # race weight of the entry with the largest bound
        self.negative_runner_up_bound = torch.empty(rows, **f64)  # minus the largest of the other bounds


@functools.lru_cache(maxsize=16)
def _even_columns(vocab: int, device: str) -> torch.Tensor:
    """(1, vocab) int32 2 * token id, the first hash's column key (the second one's is 2 * id + 1)."""
    return torch.arange(0, 2 * vocab, 2, dtype=torch.int32, device=device)[None]


def sample_categorical_reference(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    precision: str = "float64",
    chunk_elements: int = CHUNK_ELEMENTS,
    statistics: bool = True,
) -> CategoricalSample:
    check_sampling_arguments(logits, temperature, top_k, top_p, precision)
    seed = resolve_seed(seed, generator)
    lead, V = logits.shape[:-1], logits.shape[-1]
    flat = logits.reshape(-1, V)
    R, device = flat.shape[0], logits.device
    chunk = max(1, min(R, rows_per_chunk(V, chunk_elements)))
    buffers = _ChunkBuffers(chunk, V, device)
    out = _RowResults(R, device)
    cols2 = _even_columns(V, str(device))
    all_bases = _as_int32_bits(row_base_hash(seed, torch.arange(R, device=device)))
    race_exactly = temperature > 0 and precision == "float64"
    for start in range(0, R, chunk):
        stop = min(R, start + chunk)
        x, rows = flat[start:stop], slice(start, stop)
        shifted, weights, hash1, scratch = buffers.view(stop - start)
        top1_index = _chunk_statistics(x, shifted, weights, out, rows, keep_shifted=temperature != 1.0,
                                       statistics=statistics, need_index=statistics or temperature == 0)
        if temperature == 0:
            out.tokens[rows] = top1_index[:, 0]
            continue
        threshold = filter_threshold(x, top_k, top_p, temperature)
        torch.bitwise_xor(all_bases[rows, None], cols2, out=hash1)
        _fmix32_int32_(hash1, scratch)
        if precision == "float32":
            out.tokens[rows] = _gumbel_argmax_float32(x, threshold, temperature, hash1)
            continue
        if temperature != 1.0:
            torch.div(shifted, temperature, out=weights).exp_()
        if threshold is not None:
            weights.masked_fill_(x < threshold[:, None].to(x.dtype), 0.0)
        _race_bounds(weights, shifted, hash1, out, rows)

    bad = ~torch.isfinite(out.top1)
    if bool(bad.any()):
        raise ValueError(f"row {int(bad.nonzero()[0, 0])} of the logits has no finite maximum (all -inf, +inf or "
                         "NaN); every row needs at least one finite logit and no NaN/+inf")
    if race_exactly:
        _settle_race(seed, flat, temperature, top_k, top_p, out)
    log_total = out.total.log()
    drawn = flat.gather(-1, out.tokens[:, None])[:, 0].double() - out.top1
    if not statistics:
        return CategoricalSample(out.tokens.view(lead), (drawn - log_total).view(lead), None, None, None)
    stats = (drawn - log_total, -log_total, out.runner_up - log_total, log_total - out.weighted / out.total)
    return CategoricalSample(out.tokens.view(lead), *(row.view(lead) for row in stats))


def _chunk_statistics(x, shifted, weights, out: _RowResults, rows, keep_shifted: bool, statistics: bool = True,
                      need_index: bool = True) -> torch.Tensor | None:
    """The sums behind the top-1/top-2 log-probabilities and entropy of softmax(x), in float64, into `out`
    at `rows` (without `statistics`, only the normaliser the drawn token's log-probability needs). With
    keep_shifted, shifted = x - max is left and weights is spent (the caller recomputes the tempered
    weights from shifted); otherwise weights = exp(x - max) is left and shifted is spent. Returns the
    argmax (chunk rows, 1) when `need_index` (a max without its index is several times cheaper)."""
    if need_index:
        top1, top1_index = x.max(-1, keepdim=True)
    else:
        top1, top1_index = x.amax(-1, keepdim=True), None
    out.top1[rows] = top1[:, 0]
    shifted.copy_(x).sub_(out.top1[rows, None])
    torch.exp(shifted, out=weights)
    torch.sum(weights, -1, out=out.total[rows])
    if not statistics:
        return top1_index
    shifted.scatter_(-1, top1_index, float("-inf"))  # the runner-up is the max of the rest
    torch.amax(shifted, -1, out=out.runner_up[rows])
    shifted.scatter_(-1, top1_index, 0.0)
    # sum w (x - max) for H = log(total) - sum w (x - max) / total; nansum because w (x - max) is 0 * -inf
    # at -inf logits. The product overwrites whichever of the two the caller no longer needs.
    products = weights.mul_(shifted) if keep_shifted else shifted.mul_(weights)
    torch.nansum(products, -1, out=out.weighted[rows])
    return top1_index


def _race_bounds(weights, race, hash1, out: _RowResults, rows) -> None:
    """First half of the exponential race argmax_v w_v / E_v, E = -log u (the argmax of x/T + G): per row
    the entry with the largest upper bound of its race value, its weight and the largest other bound.
    weights (R, V) float64: exp((x - max) / T), 0 where filtered; race (R, V) float64 workspace; hash1
    (R, V) int32: each entry's first hash (consumed)."""
    negative_bounds = negative_race_bounds(weights, race, hash1)
    negative_bound, best = negative_bounds.min(-1)
    out.tokens[rows] = best
    out.best_weight[rows] = weights.gather(-1, best[:, None])[:, 0]
    negative_bounds.scatter_(-1, best[:, None], 0.0)  # 0 is the bound of a weight-0 entry: it lifts no other
    out.negative_runner_up_bound[rows] = negative_bounds.amin(-1)


def negative_race_bounds(weights, race, hash1) -> torch.Tensor:
    """Minus an upper bound of each entry's race value w / E, from its first hash alone: (R, V) float32,
    a view into `race` (R, V float64 workspace). Times (1 + BOUND_ROUNDING) it is an upper bound in exact
    arithmetic too (tested against the float64 values).

    The first 32-bit hash fixes the 24 high bits of the entry's 53-bit uniform u (`hash_uniform`), so
    u <= (high + 1) 2^-24 = u_hi and w / E <= w / -log(u_hi): no second hash is needed. Computed in
    float32, where u_hi is exact and log and division are three times cheaper than in float64."""
    log_u_hi, weights32 = race.view(torch.float32).view(race.shape[0], 2, -1).unbind(1)
    # The logical shift (arithmetic shift, then the sign-extended bits masked off), plus one, is exact in
    # float32 (at most 2^24).
    hash1.bitwise_right_shift_(32 - U_HI_BITS).bitwise_and_((1 << U_HI_BITS) - 1).add_(1)
    log_u_hi.copy_(hash1).mul_(2.0 ** -U_HI_BITS).log_()
    # u_hi = 1 has log 0, no finite bound: the largest negative float32 makes its bound huge, so the entry
    # is either the best (settled exactly) or a runner-up that sends the row to the exact race.
    log_u_hi.clamp_max_(-torch.finfo(torch.float32).tiny)
    # A w that float32 flushes to 0 or to a subnormal (< 1.2e-38) cannot win: the top entry has w = 1 and
    # every E lies in [1.1e-16, 37.5], so the winner's value is >= 0.026 and such an entry's < 1e-22.
    weights32.copy_(weights)
    return weights32.div_(log_u_hi)


def _settle_race(seed, flat, temperature, top_k, top_p, out: _RowResults) -> None:
    """Second half of the race: the exact value w / -log u of each row's largest-bound entry (its second
    hash is computed here). When no other bound reaches it (within RACE_BOUND_MARGIN), that entry is the
    exact argmax; the other rows (bounds are within ~2^-27 / (1 - u) of the value: about one row in a
    thousand) are raced exactly, entry by entry."""
    rows = torch.arange(flat.shape[0], device=flat.device)
    exact = out.best_weight / -hash_uniform(seed, rows[:, None], out.tokens[:, None])[:, 0].log()
    runner_up_bound = -out.negative_runner_up_bound * (1.0 + BOUND_ROUNDING)
    unresolved = ~(runner_up_bound < exact * (1.0 - RACE_BOUND_MARGIN))
    if bool(unresolved.any()):
        redo = unresolved.nonzero()[:, 0]
        x = flat[redo]
        weights = torch.exp((x.double() - out.top1[redo, None]) / temperature)
        threshold = filter_threshold(x, top_k, top_p, temperature)
        if threshold is not None:
            weights.masked_fill_(x < threshold[:, None].to(x.dtype), 0.0)
        columns = torch.arange(flat.shape[1], device=flat.device)[None]
        out.tokens[redo] = (weights / -hash_uniform(seed, redo[:, None], columns).log()).argmax(-1)


def _gumbel_argmax_float32(x, threshold, temperature, hash1) -> torch.Tensor:
    """The float32 Gumbel-max of torch.rand-like 24-bit uniforms (G capped near 16.6): for comparison only.

    Same uniforms as hash_uniform(..., "float32"), from the first hash of each entry."""
    u = hash1.bitwise_right_shift_(8).bitwise_and_((1 << 24) - 1).to(torch.float32)
    u.add_(0.5).mul_(2.0 ** -24).clamp_max_(U32_MAX)
    scores = u.log_().neg_().log_().neg_().add_(x.float() / temperature)  # x/T + G, G = -log(-log u)
    if threshold is not None:
        scores.masked_fill_(x < threshold[:, None].to(x.dtype), float("-inf"))
    return scores.argmax(-1)
