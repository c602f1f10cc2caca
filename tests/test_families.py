"""Conformance of every model family through its profile (`mdlm.decode.families`), offline.

Each family is a tiny random model with its calling convention: the real transformers class where one
exists (BERT, RoBERTa, ModernBERT), else a stand-in of `tests/family_models.py`. Checked: the samplers
are exact through the adapter (brute-force enumeration of the distribution the family's own code
defines, as in test_decode_exactness.py), a Dream-style model decoded without its shift fails that
test (negative control), a row decodes the same alone and in a left-padded batch, block-causal families
give the same tokens with the exact block KV cache as without, several stop ids end a completion, and
the lm-eval likelihood through the adapter equals direct scoring. Then the loader's bad input."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest
import torch

from mdlm.decode import DecodeConfig, decode
from mdlm.decode.families import FAMILY_REGISTRY, ProfiledDenoiser, detect_family, get_family, resolve_mask_token_id
from tests.family_models import (BD3LMLike, BlockDiffusionLike, DreamLike, LLaDALike, MDLMOWTLike, family_config,
                                 llada_like_remote_code, native_family_model, record_call_widths,
                                 reference_logits, remote_code_module)
from tests.test_decode_exactness import chi_square_p_value, histogram, order_mixture

TOKENS, LENGTH, MASK = 3, 3, 3  # the vocabulary of test_decode_exactness: 3 tokens + the mask
SAMPLES = 3000
SHARPNESS = 20.0  # weight scale of the transformers models: conditionals far from independent (the test's power)
BLOCK = 2  # attention block of the block-causal stand-ins: blocks {0, 1} and {2}


def transformers_model(family: str, vocab_size: int, seed: int = 0):
    import transformers

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=64)
    if family == "bert":
        model = transformers.BertForMaskedLM(transformers.BertConfig(**common, pad_token_id=0))
    elif family == "roberta":
        model = transformers.RobertaForMaskedLM(transformers.RobertaConfig(**common, pad_token_id=0, bos_token_id=0,
                                                                           eos_token_id=0))
    else:
        model = transformers.ModernBertForMaskedLM(transformers.ModernBertConfig(
            **common, pad_token_id=0, bos_token_id=0, eos_token_id=0, cls_token_id=0, sep_token_id=0,
            global_attn_every_n_layers=1, local_attention=16, attn_implementation="sdpa"))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(SHARPNESS)
    return model.eval()


STAND_INS = {
    "llada": (LLaDALike, "LLaDAModelLM", "llada"),
    "llada-moe": (LLaDALike, "LLaDAMoEModelLM", "lladamoe"),
    "dream": (DreamLike, "DreamModel", "Dream"),
    "llada2": (BlockDiffusionLike, "LLaDA2MoeModelLM", "llada2_moe"),
    "sdar": (BlockDiffusionLike, "SDARForCausalLM", "sdar"),
    "mdlm-owt": (MDLMOWTLike, "MDLM", "mdlm"),
    "bd3lm": (BD3LMLike, "BD3LM", "bd3lm"),
}
FAMILIES = ["bert", "roberta", "modernbert", *STAND_INS]
BLOCK_CAUSAL = ("llada2", "sdar", "bd3lm")


# conformance on our native modules; MDLM-OWT and BD3-LM stay stand-ins of their published code here (their
# native DiT is checked in test_native_families.py), so the published-code convention keeps its tests
NATIVE_FAMILIES = ("llada", "dream", "sdar")


def family_model(family: str, vocab_size: int = TOKENS + 1, seed: int = 0):
    if family in NATIVE_FAMILIES:
        return native_family_model(family, vocab_size, seed, block_size=BLOCK)
    if family not in STAND_INS:
        return transformers_model(family, vocab_size, seed)
    cls, architecture, model_type = STAND_INS[family]
    return cls(family_config(architecture, model_type, vocab_size, block_size=BLOCK), seed).eval()


def adapter(model, family: str | None = None, **options) -> ProfiledDenoiser:
    """The family's denoiser; the stand-ins' vocabulary is tiny, so the mask id is given (the family's
    known id is out of range) and LLaDA2's fixed 32-token block is shrunk to the test's."""
    profile = get_family(family) if family else detect_family(model.config)
    block = BLOCK if profile.attention == "block-causal" else None
    return ProfiledDenoiser(model, profile, mask_token_id=MASK, block_size=block, **options)


def enumerated_distribution(family: str, model) -> torch.Tensor:
    """(TOKENS^LENGTH,) float64: E over the decoding orders of prod_k p(x_sigma(k) | x_sigma(<k)), with
    the conditionals read by the family's own convention (`reference_logits`). A block-causal model is
    decoded block after block, so only orders that finish block 0 before block 1 count."""
    states = list(itertools.product(range(TOKENS + 1), repeat=LENGTH))
    logp = torch.log_softmax(reference_logits(family, model, torch.tensor(states), MASK, BLOCK).double(), -1)
    orders = list(itertools.permutations(range(LENGTH)))
    if family in BLOCK_CAUSAL:
        orders = [o for o in orders if [p // BLOCK for p in o] == sorted(p // BLOCK for p in o)]
    return order_mixture(logp, states, orders, TOKENS, LENGTH, MASK)


def pooled_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Chi-square goodness of fit with the outcomes expected fewer than 5 times pooled into one cell
    (the chi-square approximation needs it; a sharp model has many rare outcomes)."""
    expected = probs * counts.sum()
    rare = expected < 5
    if rare.any():
        counts = torch.cat([counts[~rare], counts[rare].sum()[None]])
        probs = torch.cat([probs[~rare], probs[rare].sum()[None]])
    return chi_square_p_value(counts, probs)


def samples(denoiser, config: DecodeConfig) -> torch.Tensor:
    return decode(denoiser, torch.full((SAMPLES, LENGTH), MASK), config).tokens


# one token per step in a random order (exact), and first-hitting where the model has no blocks
RANDOM_ORDER = DecodeConfig(sampler="confidence", remasking="random", temperature=1.0, seed=1)
FIRST_HITTING = DecodeConfig(sampler="first-hitting", temperature=1.0, seed=2)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_samplers_are_exact_through_each_family_profile(family):
    model = family_model(family)
    denoiser = adapter(model)
    assert denoiser.profile.name == family  # detected from the config's architectures / model_type
    exact = enumerated_distribution(family, model)
    assert abs(float(exact.sum()) - 1) < 1e-9
    configs = [RANDOM_ORDER] if family in BLOCK_CAUSAL else [RANDOM_ORDER, FIRST_HITTING]
    for config in configs:
        assert pooled_p_value(histogram(samples(denoiser, config)), exact) > 1e-3, config.sampler
    # the test has power: revealing a block's tokens together samples the product of their marginals
    together = dataclasses.replace(RANDOM_ORDER, steps=2 if family in BLOCK_CAUSAL else 1)
    assert pooled_p_value(histogram(samples(denoiser, together)), exact) < 1e-6


def test_a_dream_model_decoded_without_its_shift_fails_the_exactness_test():
    model = family_model("dream")
    exact = enumerated_distribution("dream", model)
    unshifted = dataclasses.replace(get_family("dream"), name="dream-without-shift", shifted_logits=False)
    wrong = ProfiledDenoiser(model, unshifted, mask_token_id=MASK)
    assert pooled_p_value(histogram(samples(wrong, RANDOM_ORDER)), exact) < 1e-6
    right = adapter(model)
    assert pooled_p_value(histogram(samples(right, RANDOM_ORDER)), exact) > 1e-3


def test_the_adapter_logits_equal_the_familys_own_reading_and_at_gathers_them():
    states = torch.tensor(list(itertools.product(range(TOKENS + 1), repeat=LENGTH)))
    at = torch.tensor([[2, 0]]).expand(len(states), -1)
    for family in FAMILIES:
        model = family_model(family)
        denoiser = adapter(model)
        ones = torch.ones_like(states, dtype=torch.bool)
        expected = reference_logits(family, model, states, MASK, BLOCK)
        full = denoiser.logits(states, ones, None)
        torch.testing.assert_close(full, expected, msg=family)
        torch.testing.assert_close(denoiser.logits(states, ones, None, at=at), expected[:, [2, 0]], msg=family)


def left_padded(prompts, new_tokens, pad=0):
    width = max(map(len, prompts)) + new_tokens
    canvas = torch.full((len(prompts), width), pad)
    valid = torch.zeros_like(canvas, dtype=torch.bool)
    for b, prompt in enumerate(prompts):
        row = torch.tensor(prompt + [MASK] * new_tokens)
        canvas[b, width - len(row):], valid[b, width - len(row):] = row, True
    return canvas, valid


@pytest.mark.parametrize("family", FAMILIES)
def test_a_row_decodes_the_same_alone_and_in_a_left_padded_batch(family):
    denoiser = adapter(family_model(family, seed=1))
    prompts = [[0, 1, 2, 0, 1], [2], [1, 0, 0]]
    config = DecodeConfig(temperature=0.0)
    canvas, valid = left_padded(prompts, 6)
    batch = decode(denoiser, canvas, config, valid=valid).tokens
    for b, prompt in enumerate(prompts):
        alone_canvas, alone_valid = left_padded([prompt], 6)
        alone = decode(denoiser, alone_canvas, config, valid=alone_valid).tokens[0]
        assert batch[b][valid[b]].tolist() == alone.tolist(), family


@pytest.mark.parametrize("family", ["llada2", "sdar"])
def test_block_causal_families_give_the_same_tokens_with_the_block_kv_cache(family):
    model = family_model(family, seed=2)
    widths = record_call_widths(model)
    denoiser = adapter(model)
    assert denoiser.supports_cache
    canvas, valid = left_padded([[0, 1, 2], [2, 1]], 8)
    for seed in range(2):
        config = DecodeConfig(temperature=1.0, seed=seed)
        widths.clear()
        cached = decode(denoiser, canvas, config, valid=valid).tokens
        assert max(widths) < canvas.shape[1] + 1  # calls after the first run a block, not the canvas
        assert sum(widths) < len(widths) * canvas.shape[1]
        uncached = decode(denoiser, canvas, dataclasses.replace(config, use_cache=False), valid=valid).tokens
        assert torch.equal(cached, uncached)


def test_families_without_a_cache_convention_refuse_one():
    denoiser = adapter(family_model("bd3lm"))
    assert not denoiser.supports_cache
    ids = torch.full((1, 4), MASK)
    with pytest.raises(ValueError, match="no KV cache"):
        denoiser.logits(ids, None, None, use_cache=True)


# ----------------------------------------------------------------------------------------------------
# Tokenizers: stop ids, the lm-eval likelihood
# ----------------------------------------------------------------------------------------------------

WORDS = ["a", "b", "c", "[MASK]", "<|endoftext|>", "<|im_end|>"]


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[MASK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, mask_token="[MASK]", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")


def test_several_stop_ids_end_a_completion():
    from mdlm.decode.generate import completion_ids

    tokenizer = word_tokenizer()
    denoiser = ProfiledDenoiser(family_model("dream", vocab_size=len(WORDS)), get_family("dream"), tokenizer=tokenizer)
    assert denoiser.stop_token_ids == [4, 5] and denoiser.eos_token_id == 4  # end of text, then end of turn
    tokens = torch.tensor([[0, 1, 5, 2, 4], [2, 4, 1, 5, 0], [0, 1, 2, 0, 1]])
    generated = torch.ones_like(tokens, dtype=torch.bool)
    assert completion_ids(tokens, generated, denoiser.stop_token_ids) == [[0, 1], [2], [0, 1, 2, 0, 1]]


@pytest.mark.parametrize("family", ["dream", "llada", "mdlm-owt", "bert"])
def test_the_lm_eval_likelihood_through_the_adapter_equals_direct_scoring(family):
    from lm_eval.api.instance import Instance

    from mdlm.eval import MDLMEvalModel

    tokenizer = word_tokenizer()
    model = family_model(family, vocab_size=len(WORDS), seed=4)
    denoiser = ProfiledDenoiser(model, get_family(family), tokenizer=tokenizer)
    lm = MDLMEvalModel(pretrained=denoiser, tokenizer=tokenizer, device="cpu", mc_num=4)
    requests = [Instance("loglikelihood", {}, ("a b", " c"), 0), Instance("loglikelihood", {}, ("c", " a"), 1)]
    scored = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    # one continuation token: its only mask is the whole continuation, scored exactly
    for (context, target), ll in zip([([0, 1], 2), ([2], 0)], scored):
        ids = torch.tensor([context + [MASK]])
        logits = reference_logits(family, model, ids, MASK, BLOCK)  # EOS (the pad too) is not banned: it ends text
        direct = float(torch.log_softmax(logits[0, -1].double(), -1)[target])
        assert ll == pytest.approx(direct, abs=1e-5), family


# ----------------------------------------------------------------------------------------------------
# Profiles and the loader: detection, mask ids, bad input
# ----------------------------------------------------------------------------------------------------

def test_every_family_is_registered_and_known_mask_ids_are_the_published_ones():
    assert set(FAMILIES) | {"ours", "masked-lm", "diffusion-gemma"} == set(FAMILY_REGISTRY)
    known = {"llada": 126336, "llada-moe": 156895, "llada2": 156895, "dream": 151666, "sdar": 151669,
             "mdlm-owt": 50257, "bd3lm": 50257}
    for family, mask_id in known.items():
        profile = get_family(family)
        assert resolve_mask_token_id(profile, family_config("X", "x", 10)) == mask_id
        assert profile.native != profile.trust_remote_code  # ours, or the checkpoint's code as the fallback
    from mdlm.families import NATIVE

    assert {p.name for p in FAMILY_REGISTRY.values() if p.native} == set(NATIVE)
    assert get_family("llada2").block_size == 32 and get_family("sdar").block_size == 4
    assert get_family("dream").shifted_logits and not get_family("llada").shifted_logits
    # MDLM-OWT shares model_type "mdlm" with this stack: the architectures tell them apart
    assert detect_family(family_config("MDLM", "mdlm", 10)).name == "mdlm-owt"
    assert detect_family(family_config("MDLMForMaskedLM", "mdlm", 10)).name == "ours"
    with pytest.raises(ValueError, match="unknown --family 'llama'; choose one of ours"):
        get_family("llama")


def test_the_docs_family_table_is_the_registrys():
    from pathlib import Path

    from mdlm.decode.families import families_table

    docs = Path(__file__).resolve().parents[1] / "docs"
    assert any(families_table() in page.read_text(encoding="utf-8") for page in docs.glob("*.md")), \
        "no page of docs/ holds families_table() between <!-- families --> markers"


def save_folder(tmp_path, name, model=None, tokenizer=None, config: dict | None = None):
    folder = tmp_path / name
    folder.mkdir()
    if model is not None:
        model.save_pretrained(folder)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
        (folder / "model.safetensors").write_bytes(b"")
    (tokenizer or word_tokenizer()).save_pretrained(folder)
    return folder


def test_a_model_with_no_mask_token_and_no_known_family_names_family_and_mask_token_id(tmp_path):
    from transformers import ElectraConfig, ElectraForMaskedLM, PreTrainedTokenizerFast

    from mdlm.decode.loading import load_denoiser

    tokenizer = word_tokenizer()
    bare = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, eos_token="<|endoftext|>")
    model = ElectraForMaskedLM(ElectraConfig(vocab_size=len(WORDS), embedding_size=16, hidden_size=32,
                                             num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    folder = save_folder(tmp_path, "electra", model, bare)
    with pytest.raises(ValueError, match="--family.*mask_token_id="):
        load_denoiser(folder)
    denoiser, _, profile = load_denoiser(folder, mask_token_id=3)  # the fix the error names works
    assert profile.name == "masked-lm" and denoiser.mask_token_id == 3


def test_a_family_that_ships_its_code_needs_trust_remote_code(tmp_path):
    from mdlm.decode.loading import load_denoiser

    folder = save_folder(tmp_path, "llada-moe", config={
        "architectures": ["LLaDAMoEModelLM"], "model_type": "lladamoe",
        "auto_map": {"AutoModel": "modeling_lladamoe.LLaDAMoEModelLM"}})
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        load_denoiser(folder)
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        load_denoiser(folder, family="llada2")


def test_a_causal_lm_is_refused_as_a_denoiser(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from mdlm.decode.denoiser import as_denoiser
    from mdlm.decode.loading import load_denoiser

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(WORDS), n_embd=16, n_layer=1, n_head=2, n_positions=16))
    with pytest.raises(ValueError, match="causal .*LM.*cannot fill masks"):
        load_denoiser(save_folder(tmp_path, "gpt2", gpt2))
    with pytest.raises(TypeError, match="causal .*LM.*cannot fill masks"):
        as_denoiser(gpt2, mask_token_id=3)


def test_a_checkpoint_whose_vocabulary_is_smaller_than_its_tokenizer_is_refused(tmp_path):
    from mdlm.decode.loading import load_denoiser

    small = transformers_model("bert", vocab_size=4)  # the tokenizer has 6 tokens
    with pytest.raises(ValueError, match="vocabulary has 4 tokens but its tokenizer 6"):
        load_denoiser(save_folder(tmp_path, "bert", small))
    denoiser, tokenizer, profile = load_denoiser(save_folder(tmp_path, "bert6", transformers_model("bert", 6)))
    assert profile.name == "bert" and denoiser.mask_token_id == tokenizer.mask_token_id == 3
    assert denoiser.banned_token_ids == [3]  # the mask; EOS (= pad here) ends completions and is kept


# ----------------------------------------------------------------------------------------------------
# A family whose code ships with the checkpoint, loaded end to end (trust_remote_code, offline)
# ----------------------------------------------------------------------------------------------------

REMOTE_MODELING = llada_like_remote_code("lladamoe", "LLaDAMoEModelLM")


@pytest.fixture
def remote_code_folder(tmp_path, monkeypatch):
    """A LLaDA-MoE-style checkpoint folder (a family with no native implementation) with its modeling
    file, as the hub serves one (no mask id in the
    config: the tokenizer's is used); transformers copies remote code into a module cache, here a
    temporary one."""
    folder = tmp_path / "tiny-llada-moe"
    module = remote_code_module(folder, REMOTE_MODELING, monkeypatch, tmp_path / "modules")
    config = module.TinyConfig(vocab_size=len(WORDS), max_position_embeddings=64,
                                       architectures=["LLaDAMoEModelLM"],
                                       auto_map={"AutoConfig": "modeling_tiny.TinyConfig",
                                                 "AutoModel": "modeling_tiny.LLaDAMoEModelLM"})
    torch.manual_seed(0)
    module.LLaDAMoEModelLM(config).save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


def test_a_remote_code_family_loads_through_the_one_loader_and_generates(remote_code_folder, capsys):
    from mdlm.decode.cli import main
    from mdlm.decode.loading import load_denoiser

    with pytest.raises(ValueError, match="trust_remote_code=True"):
        load_denoiser(remote_code_folder)
    denoiser, tokenizer, profile = load_denoiser(remote_code_folder, trust_remote_code=True)
    assert profile.name == "llada-moe" and denoiser.mask_token_id == 3 and denoiser.stop_token_ids == [4]
    ids = torch.tensor([[0, 1, MASK, MASK]])
    expected = reference_logits("llada-moe", denoiser.model, ids, MASK)
    torch.testing.assert_close(denoiser.logits(ids, None, None), expected)
    assert main(["--model", str(remote_code_folder), "--trust-remote-code", "--prompt", "a b", "--max-new-tokens",
                 "3", "--temperature", "0", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("a b")


def test_the_lm_eval_model_loads_a_remote_code_family_from_its_model_args(remote_code_folder):
    from lm_eval.api.instance import Instance

    from mdlm.eval import MDLMEvalModel

    with pytest.raises(ValueError, match="trust_remote_code=True"):
        MDLMEvalModel(pretrained=str(remote_code_folder), device="cpu")
    lm = MDLMEvalModel(pretrained=str(remote_code_folder), trust_remote_code="True", family="llada-moe", device="cpu")
    assert lm.get_model_info()["family"] == "llada-moe"
    (ll, _), = lm.loglikelihood([Instance("loglikelihood", {}, ("a b", " c"), 0)], disable_tqdm=True)
    logits = reference_logits("llada-moe", lm.model, torch.tensor([[0, 1, MASK]]), MASK)
    assert ll == pytest.approx(float(torch.log_softmax(logits[0, -1].double(), -1)[2]), abs=1e-5)


def test_instruct_prompts_go_through_the_chat_template_unless_turned_off():
    from mdlm.decode.cli import build_parser, chat_prompts

    tokenizer = word_tokenizer()
    tokenizer.chat_template = ("{% for m in messages %}<|im_end|> {{ m['content'] }}{% endfor %}"
                               "{% if add_generation_prompt %} c{% endif %}")
    prompts = [("a b", None), ("a", "b")]  # an infill prompt keeps its raw text
    assert chat_prompts(tokenizer, prompts, get_family("dream"), True) == [("<|im_end|> a b c", None), ("a", "b")]
    assert chat_prompts(tokenizer, prompts, get_family("dream"), False) == prompts
    assert chat_prompts(tokenizer, prompts, get_family("bert"), True) == prompts  # not a chat family
    args = build_parser().parse_args(["--model", "m", "--family", "dream", "--no-chat-template"])
    assert args.family == "dream" and args.no_chat_template


def test_generate_cuts_a_completion_at_any_of_the_familys_stop_tokens():
    from mdlm.decode import generate

    tokenizer = word_tokenizer()
    model = DreamLike(family_config("DreamModel", "Dream", len(WORDS)), seed=5).eval()  # the published code's call
    with torch.no_grad():  # end of turn (5) is the most likely token everywhere; end of text (4) never
        model.core.lm_head.bias[5] += 100.0
        model.core.lm_head.bias[4] -= 100.0
    denoiser = ProfiledDenoiser(model, get_family("dream"), tokenizer=tokenizer)  # stops: <|endoftext|>, <|im_end|>
    text, = generate(denoiser, tokenizer, ["a b"], 4, DecodeConfig(temperature=0.0))
    assert text == ""


def test_loading_a_run_prints_no_progress_bar(tmp_path, capfd):
    """Console output is quiet: transformers' "Loading weights" bar is not shown when a run is loaded (the
    SFT, RL and benchmark logs had one per load)."""
    from mdlm.decode.loading import load_denoiser
    from tests.conftest import save_untrained_sudoku_run

    run = save_untrained_sudoku_run(tmp_path / "run")
    capfd.readouterr()
    load_denoiser(str(run))
    assert "Loading weights" not in capfd.readouterr().err
    from mdlm import MDLMForMaskedLM

    MDLMForMaskedLM.from_pretrained(run)  # the class's own loader too (RFT, the benchmarks, user code)
    assert "Loading weights" not in capfd.readouterr().err
