"""The training objectives: the three masked losses are unbiased estimates of one negative ELBO (checked
against the ELBO computed by enumerating every mask), and the AR loss is the exact next-token NLL."""

from __future__ import annotations

import math

import pytest
import torch

from mdlm import MDLMForMaskedLM
from mdlm.losses import MASKED_LOSSES, ar_loss, compute_loss, exact_negative_elbo
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def sharp_model(stdlib_tokenizer):
    """A tiny model with scaled-up weights: its predictions are sharp and depend strongly on the context,
    so an estimator that conditions or weights wrongly lands far from the exact ELBO."""
    torch.manual_seed(1)
    model = MDLMForMaskedLM(tiny_config(stdlib_tokenizer)).eval()
    with torch.no_grad():
        model.embed.weight.mul_(40)
        model.lm_head.weight.mul_(15)
    return model


SEQUENCE = torch.tensor([[40, 71, 300, 5, 122, 260]])


def estimates(model, loss: str, input_ids, fixed=None, repeats: int = 60, batch: int = 64):
    """`repeats` independent batch-mean estimates (nats per eligible token) of one sequence."""
    values = []
    with torch.no_grad():
        for seed in range(repeats):
            generator = torch.Generator().manual_seed(seed)
            ids = input_ids.expand(batch, -1)
            rows_fixed = None if fixed is None else fixed.expand(batch, -1)
            values.append(compute_loss(model, ids, "mdlm", loss, fixed=rows_fixed, generator=generator).loss.item())
    values = torch.tensor(values, dtype=torch.float64)
    return values.mean().item(), values.std().item() / math.sqrt(repeats)


@pytest.mark.parametrize("with_prompt", [False, True])
def test_masked_losses_match_the_enumerated_elbo(sharp_model, stdlib_tokenizer, with_prompt):
    fixed = torch.tensor([[True, True, False, False, False, False]]) if with_prompt else None
    exact = exact_negative_elbo(sharp_model, SEQUENCE, fixed).item()
    uniform = math.log(len(stdlib_tokenizer) - 1)
    results = {}
    for loss in MASKED_LOSSES:
        mean, stderr = estimates(sharp_model, loss, SEQUENCE, fixed)
        results[loss] = (mean, stderr)
        assert abs(mean - exact) < 4 * stderr + 1e-6, f"{loss}: {mean:.4f} +- {stderr:.4f} vs exact {exact:.4f}"
    # The check has power: the exact value is far (in standard errors) from an uninformed model's.
    worst = max(stderr for _, stderr in results.values())
    assert abs(exact - uniform) > 10 * worst, (exact, uniform, worst)
    # and the three estimators agree with each other in expectation
    means = [m for m, _ in results.values()]
    assert max(means) - min(means) < 4 * math.sqrt(2) * worst


def test_losses_ignore_fixed_and_padding_positions(sharp_model):
    """A fixed position is never masked: changing the fixed tokens' *targets* cannot matter, and a fully
    fixed batch has no eligible tokens."""
    ids = SEQUENCE.expand(8, -1)
    fixed = torch.zeros_like(ids, dtype=torch.bool)
    fixed[:, :2] = True
    for loss in MASKED_LOSSES:
        out = compute_loss(sharp_model, ids, "mdlm", loss, fixed=fixed, generator=torch.Generator().manual_seed(0))
        assert out.num_tokens.item() == 8 * 4
        everything = compute_loss(sharp_model, ids, "mdlm", loss, fixed=torch.ones_like(fixed),
                                  generator=torch.Generator().manual_seed(0))
        assert everything.num_tokens.item() == 0 and everything.loss.item() == 0


def test_ar_loss_is_the_exact_next_token_nll(stdlib_tokenizer):
    torch.manual_seed(2)
    model = MDLMForMaskedLM(tiny_config(stdlib_tokenizer, attention="causal")).eval()
    ids = torch.randint(0, 500, (3, 12))
    with torch.no_grad():
        got = ar_loss(model, ids)
        # -log p(x_i | x_<i) from separate forward passes over each prefix alone (no mask involved)
        nll = [-torch.log_softmax(model(ids[:, :i]).logits[:, -1], -1).gather(1, ids[:, i:i + 1]).squeeze(1)
               for i in range(1, ids.shape[1])]
    expected = torch.stack(nll, 1).mean().item()
    assert got.loss.item() == pytest.approx(expected, rel=1e-5)
    assert got.num_tokens.item() == 3 * 11


def test_unknown_objective_and_loss_are_named():
    with pytest.raises(ValueError, match="unknown loss 'x-dce'"):
        compute_loss(None, SEQUENCE, "mdlm", "x-dce")
    with pytest.raises(ValueError, match="unknown objective 'gan'"):
        compute_loss(None, SEQUENCE, "gan")
