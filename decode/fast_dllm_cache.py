"""Fast-dLLM's dual cache (Wu et al. 2025, "Fast-dLLM: Training-free Acceleration of Diffusion LLM by
Enabling KV Cache and Parallel Decoding", Sec. 3.2) as a block-cache strategy of the confidence decoder.

On a bidirectional model the keys/values of the tokens outside the current block change little while
the block is decoded. Per block (Fast-dLLM's `generate_with_dual_cache`):
    step 1 of block [s, e):  run the whole canvas; keep the keys/values of the prefix [0, s) AND of the
                             suffix [e, L) (refreshed at every block: the cache is rebuilt here)
    steps 2..S:              run only the block's columns as queries, attending to the cached prefix,
                             the block's fresh keys and the cached suffix
So a step costs the block's columns instead of the canvas. Approximate, like the prefix cache: the
cached keys were computed while the block was still masked (the suffix is all masks in plain
generation, whose keys barely move). With `suffix=False` this is the prefix cache (queries [s, L)).

Logit shift (Dream / DiffuCoder): position i is read from the hidden state at i - 1, so the queries
start one column earlier (s - 1), which is then not cached; otherwise the block's first position would
be read from a stale cached state or from its own.

Keys are attended by validity and position, not by their order in the cache, so the prefix and suffix
keys sit side by side in one `KVCache` and the block's keys are appended by the model's call.
"""

from __future__ import annotations

import torch

from mdlm.decode.block_cache import NoBlockCache, logits_where
from mdlm.decode.blocks import Block
from mdlm.decode.denoiser import CountedDenoiser
from mdlm.model import KVCache


def outside_columns(cache: KVCache, lo: int, hi: int) -> KVCache:
    """The cache of the columns [0, lo) and [hi, L) (the block's, [lo, hi), left out)."""
    def cut(t):
        return torch.cat([t[:, :, :lo], t[:, :, hi:]], 2)

    return KVCache([cut(k) for k in cache.keys], [cut(v) for v in cache.values],
                   torch.cat([cache.positions[:, :lo], cache.positions[:, hi:]], 1),
                   torch.cat([cache.valid[:, :lo], cache.valid[:, hi:]], 1))


class FastDLLMCache(NoBlockCache):
    """Fast-dLLM's dual cache (prefix + suffix), or its prefix cache with `suffix=False` (see the module
    docstring); refreshed at the first step of every block."""

    def __init__(self, denoiser: CountedDenoiser, valid, position_ids, suffix: bool = True):
        super().__init__(denoiser, valid, position_ids)
        self.suffix = suffix
        self.name = "dual" if suffix else "prefix"
        profile = getattr(denoiser, "profile", None)
        self.shift = 1 if getattr(profile, "shifted_logits", False) else 0
        self.cache, self.columns = None, (0, valid.shape[1])

    def start_block(self, block: Block) -> None:
        present = block.members.any(0).nonzero()[:, 0]
        width = self.valid.shape[1]
        start, end = (int(present[0]), int(present[-1]) + 1) if len(present) else (0, width)
        self.columns = (max(0, start - self.shift), end if self.suffix else width)

    def logits(self, x, first_step: bool, wanted, full_logits: bool):
        lo, hi = self.columns
        if first_step:
            def call(at):
                logits, cache = self.denoiser.logits(x, self.valid, self.position_ids, use_cache=True, at=at)
                self.cache = outside_columns(cache, lo, hi)
                return logits

            return logits_where(call, wanted, full_logits)
        return logits_where(lambda at: self.denoiser.logits(x[:, lo:hi], self.valid[:, lo:hi],
                                                            self.position_ids[:, lo:hi], cache=self.cache, at=at),
                            wanted[:, lo:hi], full_logits)
