"""The Triton kernels under the interpreter (TRITON_INTERPRET=1, on CPU) against their torch references.

TRITON_INTERPRET must be set before triton is first imported, so the checks run in a fresh subprocess
(one per kernel, importing torch is the slow part) that prints its measurements as JSON; the assertions
are made here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from mdlm.kernels import cached_attention, sample_categorical

triton = pytest.importorskip("triton")


def run_interpreted(code: str, timeout: int = 600, **env) -> dict:
    environment = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1", **env}
    environment.pop("MDLM_SAMPLER_BACKEND", None)
    environment.pop("MDLM_ATTENTION_BACKEND", None)
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=environment)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


SPY = """
    def spy(module, name, calls):
        original = getattr(module, name)
        setattr(module, name, lambda *a, **k: calls.append(name) or original(*a, **k))
"""

SAMPLING_CHECKS = SPY + """
    import json, os, torch
    from mdlm.kernels import sample_categorical
    from mdlm.kernels.sampling_reference import sample_categorical_reference
    import mdlm.kernels.sampling_triton as kernel_module

    def logits(rows, vocab, seed):
        x = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3
        if vocab > 3:
            x[:, 3] = float("-inf")  # a masked-out token, as the model's mask id
        if vocab > 40:
            x[0, [5, 37]] = 20.0  # a tie at the top: temperature 0 takes the first index
        return x

    report = {"results": []}
    for vocab, block, rows, options_list in CASES:
        x = logits(rows, vocab, vocab)
        for options in options_list:
            kernel = kernel_module.sample_categorical_triton(x, seed=vocab + 1, block=block, **options)
            reference = sample_categorical_reference(x, seed=vocab + 1, **options)
            errors = {name: float((getattr(kernel, name) - getattr(reference, name)).abs().max())
                      for name in ("logprob", "top1_logprob", "top2_logprob", "entropy")}
            report["results"].append(dict(vocab=vocab, block=block, options=options, errors=errors,
                                          same_tokens=bool(torch.equal(kernel.tokens, reference.tokens))))
    if EXTRAS:
        x = logits(3, 50, 0)
        report["bf16_same"] = bool(torch.equal(sample_categorical(x.bfloat16(), seed=4, backend="triton").tokens,
                                               sample_categorical_reference(x.bfloat16(), seed=4).tokens))
        report["shape"] = list(sample_categorical(x.view(3, 1, 50), seed=4, backend="triton").tokens.shape)
        bad = x.clone(); bad[1, 7] = float("nan")
        try:
            sample_categorical(bad, seed=0, backend="triton"); report["nan_error"] = ""
        except ValueError as error:
            report["nan_error"] = str(error)
        calls = []
        spy(kernel_module, "sample_categorical_triton", calls)
        os.environ["MDLM_SAMPLER_BACKEND"] = "triton"
        report["env_same"] = bool(torch.equal(sample_categorical(x, seed=1).tokens,
                                              sample_categorical_reference(x, seed=1).tokens))
        report["env_calls"] = len(calls)
    print(json.dumps(report))
"""


def sampling_checks(cases, extras=False) -> dict:
    return run_interpreted(f"CASES = {cases!r}\nEXTRAS = {extras}\n" + textwrap.dedent(SAMPLING_CHECKS))


def assert_kernel_matches_reference(report: dict) -> None:
    assert report["results"]
    for result in report["results"]:
        assert result["same_tokens"], result
        assert max(result["errors"].values()) < 1e-12, result


ALL_OPTIONS = [{}, {"temperature": 0.7}, {"temperature": 0}, {"top_k": 5}, {"top_p": 0.8, "temperature": 1.3},
               {"top_k": 12, "top_p": 0.7, "temperature": 1.8}]


@pytest.fixture(scope="module")
def sampling_report():
    """Vocabularies that are not multiples of the block with every option of the sampler, one vocabulary
    under three block sizes, and the dispatch checks: one interpreter process for all."""
    cases = [(300, 64, 4, ALL_OPTIONS), (37, 16, 4, ALL_OPTIONS), (1, 16, 2, ALL_OPTIONS[:3])]
    cases += [(600, block, 3, [{}]) for block in (32, 128, 1024)]
    return sampling_checks(cases, extras=True)


def test_sampling_kernel_matches_reference_token_for_token(sampling_report):
    assert_kernel_matches_reference(sampling_report)
    assert len(sampling_report["results"]) == 2 * len(ALL_OPTIONS) + 3 + 3
    assert sampling_report["bf16_same"] and sampling_report["shape"] == [3, 1]
    assert "row 1" in sampling_report["nan_error"]


def test_sampling_draw_does_not_depend_on_block_size(sampling_report):
    same_vocab = [r for r in sampling_report["results"] if r["vocab"] == 600]
    assert sorted(r["block"] for r in same_vocab) == [32, 128, 1024]
    assert all(r["same_tokens"] for r in same_vocab)


def test_environment_variable_selects_the_kernel(sampling_report):
    assert sampling_report["env_calls"] == 1 and sampling_report["env_same"]


@pytest.mark.slow
def test_sampling_kernel_matches_reference_at_larger_sizes():
    options = [{}, {"temperature": 0.5}, {"top_k": 50, "top_p": 0.9}]
    report = sampling_checks([(5003, 256, 16, options), (5003, 1024, 16, options), (20000, 2048, 8, options)])
    assert_kernel_matches_reference(report)


def test_forcing_triton_on_cpu_without_the_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        sample_categorical(torch.zeros(2, 5), seed=0, backend="triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        cached_attention(torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4),
                         backend="triton")
    with pytest.raises(ValueError, match="backend"):
        sample_categorical(torch.zeros(2, 5), backend="cuda")


ATTENTION_CHECKS = SPY + """
    import json, os, torch
    from mdlm import MDLMConfig, MDLMForMaskedLM
    from mdlm.kernels import cached_attention
    from mdlm.kernels.attention_reference import cached_attention_reference
    import mdlm.kernels.attention_triton as kernel_module

    generator = torch.Generator().manual_seed(0)
    report = {"results": []}
    for batch, heads, q_len, k_len, dim, block_q, block_k in SHAPES:
        q, k, v = (torch.randn(batch, heads, n, dim, generator=generator) for n in (q_len, k_len, k_len))
        masks = {"none": None}
        # block-causal over the cached prefix + the active block (queries are the last q_len positions)
        q_pos = torch.arange(k_len - q_len, k_len)
        masks["block-causal"] = ((q_pos[:, None] // 4) >= (torch.arange(k_len)[None] // 4))[None, None]
        # left padding: row b has 3 b padding keys, on top of the block-causal pattern
        valid = torch.arange(k_len)[None] >= 3 * torch.arange(batch)[:, None]
        masks["padded"] = masks["block-causal"] & valid[:, None, None, :]
        masks["random-per-head"] = torch.rand(batch, heads, q_len, k_len, generator=generator) > 0.5
        masks["random-per-head"][0, 0, 0] = False  # a query allowed no key: zeros, not NaN
        for name, mask in masks.items():
            kernel = kernel_module.cached_attention_triton(q, k, v, mask, block_q=block_q, block_k=block_k)
            reference = cached_attention_reference(q, k, v, mask)
            report["results"].append(dict(shape=[batch, heads, q_len, k_len, dim], mask=name,
                                          error=float((kernel - reference).abs().max()),
                                          finite=bool(torch.isfinite(kernel).all())))
    dispatched = cached_attention(q, k, v, masks["padded"], backend="triton")
    report["dispatch_error"] = float((dispatched - cached_attention_reference(q, k, v, masks["padded"])).abs().max())

    # The model's prefix pass and cached step, through the kernel (forced) and through SDPA.
    torch.manual_seed(0)
    config = MDLMConfig.from_preset("tiny", vocab_size=48, mask_token_id=47, attention="block-causal", block_size=4)
    model = MDLMForMaskedLM(config).eval()
    ids = torch.randint(0, 47, (2, 12))
    valid = torch.ones(2, 12, dtype=torch.bool); valid[1, :4] = False
    positions = (valid.cumsum(1) - 1).clamp_min(0)

    def cached_step():
        with torch.no_grad():
            prefix = model(ids[:, :8], attention_mask=valid[:, :8], position_ids=positions[:, :8], use_cache=True)
            return model(ids[:, 8:], attention_mask=valid[:, 8:], position_ids=positions[:, 8:],
                         cache=prefix.cache).logits[:, :, :47]
    calls = []
    spy(kernel_module, "cached_attention_triton", calls)
    os.environ["MDLM_ATTENTION_BACKEND"] = "triton"
    kernel = cached_step()
    report["model_kernel_calls"] = len(calls)
    os.environ["MDLM_ATTENTION_BACKEND"] = "torch"
    sdpa = cached_step()
    report["model_sdpa_kernel_calls"] = len(calls) - report["model_kernel_calls"]
    report["model_error"] = float((kernel - sdpa).abs().max())
    print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def attention_report():
    shapes = [(2, 2, 8, 40, 16, 16, 16), (3, 3, 5, 37, 24, 16, 32), (1, 2, 16, 16, 64, 32, 16)]
    return run_interpreted(f"SHAPES = {shapes!r}\n" + textwrap.dedent(ATTENTION_CHECKS))


def test_attention_kernel_matches_sdpa_with_and_without_masks(attention_report):
    """Several shapes (key lengths not multiples of the block), no mask, block-causal, a batch with left
    padding (rows of keys masked), per-head random masks with a query allowed no key at all."""
    assert len(attention_report["results"]) == 4 * 3
    for result in attention_report["results"]:
        assert result["finite"] and result["error"] < 1e-5, result
    assert attention_report["dispatch_error"] < 1e-5


def test_model_uses_the_attention_kernel_with_a_cache_and_matches_sdpa(attention_report):
    """The block-causal model's prefix pass (padding mask) and cached step (cache + mask) go through the
    kernel when it is forced, in both layers, and give SDPA's logits on a left-padded batch."""
    assert attention_report["model_kernel_calls"] == 2 * 2 and attention_report["model_sdpa_kernel_calls"] == 0
    assert attention_report["model_error"] < 1e-4


def test_kernels_compile_for_a_cuda_gpu_without_one():
    """Lower both kernels to PTX for sm_90 (no GPU needed): catches what the interpreter does not check,
    such as types the GPU compiler rejects."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from mdlm.kernels.attention_triton import _cached_attention_kernel
    from mdlm.kernels.sampling_triton import _categorical_row_kernel

    target = GPUTarget("cuda", 90, 32)
    sampling_signature = {"logits_ptr": "*bf16", "row_stride": "i64", "threshold_ptr": "*fp32", "tokens_ptr": "*i64",
                          "stats_ptr": "*fp64", "vocab": "i32", "seed": "i64", "temperature_ptr": "*fp64",
                          "HAS_THRESHOLD": "constexpr", "GREEDY": "constexpr", "BLOCK": "constexpr"}
    attention_signature = {name: "i32" for name in _cached_attention_kernel.arg_names}
    attention_signature.update({name: "*bf16" for name in ("q_ptr", "k_ptr", "v_ptr", "out_ptr")},
                               mask_ptr="*u8", scale="fp32",
                               **{name: "constexpr" for name in ("HAS_MASK", "IEEE", "BLOCK_Q", "BLOCK_K", "BLOCK_D")})
    sources = [
        ASTSource(fn=_categorical_row_kernel, signature=sampling_signature,
                  constexprs={"HAS_THRESHOLD": True, "GREEDY": False, "BLOCK": 1024}),
        ASTSource(fn=_cached_attention_kernel, signature=attention_signature,
                  constexprs={"HAS_MASK": True, "IEEE": False, "BLOCK_Q": 32, "BLOCK_K": 32, "BLOCK_D": 64}),
    ]
    for source in sources:
        try:
            compiled = triton.compile(source, target=target)
        except RuntimeError as error:  # no CUDA toolchain bundled with this triton build
            if "ptxas" in str(error).lower():
                pytest.skip(f"no ptxas: {error}")
            raise
        assert ".entry" in compiled.asm["ptx"]
