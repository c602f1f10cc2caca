"""Confidence-ordered decoding with semi-autoregressive blocks.

LLaDA (Nie et al. 2025, "Large Language Diffusion Models"), Algorithm "low-confidence remasking": at each
step draw x0 at every masked position of the current block, score the draws (the model's probability of
the drawn token, computed without the Gumbel noise), commit the n_s best and leave the rest masked.
Blocks are decoded left to right.

    for each block (mdlm.decode.blocks: its positions and the tokens n_1..n_S each step reveals):
        for s in 1..S:
            logits = f(x)                        # one network call (mdlm.decode.block_cache: what it runs)
            x0_i ~ p_i for masked i in the block  # float64 Gumbel, temperature / top-k / top-p (draw)
            c_i = score(x0_i)                    # the remasking policy's score (mdlm.decode.remasking)
            c_i *= gamma_s if x0_i = EOS         # EOSER (Yang et al. 2025), optional
            x = commit(x, x0, c)                 # the policy: the n_s largest c_i (LLaDA), all c_i >= tau
                                                 # (Fast-dLLM threshold), fill all then remask (MDPO RCR)

The variants live beside this loop, each in its own file: the unmasking schedules (uniform, cosine,
ascending step size: `mdlm.decode.unmasking`), the remasking policies, and the block-cache strategies
(none, Fast-dLLM's approximate prefix cache, BD3-LM's exact block KV cache on block-causal models).
"""

from __future__ import annotations

import torch

from mdlm.decode.block_cache import choose_block_cache
from mdlm.decode.blocks import PositionLayout, block_length_for_block_causal, plan_column_blocks, plan_rank_blocks
from mdlm.decode.canvas import Canvas
from mdlm.decode.config import DecodeConfig, DecodeResult
from mdlm.decode.denoiser import CountedDenoiser, as_denoiser
from mdlm.decode.draw import draw, tempered_logprob
from mdlm.decode.remasking import remasking_policy
from mdlm.decode.unmasking import ascending_num_steps, eoser_gamma
from mdlm.decode.trace import TraceRecorder


def decode_blocks(denoiser: CountedDenoiser, x, valid, position_ids, config: DecodeConfig, generator,
                  column_blocks: int | None, recorder: TraceRecorder):
    """The LLaDA loop over blocks and steps; returns (tokens, steps)."""
    mask_id = denoiser.require_mask_id()
    x = x.clone()
    to_generate = (x == mask_id) & valid
    policy = remasking_policy(config)
    calls = choose_block_cache(denoiser, config, bool(column_blocks), valid, position_ids)
    if column_blocks:
        blocks = plan_column_blocks(to_generate, config, column_blocks, policy.sets_own_steps)
    else:
        blocks = plan_rank_blocks(to_generate, config, policy.sets_own_steps)
    # EOSER's gamma follows each row's own step count (the steps it has alone), not the batch's
    rows = range(x.shape[0])
    total_steps = [sum(b.row_steps[r] for b in blocks) for r in rows]
    if config.unmasking_schedule == "ascending":
        total_steps = [ascending_num_steps(int(m)) for m in to_generate.sum(-1).tolist()]
    row_step = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    eos_id = config.eos_token_id if config.eos_token_id is not None else denoiser.eos_token_id
    global_step = 0
    for block in blocks:
        calls.start_block(block)
        policy.start_block(x)
        first_step = True
        step = 0
        row_steps = torch.tensor(block.row_steps, device=x.device)
        while ((x == mask_id) & block.members).any():
            if not policy.sets_own_steps:
                if step >= block.counts.shape[1]:
                    raise RuntimeError("the unmasking schedule ended with masks left in the block (a bug)")
                if not bool(block.counts[:, step].any()):  # a step that reveals nothing costs no network call
                    row_step += step < row_steps
                    step, global_step = step + 1, global_step + 1
                    continue
            masked = (x == mask_id) & block.members  # (B, L)
            masked_logits = calls.logits(x, first_step, masked, config.full_logits)  # (N, V), N masked in the block
            first_step = False
            sample = draw(masked_logits, config, generator, statistics=policy.needs_statistics)
            x0 = x.clone()
            x0[masked] = sample.tokens
            score = torch.full(x.shape, float("-inf"), dtype=torch.float64, device=x.device)  # (B, L)
            score[masked] = policy.scores(sample, generator)
            logprob = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
            logprob[masked] = sample.logprob
            policy_logprob = None
            if recorder.active:  # RL's action log-probs: at the rollout temperature, not the confidence's T=1
                policy_logprob = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
                policy_logprob[masked] = tempered_logprob(masked_logits, sample.tokens, config.temperature)
            if config.eoser and eos_id is not None:
                gamma = torch.tensor([eoser_gamma(int(row_step[r]), total_steps[r], config.unmasking_schedule,
                                                  config.eoser_gamma_min) for r in rows], dtype=score.dtype)
                score = torch.where(masked & (x0 == eos_id), score * gamma.to(x.device)[:, None], score)
            after, revealed, remasked = policy.commit(x, x0, masked, score, block, step, mask_id)
            recorder.record(x, revealed, logprob, remasked, x0=x0, confidence=score, policy_logprob=policy_logprob)
            x = after
            row_step += masked.any(-1) if policy.sets_own_steps else step < row_steps
            step, global_step = step + 1, global_step + 1
    return x, global_step


def confidence_decode(denoiser, canvas, config: DecodeConfig, valid=None, position_ids=None, generator=None):
    """LLaDA-style confidence decoding of `canvas` -> DecodeResult (see the module docstring)."""
    denoiser = as_denoiser(denoiser)
    canvas = Canvas.of(denoiser, canvas, valid, position_ids)
    canvas, valid, position_ids = canvas.tokens, canvas.valid, canvas.positions
    meter = denoiser.meter()
    if denoiser.attention == "block-causal":
        # Block-causal attention is defined on positions: decode in a layout whose column is the position.
        block_length = block_length_for_block_causal(denoiser, config)
        layout = PositionLayout(canvas, valid, position_ids)
        callback = config.step_callback
        recorder = TraceRecorder(config.trace, callback and (lambda step: callback(layout.restore_step(step, canvas))))
        tokens, steps = decode_blocks(denoiser, layout.aligned, layout.aligned_valid, layout.aligned_positions,
                                      config, generator, block_length, recorder)
        tokens = layout.restore(tokens, canvas)
        trace = recorder.result()
        if trace is not None:
            trace = [layout.restore_step(step, canvas) for step in trace]
    else:
        recorder = TraceRecorder(config.trace, config.step_callback)
        tokens, steps = decode_blocks(denoiser, canvas, valid, position_ids, config, generator, None, recorder)
        trace = recorder.result()
    return DecodeResult(tokens=tokens, nfe=meter.nfe, trace=trace,
                        stats={"steps": steps, "row_evaluations": meter.row_evaluations})
