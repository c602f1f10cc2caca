"""The any-subset AR training mode: the "joint" mask's conditionals, the loss, its mask-rate curriculum,
and (slow) that training lowers it on real text."""

from __future__ import annotations

import pytest
import torch

import mdlm  # noqa: F401
from mdlm import MDLMConfig, MDLMForMaskedLM
from mdlm.as_arm import draft_logits, joint_mask_logits
from mdlm.losses import as_arm_loss, compute_loss, mask_rate_bounds

VOCAB, MASK = 12, 11


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = MDLMConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, mask_token_id=MASK)
    return MDLMForMaskedLM(config)


def test_mask_rate_curriculum_values():
    assert mask_rate_bounds(0, 1000) == pytest.approx((0.15, 0.15))
    assert mask_rate_bounds(500, 1000) == pytest.approx((0.50, 0.57))
    assert mask_rate_bounds(1000, 1000) == pytest.approx((0.85, 0.99))
    assert mask_rate_bounds(10**6, 1000) == pytest.approx((0.85, 0.99))
    assert mask_rate_bounds(7, 0) == pytest.approx((0.85, 0.99))


@pytest.mark.parametrize("step,low,high", [(0, 0.15, 0.15), (250, 0.50, 0.57), (5000, 0.85, 0.99)])
def test_loss_masks_at_the_curriculum_rate(model, step, low, high):
    ids = torch.randint(0, MASK, (16, 50), generator=torch.Generator().manual_seed(step))
    out = compute_loss(model, ids, objective="as-arm", step=step, curriculum_steps=500, generator=torch.Generator().manual_seed(1))
    fraction = out.num_tokens.item() / ids.numel()
    assert low - 0.011 <= fraction <= high + 0.011  # per-row counts are rounded to whole tokens
    assert torch.isfinite(out.loss)
    torch.testing.assert_close(out.sum_nll, out.loss * out.num_tokens)


def test_loss_backpropagates_and_respects_fixed_and_padding(model):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, MASK, (4, 20), generator=g)
    fixed = torch.zeros_like(ids, dtype=torch.bool)
    fixed[:, :5] = True
    padding = torch.ones_like(ids, dtype=torch.bool)
    padding[:, 15:] = False
    model.zero_grad()
    out = as_arm_loss(model, ids, fixed=fixed, attention_mask=padding, step=10**6, generator=g)
    out.loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "weight" in n]
    assert all(grad is not None and torch.isfinite(grad).all() for grad in grads)
    assert sum(float(grad.abs().sum()) for grad in grads) > 0
    assert 0 < out.num_tokens <= 4 * 10  # only the 10 free, unpadded positions per row are scored
    # The tokens at padded positions do not matter.
    other = ids.clone()
    other[:, 15:] = 0
    again = as_arm_loss(model, other, fixed=fixed, attention_mask=padding, step=10**6,
                        generator=torch.Generator().manual_seed(0))
    first = as_arm_loss(model, ids, fixed=fixed, attention_mask=padding, step=10**6,
                        generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.loss, first.loss)


def test_joint_mask_conditionals(model):
    """Masked target i sees the visible tokens and the masked tokens left of it, never itself or later
    ones, and equals a draft query after generating the earlier masked tokens left to right."""
    torch.manual_seed(0)
    ids = torch.randint(0, MASK, (1, 10))
    masked = torch.zeros_like(ids, dtype=torch.bool)
    masked[0, [1, 4, 5, 8]] = True
    with torch.no_grad():
        logits, targets, valid = joint_mask_logits(model, ids, masked)
    assert torch.equal(targets[valid], ids[0, [1, 4, 5, 8]])
    for j, position in enumerate([1, 4, 5, 8]):
        tokens = torch.where(masked, torch.full_like(ids, MASK), ids)
        rank = torch.where(masked, torch.full_like(ids, 1 << 40), torch.zeros_like(ids))
        for i, earlier in enumerate([1, 4, 5, 8][:j]):
            tokens[0, earlier], rank[0, earlier] = ids[0, earlier], i + 1
        with torch.no_grad():
            single = draft_logits(model, tokens, rank, torch.tensor([[position]]))[0, 0]
        torch.testing.assert_close(logits[0, j, :MASK], single[:MASK], atol=1e-4, rtol=1e-4)
    changed = ids.clone()
    changed[0, 5] = (ids[0, 5] + 1) % MASK  # the third target's own token
    with torch.no_grad():
        after, _, _ = joint_mask_logits(model, changed, masked)
    torch.testing.assert_close(after[0, :3], logits[0, :3])  # targets 1, 4, 5 do not see it
    assert not torch.allclose(after[0, 3], logits[0, 3])  # target 8 does


def test_as_arm_loss_rejects_a_causal_model():
    causal = MDLMForMaskedLM(MDLMConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=64, max_position_embeddings=64, mask_token_id=MASK,
                                        attention="causal"))
    with pytest.raises(ValueError, match="bidirectional"):
        as_arm_loss(causal, torch.zeros(1, 4, dtype=torch.long))


@pytest.mark.slow
def test_a_few_dozen_steps_lower_the_loss_on_stdlib_code(stdlib_tokenizer):
    from mdlm.data import stdlib_texts

    tokenizer = stdlib_tokenizer
    stream = []
    for text in stdlib_texts("train", limit=20):
        stream += tokenizer(text)["input_ids"]
    seq_len = 48
    chunks = torch.tensor(stream[: (len(stream) // seq_len) * seq_len]).view(-1, seq_len)
    train, held_out = chunks[:-32], chunks[-32:]
    torch.manual_seed(0)
    config = MDLMConfig.from_preset("tiny", vocab_size=len(tokenizer), mask_token_id=tokenizer.mask_token_id)
    model = MDLMForMaskedLM(config)

    def evaluate():
        with torch.no_grad():
            return sum(float(as_arm_loss(model, held_out, step=10**6, generator=torch.Generator().manual_seed(s)).loss)
                       for s in range(3)) / 3

    before = evaluate()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for step in range(40):
        batch = train[torch.randint(0, len(train), (16,), generator=g)]
        loss = compute_loss(model, batch, objective="as-arm", step=step, curriculum_steps=20, generator=g).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = evaluate()
    assert after < before - 0.7, (before, after)


@pytest.mark.slow
def test_pretrain_as_arm_from_an_mdlm_run_and_decode_it(tiny_run_dir, tmp_path):
    from transformers import AutoModelForMaskedLM

    from mdlm.decode import DecodeConfig, decode
    from mdlm.train.pretrain import train

    run = train(dict(config="tiny", objective="as-arm", init_from=str(tiny_run_dir), output_dir=str(tmp_path / "asarm"),
                     max_steps=3, max_documents=5, eval_every=3, save_every=3, eval_batches=1, progress=False))
    model = AutoModelForMaskedLM.from_pretrained(run).eval()
    assert model.config.objective == "as-arm" and model.config.attention == "bidirectional"
    canvas = torch.full((2, 12), model.config.mask_token_id)
    result = decode(model, canvas, DecodeConfig(sampler="assd", draft_size=4, seed=0))
    assert not bool((result.tokens == model.config.mask_token_id).any())
    assert max(result.stats["calls_per_row"]) <= 12


def test_as_arm_and_losses_form_no_import_circle():
    """losses.py imports the two-stream machinery of as_arm.py; as_arm.py must not import losses back,
    not even lazily inside a function."""
    import ast
    from pathlib import Path

    import mdlm.as_arm

    tree = ast.parse(Path(mdlm.as_arm.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert "mdlm.losses" not in imported
    assert compute_loss.__globals__["as_arm_loss"] is as_arm_loss  # the loss is defined beside the others
