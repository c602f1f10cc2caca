"""Block-cache strategies of the confidence decoder: how each step's network call is run.

The block loop (`mdlm.decode.confidence`) asks a strategy for the logits at the positions it draws;
the strategy decides what to run and what to keep between the steps of a block:
- `NoBlockCache`: every call runs the whole canvas (exact for any model).
- `ApproximatePrefixCache` (Fast-dLLM, Wu et al. 2025, "Fast-dLLM: Training-free Acceleration of Diffusion
  LLM by Enabling KV Cache and Parallel Decoding"): on a bidirectional model, the first call of a block
  runs the whole canvas and keeps the keys/values of the columns before the block; later calls run the
  block and everything after it against them. Approximate: the prefix was encoded while the block was
  still masked. Opt-in (`DecodeConfig.approximate_prefix_cache`).
- `ExactBlockCache` (BD3-LM, Arriola et al. 2025): on a block-causal model a finished block never sees
  later blocks, so its keys/values are final and caching them is exact.

A strategy is an object with `start_block(block)` and `logits(x, first_step, wanted, full_logits) -> (N, V)`
(the logits at the N `wanted` (B, L) positions, row-major). To add one (e.g. Fast-dLLM's dual cache, which
also keeps the suffix after the block), write the class here and choose it in `choose_block_cache`.
"""

from __future__ import annotations

from mdlm.decode.blocks import Block
from mdlm.decode.denoiser import CountedDenoiser, active_positions
from mdlm.model import KVCache


def truncate_cache(cache: KVCache, length: int) -> KVCache:
    """The cache of the first `length` columns."""
    return KVCache([k[:, :, :length] for k in cache.keys], [v[:, :, :length] for v in cache.values],
                   cache.positions[:, :length], cache.valid[:, :length])


def logits_where(call, wanted, full_logits: bool):
    """(N, V) logits of the N wanted (B, W) positions of one network call, in row-major order (what
    `logits[wanted]` gives). `call(at)` runs the network with `at=` positions; unless `full_logits`, the
    head runs at the wanted positions only, so no (B, W, V) tensor is made for a large vocabulary."""
    if full_logits:
        return call(None)[wanted]
    at, present = active_positions(wanted)
    return call(at)[present]


class NoBlockCache:
    """Every call runs the whole canvas (exact for any model)."""

    name = "none"

    def __init__(self, denoiser: CountedDenoiser, valid, position_ids):
        self.denoiser, self.valid, self.position_ids = denoiser, valid, position_ids

    def start_block(self, block: Block) -> None:
        pass

    def logits(self, x, first_step: bool, wanted, full_logits: bool):
        """(N, V) logits at the `wanted` (B, L) positions (see `logits_where`)."""
        return logits_where(lambda at: self.denoiser.logits(x, self.valid, self.position_ids, at=at), wanted,
                            full_logits)


class ExactBlockCache(NoBlockCache):
    """Exact block KV cache (BD3-LM) on a canvas whose column is the position.

    The first call of block j runs the not-yet-cached columns [c, end_j) against the cache of [0, c) and
    keeps the keys/values of [0, start_j); later calls of block j run only [start_j, end_j)."""

    name = "exact"

    def __init__(self, denoiser: CountedDenoiser, valid, position_ids):
        super().__init__(denoiser, valid, position_ids)
        self.cache, self.cached_until, self.block = None, 0, None

    def start_block(self, block: Block) -> None:
        self.block = block.columns

    def logits(self, x, first_step: bool, wanted, full_logits: bool):
        start, end = self.block
        if first_step:
            lo = self.cached_until

            def call(at):
                logits, cache = self.denoiser.logits(x[:, lo:end], self.valid[:, lo:end],
                                                     self.position_ids[:, lo:end], cache=self.cache, use_cache=True,
                                                     at=at)
                self.cache = truncate_cache(cache, start)
                return logits

            out = logits_where(call, wanted[:, lo:end], full_logits)
            self.cached_until = start
            return out
        return logits_where(lambda at: self.denoiser.logits(x[:, start:end], self.valid[:, start:end],
                                                            self.position_ids[:, start:end], cache=self.cache, at=at),
                            wanted[:, start:end], full_logits)


class ApproximatePrefixCache(NoBlockCache):
    """Fast-dLLM's prefix cache for bidirectional models (an approximation: the cached prefix keys were
    computed while the current block was still masked). The first call of a block runs the whole canvas
    and caches the columns before the block; later calls run the block and everything after it."""

    name = "prefix"

    def __init__(self, denoiser: CountedDenoiser, valid, position_ids):
        super().__init__(denoiser, valid, position_ids)
        self.cache, self.prefix = None, 0

    def start_block(self, block: Block) -> None:
        columns = block.members.any(0).nonzero()
        self.prefix = int(columns[0]) if len(columns) else 0

    def logits(self, x, first_step: bool, wanted, full_logits: bool):
        if first_step:
            def call(at):
                logits, cache = self.denoiser.logits(x, self.valid, self.position_ids, use_cache=True, at=at)
                self.cache = truncate_cache(cache, self.prefix)
                return logits

            return logits_where(call, wanted, full_logits)
        p = self.prefix
        return logits_where(lambda at: self.denoiser.logits(x[:, p:], self.valid[:, p:], self.position_ids[:, p:],
                                                            cache=self.cache, at=at), wanted[:, p:], full_logits)


def choose_block_cache(denoiser: CountedDenoiser, config, column_blocks: bool, valid, position_ids) -> NoBlockCache:
    """The strategy for this model and config: the exact block cache on a block-causal model (unless
    use_cache=False), the approximate prefix cache when asked for on a model with a KV cache, else none."""
    if column_blocks and config.use_cache and denoiser.supports_cache:
        return ExactBlockCache(denoiser, valid, position_ids)
    shifted = getattr(getattr(denoiser, "profile", None), "shifted_logits", False)
    if (config.dual_cache or (config.approximate_prefix_cache and shifted)) and denoiser.supports_cache \
            and not column_blocks:
        from mdlm.decode.fast_dllm_cache import FastDLLMCache  # Dream's shift needs the query before the block

        return FastDLLMCache(denoiser, valid, position_ids, suffix=config.dual_cache)
    if config.approximate_prefix_cache and denoiser.supports_cache:
        return ApproximatePrefixCache(denoiser, valid, position_ids)
    if config.dual_cache and not column_blocks:
        raise ValueError("dual_cache needs a model with a KV cache (ours, LLaDA, Dream)")
    if config.approximate_prefix_cache and not column_blocks:
        raise ValueError("approximate_prefix_cache needs a model with a KV cache (MDLMForMaskedLM)")
    return NoBlockCache(denoiser, valid, position_ids)
