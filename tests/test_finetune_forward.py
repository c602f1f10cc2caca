"""The trainable Denoiser (`mdlm.trainable`): per family, the training forward equals the decoding logits at
the masked positions (same convention: the family's shift undone, its masks and positions) and the
family's own reading of its output; gradients reach the network; the masked-diffusion losses, LoRA and
the adapter-disabled reference run through it."""

from __future__ import annotations

import pytest
import torch

from mdlm import MDLMConfig, MDLMForMaskedLM
from mdlm.decode.denoiser import MDLMDenoiser
from mdlm.losses import compute_loss
from mdlm.trainable import (AdapterDisabled, TrainableDenoiser, add_lora, lora_target_modules, merged_state_dict,
                            training_logits)
from tests.family_models import reference_logits
from tests.test_families import BLOCK, FAMILIES, adapter, family_model

VOCAB, LENGTH = 12, 8
MASK = 3  # the stand-ins' mask id (tests.test_families.MASK)
NO_PADDING = ("mdlm-owt", "bd3lm")  # families without an attention mask: rows must be contiguous spans


def ours(seed=0, attention="bidirectional"):
    torch.manual_seed(seed)
    config = MDLMConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, mask_token_id=MASK, attention=attention,
                        block_size=BLOCK)
    return MDLMForMaskedLM(config).eval()


def native_denoiser(family: str):
    """A tiny checkpoint in the family's published layout, loaded natively through the one loader."""
    import tempfile

    from mdlm.decode.loading import load_denoiser
    from tests.family_models import write_published_checkpoint

    with tempfile.TemporaryDirectory() as folder:
        return load_denoiser(write_published_checkpoint(folder, family))[0]


def denoiser_of(family: str):
    if family.startswith("native-"):
        return native_denoiser(family.removeprefix("native-"))
    if family.startswith("ours"):
        return MDLMDenoiser(ours(attention="block-causal" if family == "ours-block" else "bidirectional"))
    return adapter(family_model(family, VOCAB), family)


def canvas(seed=0, padded=True, mask_id=MASK):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (3, LENGTH), generator=generator)
    ids[ids == MASK] = 0
    masked = torch.rand(3, LENGTH, generator=generator) < 0.5
    ids = ids.masked_fill(masked, mask_id)
    valid = torch.ones_like(ids, dtype=torch.bool)
    if padded:
        valid[1, :2] = False  # a left-padded row
        valid[2, :1] = False
    return ids, valid, masked & valid


# mdlm.families, from the published layout (150k-token vocabularies: Dream's and SDAR's run with the slow tests)
NATIVE = ["native-llada", pytest.param("native-dream", marks=pytest.mark.slow),
          pytest.param("native-sdar", marks=pytest.mark.slow)]


@pytest.mark.parametrize("family", [*FAMILIES, "ours", "ours-block", *NATIVE])
def test_the_training_forward_equals_the_decoding_logits_at_masked_positions(family):
    denoiser = denoiser_of(family)
    ids, valid, masked = canvas(padded=family not in NO_PADDING, mask_id=denoiser.mask_token_id)
    from mdlm.decode.canvas import default_position_ids

    positions = default_position_ids(valid)
    decoding = denoiser.logits(ids, valid, positions)
    nfe = denoiser.nfe
    trainable = TrainableDenoiser(denoiser)
    training = trainable(ids, attention_mask=valid, position_ids=positions).logits
    assert training.requires_grad and denoiser.nfe == nfe  # with gradients, and no decoding call counted
    assert torch.equal(training[masked], decoding[masked])
    assert torch.equal(training_logits(denoiser.model, ids, valid, positions)[masked], decoding[masked])
    training[masked].logsumexp(-1).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in denoiser.model.parameters())


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in ("bert", "modernbert")])
def test_the_training_forward_reads_the_output_as_the_familys_own_code_does(family):
    """Against tests.family_models.reference_logits (the family's generation code, written apart from
    mdlm.decode.families): Dream's shift, LLaDA2/SDAR's block-causal mask, MDLM-OWT's timesteps."""
    denoiser = denoiser_of(family)
    ids, valid, masked = canvas(padded=False)
    reference = reference_logits(family, denoiser.model, ids, MASK, block_size=BLOCK)
    training = TrainableDenoiser(denoiser)(ids).logits.detach()
    assert torch.allclose(training[masked], reference[masked], atol=1e-5)


def test_a_dream_forward_that_forgot_its_shift_would_be_caught():
    denoiser = denoiser_of("dream")
    ids, _, masked = canvas(padded=False)
    raw = denoiser.model(input_ids=ids).logits  # the AR layout: column i predicts token i + 1
    raw[..., MASK] = float("-inf")
    training = TrainableDenoiser(denoiser)(ids).logits.detach()
    assert not torch.allclose(training[masked], raw[masked], atol=1e-3)


@pytest.mark.parametrize("family", ["llada", "dream", "sdar", "ours"])
def test_the_masked_diffusion_loss_trains_any_family_through_the_trainable_face(family):
    trainable = TrainableDenoiser(denoiser_of(family)).train()
    ids = torch.randint(4, VOCAB, (4, LENGTH), generator=torch.Generator().manual_seed(1))
    fixed = torch.zeros_like(ids, dtype=torch.bool)
    fixed[:, :3] = True  # a prompt: never masked, never scored
    optimizer = torch.optim.AdamW(trainable.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):  # the same masks every step: the loss of one fixed draw goes down
        out = compute_loss(trainable, ids, "mdlm", "t-dce", fixed=fixed, generator=torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("family", ["llada", "dream", "sdar", "ours"])
def test_lora_trains_only_the_adapters_and_the_disabled_adapter_is_the_base(family):
    denoiser = denoiser_of(family)
    ids, valid, masked = canvas(padded=True)
    before = denoiser.logits(ids, valid, None)
    trainable = TrainableDenoiser(denoiser).add_lora(r=4)
    trainable_names = [n for n, p in trainable.named_parameters() if p.requires_grad]
    assert trainable_names and all("lora_" in n for n in trainable_names)
    with torch.no_grad():  # move the adapter away from its zero start
        for name, p in trainable.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    adapted = training_logits(trainable, ids, valid).detach()
    assert not torch.allclose(adapted[masked], before[masked], atol=1e-4)
    reference = training_logits(AdapterDisabled(trainable.model), ids, valid).detach()
    assert torch.equal(reference[masked], before[masked])  # the base, no copy made
    # merged weights: the base network with W + delta gives the adapted logits
    merged = merged_state_dict(trainable.model)
    fresh = denoiser_of(family)
    fresh.model.load_state_dict(merged)
    assert torch.allclose(fresh.logits(ids, valid, None)[masked], adapted[masked], atol=1e-4)


def test_lora_targets_follow_the_family_and_never_the_head():
    model = ours()
    assert sorted(n.rsplit(".", 1)[-1] for n in lora_target_modules(model, "ours")) == \
        sorted(["qkv", "out", "0", "2"] * 2)
    assert all("lm_head" not in n for n in lora_target_modules(model, "llada"))  # unknown names: all linear but the head
    chosen = lora_target_modules(model, "ours", "qkv")
    assert len(chosen) == 2 and all(n.endswith(".qkv") for n in chosen)
    with pytest.raises(ValueError, match="--lora-target nope: no linear layer"):
        lora_target_modules(model, "ours", "nope")
    with pytest.raises(ValueError, match="--lora-r must be an integer >= 1"):
        add_lora(model, 0)
