"""Any-subset speculative decoding: exactness against the enumerated joint of a tiny two-stream model,
the rejection step on its own, network-call bounds, and agreement of the draft/verify conditionals."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch
from scipy.stats import chisquare

import mdlm  # noqa: F401
from mdlm import MDLMConfig, MDLMForMaskedLM
from mdlm.as_arm import UNDECIDED, draft_logits, initial_rank, verify_logits
from mdlm.decode import DecodeConfig, decode
from mdlm.decode import speculative
from mdlm.decode.speculative import accept_coins, assd_decode, sample_residual
from mdlm.kernels import categorical_probs

MASK = 4  # tokens 0..3, mask id 4
WEIGHT_SCALE = 5.0  # makes the conditionals depend strongly on context (TV(joint, product of marginals) ~ 0.3)


def sharp_model(seed: int = 0) -> MDLMForMaskedLM:
    torch.manual_seed(seed)
    config = MDLMConfig(vocab_size=5, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=8, mask_token_id=MASK)
    model = MDLMForMaskedLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" not in name:
                parameter.mul_(WEIGHT_SCALE)
    return model


@pytest.fixture(scope="module")
def model():
    return sharp_model()


@torch.no_grad()
def enumerate_joint(model, canvas: torch.Tensor, order: list[int], temperature: float = 1.0) -> dict:
    """{completed canvas: probability} = prod_j p(x_order[j] | fixed tokens, x_order[<j]), each conditional
    from a draft query with the earlier generated tokens committed in order (ranks 1, 2, ...)."""
    prefixes = [(canvas.clone(), initial_rank(canvas[None], MASK)[0], 1.0)]
    for step, position in enumerate(order):
        tokens = torch.stack([t for t, _, _ in prefixes])
        rank = torch.stack([r for _, r, _ in prefixes])
        logits = draft_logits(model, tokens, rank, torch.full((len(prefixes), 1), position))[:, 0]
        probs = categorical_probs(logits[:, :MASK], temperature)
        grown = []
        for (tokens_i, rank_i, prob_i), p in zip(prefixes, probs):
            for value in range(MASK):
                t, r = tokens_i.clone(), rank_i.clone()
                t[position], r[position] = value, step + 1
                grown.append((t, r, prob_i * float(p[value])))
        prefixes = grown
    return {tuple(t.tolist()): p for t, _, p in prefixes}


def random_order_joint(model, canvas, temperature=1.0) -> dict:
    positions = (canvas == MASK).nonzero().flatten().tolist()
    orders = list(itertools.permutations(positions))
    joint: dict = {}
    for order in orders:
        for outcome, p in enumerate_joint(model, canvas, list(order), temperature).items():
            joint[outcome] = joint.get(outcome, 0.0) + p / len(orders)
    return joint


def goodness_of_fit(samples: torch.Tensor, joint: dict) -> float:
    """Chi-square p-value of the samples' outcome counts against `joint` (cells with expected count < 5
    pooled into one)."""
    n = samples.shape[0]
    counts: dict = {}
    for row in samples.tolist():
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    assert set(counts) <= set(joint), "a sample is not a completion of the canvas"
    observed, expected, pooled_obs, pooled_exp = [], [], 0, 0.0
    for outcome, p in joint.items():
        if n * p >= 5:
            observed.append(counts.get(outcome, 0))
            expected.append(n * p)
        else:
            pooled_obs += counts.get(outcome, 0)
            pooled_exp += n * p
    if pooled_exp > 0:
        observed.append(pooled_obs)
        expected.append(pooled_exp)
    scale = sum(observed) / sum(expected)
    return float(chisquare(observed, [e * scale for e in expected]).pvalue)


def assert_call_bound(result):
    generated = result.stats["generated_per_row"]
    for calls, tokens in zip(result.stats["calls_per_row"], generated):
        assert calls <= tokens
    assert result.nfe <= max(generated + [0])


N_SAMPLES = 4000


def test_assd_samples_the_enumerated_joint_left_to_right(model):
    canvas = torch.full((4,), MASK)
    joint = enumerate_joint(model, canvas, [0, 1, 2, 3])
    assert abs(sum(joint.values()) - 1) < 1e-9
    config = DecodeConfig(sampler="assd", draft_size=3, seed=0)
    result = decode(model, canvas.expand(N_SAMPLES, -1), config)
    assert_call_bound(result)
    assert 0 < result.stats["accepted"] < result.stats["drafted"]  # rejections happen: the test has teeth
    assert goodness_of_fit(result.tokens, joint) > 1e-3


def test_accepting_every_draft_fails_the_same_test(model, monkeypatch):
    canvas = torch.full((4,), MASK)
    joint = enumerate_joint(model, canvas, [0, 1, 2, 3])
    monkeypatch.setattr(speculative, "accept_coins", lambda p, q, generator=None: torch.ones_like(p, dtype=torch.bool))
    greedy_acceptance = decode(model, canvas.expand(N_SAMPLES, -1), DecodeConfig(sampler="assd", draft_size=3, seed=0))
    assert greedy_acceptance.stats["accepted"] == greedy_acceptance.stats["drafted"]
    assert goodness_of_fit(greedy_acceptance.tokens, joint) < 1e-6
    independent = decode(model, canvas.expand(N_SAMPLES, -1), DecodeConfig(sampler="assd-parallel", steps=2, seed=0))
    assert independent.nfe == 2
    assert goodness_of_fit(independent.tokens, joint) < 1e-6


def test_sequential_decoder_samples_the_same_joint(model):
    canvas = torch.full((4,), MASK)
    joint = enumerate_joint(model, canvas, [0, 1, 2, 3])
    result = decode(model, canvas.expand(N_SAMPLES, -1), DecodeConfig(sampler="assd-sequential", seed=1))
    assert result.nfe == 4
    assert goodness_of_fit(result.tokens, joint) > 1e-3


def test_assd_infilling_random_order_with_temperature(model):
    """A fixed token in the middle (infill conditioning), sigma a fresh random permutation per row, T=0.7,
    no cache: the samples follow the mixture over orders of the tempered joint."""
    canvas = torch.tensor([MASK, 2, MASK, MASK])
    joint = random_order_joint(model, canvas, temperature=0.7)
    config = DecodeConfig(sampler="assd", draft_size=2, order="random", temperature=0.7, use_cache=False, seed=3)
    result = decode(model, canvas.expand(N_SAMPLES, -1), config)
    assert bool((result.tokens[:, 1] == 2).all())
    assert_call_bound(result)
    assert goodness_of_fit(result.tokens, joint) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("draft_size,adaptive,order", [(2, False, "right-to-left"), (4, True, "left-to-right"),
                                                       (1, False, "left-to-right")])
def test_assd_exact_more_settings(model, draft_size, adaptive, order):
    canvas = torch.tensor([MASK, MASK, MASK, 1])
    positions = [0, 1, 2] if order == "left-to-right" else [2, 1, 0]
    joint = enumerate_joint(model, canvas, positions)
    config = DecodeConfig(sampler="assd", draft_size=draft_size, adaptive_draft=adaptive, order=order, seed=11)
    result = decode(model, canvas.expand(4 * N_SAMPLES, -1), config)
    assert_call_bound(result)
    assert goodness_of_fit(result.tokens, joint) > 1e-3


def test_residual_sampler_matches_the_enumerated_residual():
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(6, dtype=torch.float64) * 2, -1)
    q = torch.softmax(torch.randn(6, dtype=torch.float64) * 2, -1)
    residual = (p - q).clamp_min(0)
    residual /= residual.sum()
    n = 40000
    draws = sample_residual(p.expand(n, -1), q.expand(n, -1), torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=6).double()
    assert counts[residual == 0].sum() == 0  # never a token where q covers p
    support = residual > 0
    assert chisquare(counts[support].numpy(), (n * residual[support]).numpy()).pvalue > 1e-3
    # Power: drawing from p instead is detected.
    wrong = torch.bincount(sample_residual(p.expand(n, -1), torch.zeros(n, 6, dtype=torch.float64),
                                           torch.Generator().manual_seed(0)), minlength=6).double()
    assert chisquare(wrong[support].numpy(), (n * residual[support] * wrong[support].sum() / n).numpy()).pvalue < 1e-6


def test_residual_of_identical_distributions_falls_back_to_p():
    p = torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64)
    draws = sample_residual(p.expand(2000, -1), p.expand(2000, -1), torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {0, 1}


def test_acceptance_coins_follow_min_one_ratio():
    n = 20000
    p = torch.tensor([0.2, 0.6, 0.0], dtype=torch.float64).repeat(n)
    q = torch.tensor([0.5, 0.3, 0.4], dtype=torch.float64).repeat(n)
    coins = accept_coins(p, q, torch.Generator().manual_seed(0)).view(n, 3).double().mean(0)
    assert abs(coins[0] - 0.4) < 0.015 and coins[1] == 1.0 and coins[2] == 0.0


def test_verify_conditional_equals_draft_after_committing_the_earlier_drafts(model):
    torch.manual_seed(1)
    tokens = torch.tensor([[MASK, 3, MASK, MASK, MASK, 0, MASK, MASK]])
    rank = initial_rank(tokens, MASK)
    tokens[0, 4], rank[0, 4] = 2, 1  # one token generated earlier
    targets = torch.tensor([[6, 0, 3, 7]])
    drafted = torch.tensor([[1, 0, 3, 2]])
    verified = verify_logits(model, tokens, rank, targets, drafted)
    for j in range(targets.shape[1]):
        committed_tokens, committed_rank = tokens.clone(), rank.clone()
        for i in range(j):
            committed_tokens[0, targets[0, i]] = drafted[0, i]
            committed_rank[0, targets[0, i]] = 2 + i
        single = draft_logits(model, committed_tokens, committed_rank, targets[:, j:j + 1])[0, 0]
        torch.testing.assert_close(verified[0, j, :MASK], single[:MASK], atol=1e-4, rtol=1e-4)
    # The first verify conditional is the first draft conditional (q_0 = p_0), and a query never sees
    # its own drafted token.
    torch.testing.assert_close(draft_logits(model, tokens, rank, targets)[0, 0, :MASK], verified[0, 0, :MASK])
    other = verify_logits(model, tokens, rank, targets, drafted.clone().index_fill_(1, torch.tensor([2]), 0))
    torch.testing.assert_close(other[0, :3], verified[0, :3])
    assert not torch.allclose(other[0, 3], verified[0, 3])


def test_conditionals_ignore_undecided_positions_and_respect_generation_order(model):
    """A draft query sees decoded tokens only: changing an undecided position's stored token changes
    nothing; and a generated token's content never sees tokens generated after it."""
    tokens = torch.tensor([[1, MASK, MASK, MASK]])
    rank = initial_rank(tokens, MASK)
    base = draft_logits(model, tokens, rank, torch.tensor([[3]]))
    tokens_junk = tokens.clone()
    tokens_junk[0, 2] = 0  # rank still UNDECIDED: invisible
    torch.testing.assert_close(draft_logits(model, tokens_junk, rank, torch.tensor([[3]])), base)
    assert int(rank[0, 2]) == UNDECIDED
    # Two generated tokens in different orders give different contexts (order-causal content).
    t = torch.tensor([[1, 2, 0, MASK]])
    first = draft_logits(model, t, torch.tensor([[0, 1, 2, UNDECIDED]]), torch.tensor([[3]]))
    second = draft_logits(model, t, torch.tensor([[0, 2, 1, UNDECIDED]]), torch.tensor([[3]]))
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("order", ["left-to-right", "random", "confidence", "right-to-left"])
def test_cache_and_no_cache_decode_identically(model, order):
    canvas = torch.tensor([[MASK, MASK, 1, MASK, MASK, MASK, MASK, MASK]] * 6)
    results = [decode(model, canvas, DecodeConfig(sampler="assd", draft_size=3, order=order, seed=5, use_cache=c))
               for c in (True, False)]
    assert torch.equal(results[0].tokens, results[1].tokens)
    assert results[0].nfe == results[1].nfe


def test_temperature_zero_equals_greedy_sequential_decoding(model):
    canvas = torch.tensor([[MASK] * 8, [2] + [MASK] * 7])
    config = DecodeConfig(sampler="assd", draft_size=4, temperature=0.0, seed=0)
    sequential = replace(config, sampler="assd-sequential")
    assert torch.equal(decode(model, canvas, config).tokens, decode(model, canvas, sequential).tokens)


def test_network_calls_never_exceed_generated_tokens(model):
    """Every run, every setting: calls in which a row had work <= tokens generated in that row; fixed
    tokens and padding untouched; no mask left."""
    g = torch.Generator().manual_seed(0)
    for trial in range(12):
        canvas = torch.full((5, 8), MASK)
        fixed = torch.rand(5, 8, generator=g) < 0.3
        canvas[fixed] = torch.randint(0, MASK, (int(fixed.sum()),), generator=g)
        canvas[0] = 1  # a row with nothing to generate
        valid = torch.ones_like(canvas, dtype=torch.bool)
        valid[1, :3] = False  # a left-padded row
        canvas[1, :3] = 0
        config = DecodeConfig(sampler="assd", draft_size=[1, 2, 3, 5][trial % 4], adaptive_draft=trial % 3 == 0,
                              order=["left-to-right", "random", "confidence"][trial % 3],
                              use_cache=trial % 2 == 0, temperature=[1.0, 0.5, 0.0][trial % 3], seed=trial,
                              top_k=3 if trial % 5 == 0 else None)
        result = decode(model, canvas, config, valid=valid)
        assert_call_bound(result)
        assert not bool(((result.tokens == MASK) & valid).any())
        keep = (canvas != MASK) | ~valid
        assert torch.equal(result.tokens[keep], canvas[keep])
        assert result.stats["generated_per_row"][0] == 0 and result.stats["calls_per_row"][0] == 0


def test_trace_records_each_round(model):
    canvas = torch.full((2, 6), MASK)
    result = decode(model, canvas, DecodeConfig(sampler="assd", draft_size=3, trace=True, seed=0))
    assert len(result.trace) == result.stats["rounds"]
    revealed = torch.stack([s.revealed for s in result.trace]).sum(0)
    assert bool((revealed == 1).all())  # every position revealed exactly once
    assert all(bool((s.logprob[s.revealed] <= 0).all()) for s in result.trace)


def test_assd_needs_a_two_stream_model():
    causal = MDLMForMaskedLM(MDLMConfig(vocab_size=5, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=64, max_position_embeddings=8, mask_token_id=MASK,
                                        attention="causal"))
    with pytest.raises(ValueError, match="bidirectional"):
        decode(causal, torch.full((1, 4), MASK), DecodeConfig(sampler="assd"))
    with pytest.raises(ValueError, match="order"):
        assd_decode(sharp_model(), torch.full((1, 4), MASK), DecodeConfig(sampler="assd", order="sideways"))


def test_generate_cli_reaches_assd(tiny_run_dir, tmp_path, capsys):
    import json
    import shutil

    from mdlm.decode.cli import main

    run = tmp_path / "asarm"  # the CLI runs ASSD only on any-subset AR runs
    shutil.copytree(tiny_run_dir, run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "objective": "as-arm"}))
    assert main(["--model", str(run), "--prompt", "def f(", "--sampler", "assd", "--draft-size", "4",
                 "--max-new-tokens", "6", "--seed", "0"]) == 0
    assert capsys.readouterr().out.startswith("def f(")


def test_benchmark_measures_every_decoder(model):
    from types import SimpleNamespace

    from mdlm.eval.bench.speculative import markdown_table, measure

    judge = MDLMForMaskedLM(MDLMConfig(vocab_size=5, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, max_position_embeddings=8, mask_token_id=MASK,
                                       attention="causal")).eval()
    reference = torch.randint(0, MASK, (3, 8), generator=torch.Generator().manual_seed(0))
    canvas = reference.clone()
    canvas[:, 2:6] = MASK
    args = SimpleNamespace(seed=0, temperature=1.0, order="left-to-right", draft_sizes=[2, 4], batch_size=2, repeats=1)
    rows = measure(model, judge, canvas, reference, 2, args)
    assert [r["decoder"] for r in rows] == ["sequential", "assd", "parallel", "assd", "parallel", "data"]
    assert rows[0]["tokens_per_call"] == 1.0 and all(r["tokens_per_call"] >= 1 for r in rows[1:5])
    assert all(r["gen_ppl"] > 1 for r in rows)
    table = markdown_table(dict(run="r", judge="j", num_samples=3, batch_size=2, threads=1, temperature=1.0,
                                order="left-to-right", settings={"infill": rows}))
    assert table.count("\n| infill |") == 6


def test_adaptive_draft_size_follows_the_acceptance_rate(model):
    from mdlm.decode.speculative import next_draft_size

    assert next_draft_size(0, 50, 4) == 2  # nothing accepted: the smallest useful draft
    assert next_draft_size(45, 50, 4) == 16  # ~90% accepted: up to the cap of 4 x draft_size
    assert next_draft_size(25, 50, 4) == 5  # alpha = 0.5: 1 + ceil(log 0.1 / log 0.5)
    result = decode(model, torch.full((4, 8), MASK), DecodeConfig(sampler="assd", draft_size=2, adaptive_draft=True,
                                                                   seed=0))
    assert result.stats["draft_sizes"][0] == 2 and len(result.stats["draft_sizes"]) == result.stats["rounds"]


def test_categorical_probs_take_the_nucleus_after_the_temperature():
    """ASSD's target distribution follows the sampler's order (issue 13): softmax(logits / T) on the
    smallest set of its own largest probabilities reaching top_p among the top-k, renormalised."""
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0, -3.0, -4.0]])
    temperature, top_k, top_p = 1.5, 8, 0.8
    tempered = torch.softmax(logits[0].double() / temperature, -1)
    top = tempered[:top_k] / tempered[:top_k].sum()  # logits are sorted: the top-k are the first k
    n_keep = int((top.cumsum(0) - top < top_p).sum())
    expected = torch.zeros_like(tempered)
    expected[:n_keep] = tempered[:n_keep] / tempered[:n_keep].sum()
    assert n_keep == 5  # at T = 1 the 0.8 nucleus has 4 tokens: the old order gave a different support
    torch.testing.assert_close(categorical_probs(logits, temperature, top_k, top_p)[0], expected, rtol=0, atol=1e-12)
