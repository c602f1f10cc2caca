"""Issue 24 point 2: a batch of left-padded prompts gives, at temperature 0, the tokens each prompt gives
alone, with an explicit `steps` too (mdlm.decode.blocks plans each row's steps as it would alone).

On a block-causal model (SDAR, BD3-LM) the decoding blocks are position ranges, so prompts of other
lengths cover other blocks; sharing `steps` over the batch's blocks gave each row another schedule.
The bidirectional path (LLaDA: rank blocks) is checked with steps and block_length as well."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mdlm.decode import DecodeConfig
from mdlm.decode.blocks import plan_column_blocks
from mdlm.decode.loading import load_denoiser
from tests.family_models import write_published_checkpoint
from tests.test_native_families import decode_prompts

PROMPTS = ["w1 w2 w3", "w4", "w5 w6 w7 w8 w9 w10"]  # three lengths: each covers other position blocks


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return {family: load_denoiser(write_published_checkpoint(tmp_path_factory.mktemp(family), family))
            for family in ("sdar", "bd3lm", "llada")}


def paths_with_steps(block_causal: bool):
    base = DecodeConfig(sampler="confidence", temperature=0.0, steps=5, block_length=4, use_cache=False)
    paths = {"plain": base, "cosine": dataclasses.replace(base, unmasking_schedule="cosine"),
             "eoser": dataclasses.replace(base, eoser=True),
             "margin": dataclasses.replace(base, remasking="margin")}
    if block_causal:
        paths["exact block KV"] = dataclasses.replace(base, use_cache=True)
    else:
        paths["dual cache"] = dataclasses.replace(base, dual_cache=True)
    return paths


@pytest.mark.parametrize("family", ["sdar", "bd3lm", "llada"])
def test_a_left_padded_batch_with_steps_decodes_each_prompt_as_alone(family, loaded):
    denoiser, tokenizer, _ = loaded[family]
    for name, config in paths_with_steps(denoiser.attention == "block-causal").items():
        alone = [decode_prompts(denoiser, tokenizer, [prompt], config)[0] for prompt in PROMPTS]
        batch = decode_prompts(denoiser, tokenizer, PROMPTS, config)
        assert batch == alone, f"{family} {name}"


def test_each_row_spreads_its_steps_over_its_own_column_blocks():
    # row 0 generates columns 3..10 (blocks [0,4) [4,8) [8,12)), row 1 columns 9..16 (blocks [8,12) .. [16,20))
    to_generate = torch.zeros(2, 17, dtype=torch.bool)
    to_generate[0, 3:11] = True
    to_generate[1, 9:17] = True
    config = DecodeConfig(sampler="confidence", temperature=0.0, steps=5, block_length=4)
    blocks = plan_column_blocks(to_generate, config, 4)
    assert [b.row_steps for b in blocks] == [[1, 0], [3, 0], [1, 2], [0, 2], [0, 1]]
    for row in range(2):
        alone = plan_column_blocks(to_generate[row:row + 1], config, 4)
        assert [b.counts[0][:b.row_steps[0]].tolist() for b in alone] == \
            [b.counts[row][:b.row_steps[row]].tolist() for b in blocks if b.row_steps[row]]
