"""The public diffusion LMs as native models (`mdlm.families`), on tiny checkpoints written in the
PUBLISHED layout (`tests/family_models.py`: config.json with auto_map and the family's field names,
modeling files beside it that raise if anything runs them, safetensors under the published weight
names, a real tokenizer with the mask token at its real id).

Checked per family (LLaDA, Dream, SDAR): the logits equal a reference written from the published
architecture (float32, max abs diff <= 1e-5); loading runs no code of the folder and needs no
--trust-remote-code; a batch of 3 left-padded prompts gives each prompt's tokens alone at temperature 0
on every decoding path (plain, threshold, cached); exact caches give the uncached tokens; mdlm-generate
runs on the folder. Then the loader's one-line refusals (a run path before training, remote code left
uninitialised)."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
import torch

from mdlm.decode import DecodeConfig
from mdlm.decode.generate import build_canvas
from mdlm.decode.loading import load_denoiser
from mdlm.decode.registry import decode
from tests.family_models import (PUBLISHED, llada_like_remote_code, published_reference_logits,
                                 published_weights,
                                 remote_code_module, write_published_checkpoint)

FAMILIES = ["llada", "dream", "sdar", "mdlm-owt", "bd3lm"]
BLOCK_CAUSAL = ("sdar", "bd3lm")
PUBLISHED_CHAT = ("llada", "dream", "sdar")
MASK_IDS = {"llada": 126336, "dream": 151666, "sdar": 151669, "mdlm-owt": 50257, "bd3lm": 50257}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {family: write_published_checkpoint(tmp_path_factory.mktemp(family), family) for family in FAMILIES}


@pytest.fixture(scope="module")
def loaded(folders):
    before = set(sys.modules)
    denoisers = {family: load_denoiser(folder) for family, folder in folders.items()}
    LOADED_MODULES[:] = sorted(set(sys.modules) - before)
    return denoisers


LOADED_MODULES: list[str] = []  # the modules first imported while the folders were loaded


@pytest.mark.parametrize("family", FAMILIES)
def test_native_logits_equal_the_published_architecture(family, loaded):
    denoiser, tokenizer, profile = loaded[family]
    module = "dit" if family in ("mdlm-owt", "bd3lm") else family
    assert profile.name == family and profile.native and type(denoiser.model).__module__ == f"mdlm.families.{module}"
    fields = PUBLISHED[family][0]
    # the mask at its real id: the tokenizer's, or (MDLM-OWT / BD3-LM: GPT-2's vocabulary + 1) the family's
    assert denoiser.mask_token_id == MASK_IDS[family] == (tokenizer.mask_token_id or profile.known_mask_token_id)
    ids = torch.randint(0, 60, (2, 11), generator=torch.Generator().manual_seed(0))
    expected = published_reference_logits(family, fields, published_weights(family, fields), ids)
    with torch.no_grad():
        got = denoiser.model(ids).logits
    assert float((got - expected).abs().max()) <= 1e-5
    # the denoiser reads them as the family's generation code does: Dream's shifted right by one
    read = denoiser.logits(ids, None, None)
    if family == "dream":
        expected = torch.cat([expected[:, :1], expected[:, :-1]], 1)
    expected[..., denoiser.mask_token_id] = float("-inf")
    torch.testing.assert_close(read, expected, atol=1e-5, rtol=0)


def test_loading_runs_no_code_of_the_checkpoint_folder(loaded, folders):
    # every modeling / tokenization file beside the weights raises when imported: loading got here without,
    # and imported no module of a checkpoint folder (other tests load remote code on purpose, so only the
    # modules that these loads imported are looked at)
    assert not any("transformers_modules" in name or name.startswith(("modeling_", "tokenization_"))
                   for name in LOADED_MODULES)
    assert all((folder / "config.json").is_file() and json.loads((folder / "config.json").read_text())["auto_map"]
               for folder in folders.values())


PROMPTS = ["w1 w2 w3", "w4", "w5 w6 w7 w8 w9 w10"]


def decode_prompts(denoiser, tokenizer, prompts, config, new_tokens=8):
    canvas = build_canvas(denoiser, tokenizer, prompts, new_tokens)
    tokens = decode(denoiser, canvas, config).tokens
    return [row[generated].tolist() for row, generated in zip(tokens, canvas.generated)]


def decoding_paths(family):
    """Every path of the confidence decoder the family has, at temperature 0."""
    # a block-causal model's blocks are position ranges, so prompts of other lengths change how many blocks a
    # batch has and `steps` would be shared out differently: one token per step there
    steps = None if family in BLOCK_CAUSAL else 8
    base = DecodeConfig(sampler="confidence", temperature=0.0, steps=steps, block_length=4, use_cache=False)
    paths = {"plain": base, "threshold": dataclasses.replace(base, remasking="threshold", threshold=0.5)}
    if family in BLOCK_CAUSAL:
        paths["exact block KV"] = dataclasses.replace(base, use_cache=True)
    else:
        paths["prefix cache"] = dataclasses.replace(base, approximate_prefix_cache=True)
        paths["dual cache"] = dataclasses.replace(base, dual_cache=True)
    return paths


@pytest.mark.parametrize("family", FAMILIES)
def test_a_left_padded_batch_of_three_decodes_each_prompt_as_alone_on_every_path(family, loaded):
    denoiser, tokenizer, _ = loaded[family]
    for name, config in decoding_paths(family).items():
        batch = decode_prompts(denoiser, tokenizer, PROMPTS, config)
        alone = [decode_prompts(denoiser, tokenizer, [prompt], config)[0] for prompt in PROMPTS]
        assert batch == alone, f"{family} {name}"


@pytest.mark.parametrize("family", BLOCK_CAUSAL)
def test_the_exact_block_kv_cache_gives_the_uncached_tokens(family, loaded):
    denoiser, tokenizer, _ = loaded[family]
    config = DecodeConfig(sampler="confidence", temperature=1.0, seed=0, block_length=4)
    cached = decode_prompts(denoiser, tokenizer, PROMPTS, config, new_tokens=8)
    uncached = decode_prompts(denoiser, tokenizer, PROMPTS, dataclasses.replace(config, use_cache=False), 8)
    assert cached == uncached


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_fast_dllm_caches_are_exact_on_a_one_layer_model_and_run_only_the_block(family):
    """With one layer a key/value depends on its own token and position only, so the prefix and suffix keys
    cached at a block's first step are still right at its later steps: the prefix and dual caches must give
    the uncached tokens (for Dream, only when the block's first position is read from the fresh state
    before it: the logit shift). Later steps run the block (dual) or block + suffix (prefix) only."""
    from tests.family_models import native_family_model, record_call_widths
    from mdlm.decode.families import ProfiledDenoiser, get_family

    layers = {"n_layers": 1} if family == "llada" else {"num_hidden_layers": 1}
    model = native_family_model(family, vocab_size=40, seed=3, **layers)
    denoiser = ProfiledDenoiser(model, get_family(family), mask_token_id=39)
    widths = record_call_widths(model)
    canvas = torch.full((3, 18), 39)
    valid = torch.ones_like(canvas, dtype=torch.bool)
    canvas[:, :6] = torch.randint(0, 39, (3, 6), generator=torch.Generator().manual_seed(0))
    valid[0, :2] = valid[1, :4] = False  # left padding
    for seed in range(2):
        config = DecodeConfig(sampler="confidence", temperature=1.0, seed=seed, block_length=4, use_cache=False)
        uncached = decode(denoiser, canvas, config, valid=valid).tokens
        for cache in ("approximate_prefix_cache", "dual_cache"):
            widths.clear()
            cached = decode(denoiser, canvas, dataclasses.replace(config, **{cache: True}), valid=valid).tokens
            assert torch.equal(cached, uncached), (family, cache)
            block_width = 4 + (family == "dream")  # Dream's queries start one column before the block
            later = [w for w in widths if w != 18]
            assert set(later) == {block_width} if cache == "dual_cache" else max(later) == 12 + block_width - 4
            assert widths.count(18) == 3  # one full call per block (refreshed per block)


def test_llada_honours_the_padding_mask(loaded):
    """LLaDA's published code calls attention without a mask; the native model masks padding keys, so a
    left-padded row's logits are the row's alone (the published code's differ by up to 52 on a 8B model)."""
    denoiser, tokenizer, _ = loaded["llada"]
    canvas = build_canvas(denoiser, tokenizer, PROMPTS, 4)
    batch = denoiser.logits(canvas.tokens, canvas.valid, canvas.positions)
    for b, prompt in enumerate(PROMPTS):
        alone = build_canvas(denoiser, tokenizer, [prompt], 4)
        logits = denoiser.logits(alone.tokens, alone.valid, alone.positions)[0]
        torch.testing.assert_close(batch[b][canvas.valid[b]], logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_mdlm_generate_runs_on_the_published_folder_without_trust_remote_code(family, folders, capsys):
    from mdlm.decode.cli import main

    assert main(["--model", str(folders[family]), "--prompt", "w1 w2", "--max-new-tokens", "4", "--temperature", "0",
                 "--device", "cpu", "--no-chat-template"]) == 0
    assert capsys.readouterr().out.startswith("w1 w2")


# ----------------------------------------------------------------------------------------------------
# The loader's refusals
# ----------------------------------------------------------------------------------------------------

def test_a_run_path_that_does_not_exist_yet_fails_at_once_without_the_hub(tmp_path, monkeypatch):
    import time

    monkeypatch.chdir(tmp_path)
    for name in ("runs/mdlm-small", "./runs/mdlm-small", "checkpoints/x"):
        started = time.monotonic()
        with pytest.raises(FileNotFoundError, match="is not a folder: no such run folder"):
            load_denoiser(name)
        assert time.monotonic() - started < 2  # no hub retries
    (tmp_path / "work").mkdir()  # the first part is a folder here: a path, not owner/name
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        load_denoiser("work/model")


def test_a_checkpoint_whose_weights_are_not_the_published_layout_is_named(tmp_path):
    folder = write_published_checkpoint(tmp_path / "llada", "llada")
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    state["model.transformer.blocks.0.att_proj.weight"] = state.pop("model.transformer.blocks.0.q_proj.weight")
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match="not the published llada layout .missing model.layers.0.self_attn.q_proj"):
        load_denoiser(folder)


def test_an_unsupported_published_option_is_refused_by_name(tmp_path):
    folder = write_published_checkpoint(tmp_path / "llada", "llada", alibi=True)
    with pytest.raises(ValueError, match="uses alibi: true, which the native LLaDA implementation does not have"):
        load_denoiser(folder)


REMOTE_ROTARY = '''
import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast


class TinyLLaDA2Config(PretrainedConfig):
    model_type = "llada2_moe"


class LLaDA2MoeModelLM(PreTrainedModel):
    """Remote code in the common pre-5.x pattern: the rotary frequencies computed in __init__ into a
    non-persistent buffer (transformers 5 builds the model on the meta device and never fills it)."""
    config_class = TinyLLaDA2Config

    def __init__(self, config):
        super().__init__(config)
        self.embed = torch.nn.Embedding(config.vocab_size, 8)
        self.head = torch.nn.Linear(8, config.vocab_size)
        inv_freq = 1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                **kwargs):
        return CausalLMOutputWithPast(logits=self.head(self.embed(input_ids) * self.inv_freq.sum()))
'''


def test_remote_code_that_leaves_its_rotary_buffer_uninitialised_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "llada2"
    module = remote_code_module(folder, REMOTE_ROTARY, monkeypatch, tmp_path / "modules")
    config = module.TinyLLaDA2Config(vocab_size=70, architectures=["LLaDA2MoeModelLM"],
                                     auto_map={"AutoConfig": "modeling_tiny.TinyLLaDA2Config",
                                               "AutoModelForCausalLM": "modeling_tiny.LLaDA2MoeModelLM"})
    module.LLaDA2MoeModelLM(config).save_pretrained(folder)
    from tests.family_models import published_tokenizer

    published_tokenizer("dream").save_pretrained(folder)  # any tokenizer: the load stops before it matters
    (folder / "tokenizer_config.json").write_text(json.dumps({
        **json.loads((folder / "tokenizer_config.json").read_text()), "mask_token": "<|mask|>"}))
    from mdlm.decode.loading import check_remote_code_model

    with pytest.raises(ValueError) as refused:  # transformers 5 leaves the buffer as uninitialised memory
        load_denoiser(folder, trust_remote_code=True, mask_token_id=65)
    message = str(refused.value)
    assert "inv_freq was left uninitialised by the checkpoint's code" in message
    assert "native implementation" in message and "\n" not in message
    # the check itself, on a buffer as such a load leaves it (uninitialised memory) and as it should be
    model = module.LLaDA2MoeModelLM(config)
    check_remote_code_model(model, folder, "--model")
    model.inv_freq.copy_(torch.tensor([3.1e-12, 0.0, 7.7e30, -1.0]))
    with pytest.raises(ValueError, match="rotary buffer inv_freq was left uninitialised"):
        check_remote_code_model(model, folder, "--model")


def dream_diffusion_generate(model, prompt: torch.Tensor, new_tokens: int, steps: int, mask_id: int, eps=1e-3):
    """Dream's own `diffusion_generate` at temperature 0 with alg="maskgit_plus" (the published
    generation_utils.py `_sample`, one row): the shifted logits, the confidence of the argmax, and
    int(n (1 - s/t)) tokens revealed per step over linspace(1, eps, steps + 1)."""
    x = torch.cat([prompt, torch.full((1, new_tokens), mask_id)], 1)
    timesteps = torch.linspace(1, eps, steps + 1)
    for i in range(steps):
        mask_index = x == mask_id
        with torch.no_grad():
            logits = model(x).logits
        logits = torch.cat([logits[:, :1], logits[:, :-1]], 1)
        confidence, x0 = torch.softmax(logits[mask_index], -1).max(-1)
        t, s = timesteps[i], timesteps[i + 1]
        num_mask_token = mask_index.sum() / mask_index.shape[0]
        number_transfer_tokens = int(num_mask_token * (1 - s / t)) if i < steps - 1 else int(num_mask_token)
        full_confidence = torch.full_like(x, -torch.inf, dtype=logits.dtype)
        full_confidence[mask_index] = confidence
        if number_transfer_tokens > 0:
            _, transfer_index = torch.topk(full_confidence, number_transfer_tokens)
            x_ = torch.full_like(x, mask_id)
            x_[mask_index] = x0.clone()
            x[0, transfer_index[0]] = x_[0, transfer_index[0]]
    return x[0, prompt.shape[1]:].tolist()


def test_dream_decodes_with_its_own_schedule_by_default_and_matches_diffusion_generate(loaded):
    denoiser, tokenizer, profile = loaded["dream"]
    assert profile.schedule == "dream"
    prompt = tokenizer("w1 w2 w3", return_tensors="pt", add_special_tokens=False)["input_ids"]
    expected = dream_diffusion_generate(denoiser.model, prompt, 16, 8, denoiser.mask_token_id)
    config = DecodeConfig(sampler="confidence", temperature=0.0, steps=8, schedule="dream")
    canvas = build_canvas(denoiser, tokenizer, ["w1 w2 w3"], 16)
    ours = decode(denoiser, canvas, config).tokens[0][canvas.generated[0]].tolist()
    assert ours == expected
    uniform = decode(denoiser, canvas, DecodeConfig(sampler="confidence", temperature=0.0, steps=8)).tokens[0]
    assert uniform[canvas.generated[0]].tolist() != expected  # the schedule matters (27 of 32 differ on Dream 7B)
    # mdlm-generate picks the family's schedule unless --schedule is given
    from mdlm.decode.cli import build_parser, config_from_args

    for family, flags, schedule in [("dream", [], "dream"), ("llada", [], "uniform"), ("dream", ["--schedule", "cosine"],
                                                                                      "cosine")]:
        args = build_parser().parse_args(["--model", "m", *flags])
        args.profile_name = family
        assert config_from_args(args, tokenizer).schedule == schedule


@pytest.mark.parametrize("family", ["llada", *(pytest.param(f, marks=pytest.mark.slow) for f in FAMILIES[1:])])
def test_mdlm_eval_limit_2_runs_on_the_published_folder(family, folders):
    import lm_eval

    from mdlm.eval import MDLMEvalModel, task_manager

    lm = MDLMEvalModel(pretrained=str(folders[family]), mc_num=2, max_gen_toks=8)
    # the family's own field (LLaDA's max_sequence_length, MDLM's model_length)
    assert lm.max_length == {"llada": 4096, "dream": 131072, "sdar": 32768, "mdlm-owt": 1024, "bd3lm": 1024}[family]
    # end of text and of turn (the OpenWebText models have only end of text)
    assert lm.stop_token_ids == lm.denoiser.stop_token_ids and len(lm.stop_token_ids) == 1 + (family in PUBLISHED_CHAT)
    results = lm_eval.simple_evaluate(model=lm, tasks=["stdlib_next_line", "stdlib_infill"],
                                      task_manager=task_manager(include_defaults=False), limit=2)
    assert 0 <= results["results"]["stdlib_next_line"]["acc,none"] <= 1


def test_the_context_comes_from_the_familys_own_config_field():
    from mdlm.decode.families import context_length

    from tests.family_models import family_config

    assert context_length(family_config("LLaDAMoEModelLM", "lladamoe", 10)) == 64  # max_position_embeddings
    llada_code = family_config("LLaDAModelLM", "llada", 10, max_sequence_length=4096)
    del llada_code.max_position_embeddings  # LLaDA's published config names only max_sequence_length
    assert context_length(llada_code) == 4096
    owt = family_config("MDLM", "mdlm", 10, model_length=1024)
    del owt.max_position_embeddings
    assert context_length(owt) == 1024


def test_mdlm_eval_accepts_a_bert_folder_as_mdlm_generate_does(tmp_path):
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    from mdlm.eval import MDLMEvalModel

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.BertTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", sep_token="[SEP]",
                                               pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")
    model = transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        max_position_embeddings=32))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert tokenizer.eos_token_id is None
    lm = MDLMEvalModel(pretrained=str(tmp_path), mc_num=2)
    assert lm.eos_token_id == lm.prefix_token_id == tokenizer.sep_token_id
    from lm_eval.api.instance import Instance

    (ll, _), = lm.loglikelihood([Instance("loglikelihood", {}, ("a b", " c"), 0)], disable_tqdm=True)
    assert ll < 0
    text, = lm.generate_until([Instance("generate_until", {}, ("a b", {"until": ["\n"], "max_gen_toks": 3}), 0)],
                              disable_tqdm=True)
    assert isinstance(text, str)


REMOTE_LLADA = llada_like_remote_code("llada", "LLaDAModelLM")


def test_a_release_the_native_code_cannot_read_falls_back_to_its_own_code_only_when_trusted(tmp_path, monkeypatch):
    """A LLaDA checkpoint of another layout (here: a stand-in's weights) is refused by name; with
    --trust-remote-code its own modeling code loads it, called by the published convention."""
    folder = tmp_path / "llada-other"
    module = remote_code_module(folder, REMOTE_LLADA, monkeypatch, tmp_path / "modules")
    config = module.TinyConfig(vocab_size=70, max_sequence_length=64, architectures=["LLaDAModelLM"],
                                    auto_map={"AutoConfig": "modeling_tiny.TinyConfig",
                                              "AutoModel": "modeling_tiny.LLaDAModelLM"})
    module.LLaDAModelLM(config).save_pretrained(folder)
    from tests.family_models import published_tokenizer

    published_tokenizer("dream").save_pretrained(folder)  # a mask token (id 151666 > 70: given below instead)
    with pytest.raises(ValueError, match="not a published llada config .KeyError: 'd_model'.*--trust-remote-code"):
        load_denoiser(folder, mask_token_id=65)
    denoiser, _, profile = load_denoiser(folder, mask_token_id=65, trust_remote_code=True,
                                         tokenizer=published_tokenizer("llada"))
    assert type(denoiser.model).__name__ == "LLaDAModelLM" and not profile.native
    assert denoiser.profile.attention_mask == "2d-long" and not denoiser.supports_cache  # the published call
    logits = denoiser.logits(torch.tensor([[1, 2, 65]]), None, None)
    assert logits.shape == (1, 3, 70)
