"""The lm-eval-harness model `mdlm`: masked diffusion runs and their autoregressive baseline.

    mdlm-eval --model mdlm --model_args pretrained=runs/mdlm-small,mc_num=128 --tasks stdlib_next_line
    lm_eval.simple_evaluate(model=MDLMEvalModel(pretrained="runs/mdlm-small"), tasks=[...])

One adapter evaluates both kinds of run saved by `mdlm-pretrain`; the run's config decides:
- masked diffusion (bidirectional / block-causal attention): `loglikelihood` is the negative ELBO by
  Monte Carlo over masks of the continuation only (`mdlm.eval.likelihood`), an upper bound on -log p;
  `generate_until` fills a canvas of masks with any sampler of `mdlm.decode`.
- autoregressive baseline (`attention="causal"`): exact log-likelihood; generation by its own
  left-to-right next-token loop with a KV cache.
`loglikelihood_rolling` scores long text in windows of the model's context with disjoint prediction
spans and `rolling_context` tokens of left context (lm-eval's `get_rolling_token_windows`), the same
windows for both kinds of model, so their perplexities are comparable.

Infilling: a generation context that contains `INFILL_HOLE` once is read as prefix + hole + suffix. The
diffusion model decodes the canvas prefix + masks + suffix (it sees both sides); the autoregressive
model, which cannot condition on a suffix, continues the prefix.

Multi-process (`accelerate launch --multi_gpu --num_processes N -m mdlm.eval ...`, gloo processes on a
CPU-only machine, or torchrun): lm-eval shards the requests by rank; this class provides rank /
world_size and the collectives (`all_gather`, `gather_object`, `barrier`) through accelerate, and results
are gathered on rank 0. Monte Carlo masks are seeded per request (from `seed` and the request's tokens),
so a likelihood does not depend on batching or on the number of processes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm

from mdlm.decode.canvas import default_position_ids, pad_rows
from mdlm.decode.denoiser import CountedDenoiser, as_denoiser
from mdlm.decode.draw import draw
from mdlm.eval.likelihood import autoregressive_nll, diffusion_nll
from mdlm.eval.tasks.utils import INFILL_HOLE

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# lm-eval's batch_size="auto" probes GPU memory; here it is this fixed size (the default batch size).
AUTO_BATCH_SIZE = 32
# DecodeConfig fields that are not user choices here: the adapter sets them.
_DECODE_FIELDS_SET_HERE = {"trace", "step_callback", "seed", "eos_token_id"}


def decode_arg_names() -> list[str]:
    from mdlm.decode import DecodeConfig

    return [f.name for f in dataclasses.fields(DecodeConfig) if f.name not in _DECODE_FIELDS_SET_HERE]


def _request_seed(seed: int, *parts) -> int:
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _flag(value) -> bool:
    """A boolean model arg: lm-eval passes `trust_remote_code=True` from the command line as a string."""
    if isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"trust_remote_code={value!r}: use True or False")
        return value.lower() in ("true", "1")
    return bool(value)


def load_local_tokenizer(name: str | Path):
    """A tokenizer from a local folder or the Hugging Face cache, never a download: a tokenizer for a run must
    be the run's own (or one already at hand), and an offline hub lookup only fails after a minute."""
    from transformers import AutoTokenizer

    path = Path(name).expanduser()
    try:
        return AutoTokenizer.from_pretrained(str(path) if path.is_dir() else str(name), local_files_only=True)
    except Exception as error:  # transformers raises OSError / ValueError / others for a missing tokenizer
        raise ValueError(f"tokenizer={name}: not a local tokenizer folder and not in the Hugging Face cache "
                         f"({type(error).__name__}); leave tokenizer= out to use the run's own, or pass a folder "
                         "holding tokenizer.json") from None


@register_model("mdlm")
class MDLMEvalModel(LM):
    """lm-eval model for mdlm runs. Model args (`--model_args k=v,...`):

    pretrained      run folder, a public model's folder or hub name (`mdlm.decode.loading.load_denoiser`),
                    or, from Python, a model or denoiser object with `tokenizer=`
    family          model family (default: detected from the config; see `mdlm.decode.families`)
    trust_remote_code  run the modeling code a checkpoint ships with (LLaDA, Dream, SDAR, ...; default False)
    tokenizer       tokenizer folder or object (default: the run's)
    mc_num          Monte Carlo samples per loglikelihood request (default 128); a continuation whose
                    2^L - 1 masks number at most mc_num (L = 1 always) is scored exactly instead
    rolling_mc_num  samples per window of loglikelihood_rolling (default: mc_num)
    mc_batch_size   Monte Carlo rows per forward pass, and the group over which the mask counts are
                    stratified (default 32, LLaDA's "128 samples in batches of 32")
    batch_size      requests per forward pass of the AR likelihood, of generation and of the greedy check
                    (lm-eval's --batch_size; default 32; "auto" means 32)
    is_greedy       also report whether greedy decoding reproduces the continuation (default False). For
                    diffusion runs this costs a decode per request (LLaDA-style: one token per step, the
                    most confident first, temperature 0); for AR runs it is free and always computed.
    device, dtype   "cuda"/"cpu"/... (default: cuda if available) and float32/bfloat16/float16
    max_length      context in tokens (default and maximum: the model's max_position_embeddings)
    rolling_context left-context tokens of each rolling window after the first (default max_length // 4)
    max_gen_toks    generation length when a task does not set one (default 128); capped at
                    max_length // 2 so that the prompt keeps room
    seed            of the Monte Carlo masks and of sampling (default 1234)
    infill_suffix   diffusion runs condition infill prompts on the suffix (default True); False makes them
                    continue the prefix only, like the AR baseline (an ablation)
    sampler, steps, block_length, temperature, remasking, schedule, threshold, top_k, top_p, eoser, ...
                    any `mdlm.decode.DecodeConfig` field, for `generate_until` of diffusion runs
                    (temperature/top_k/top_p also drive the AR loop). temperature defaults to 0 (greedy),
                    as lm-eval expects; a task's gen_kwargs (temperature, do_sample, top_k, top_p) win.
    """

    def __init__(self, pretrained=None, tokenizer=None, mc_num: int = 128, rolling_mc_num: int | None = None,
                 mc_batch_size: int = 32, batch_size: int | str = AUTO_BATCH_SIZE, max_batch_size: int | None = None,
                 is_greedy: bool = False, device: str | None = None, dtype: str = "float32",
                 max_length: int | None = None, rolling_context: int | None = None, max_gen_toks: int = 128,
                 seed: int = 1234, infill_suffix: bool = True, family: str | None = None,
                 trust_remote_code: bool = False, **decode_args):
        super().__init__()
        self._check_args(pretrained, decode_args, dtype, seed, mc_num=mc_num, rolling_mc_num=rolling_mc_num,
                         mc_batch_size=mc_batch_size)
        if device is not None:
            from mdlm.decode.cli import check_device

            check_device(device)
        self.accelerator = self._setup_distributed(device)
        self._device = self.accelerator.device if self.accelerator else torch.device(
            device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if isinstance(tokenizer, (str, Path)):
            tokenizer = load_local_tokenizer(tokenizer)
        if isinstance(pretrained, (str, Path)):
            from mdlm.decode.loading import load_denoiser

            self.run_path = str(pretrained)
            self.denoiser, run_tokenizer, self.profile = load_denoiser(
                pretrained, family=family, dtype=dtype, device=self._device, trust_remote_code=_flag(trust_remote_code),
                tokenizer=tokenizer, flag="pretrained=")
        else:
            from mdlm.decode.families import FAMILY_REGISTRY

            self.run_path, run_tokenizer = None, None
            module = pretrained.model if isinstance(pretrained, CountedDenoiser) else pretrained
            module.to(self._device, DTYPES[dtype]).eval()
            self.denoiser = as_denoiser(pretrained)
            self.profile = getattr(self.denoiser, "profile", FAMILY_REGISTRY["ours"])
        self.tokenizer = tokenizer or run_tokenizer
        if self.tokenizer is None:
            raise ValueError("a model object needs its tokenizer: MDLMEvalModel(pretrained=model, tokenizer=tok)")
        self.model = self.denoiser.model  # every network call goes through self.denoiser
        self.config = self.model.config
        if self.denoiser.mask_token_id is None and not self.is_autoregressive:
            raise ValueError("the model config has no mask_token_id; a masked diffusion model needs one")
        # what separates documents and ends generations: the EOS, else the model's own end of text, else a BERT
        # tokenizer's [SEP] (its segment end), as mdlm-generate reads such a folder
        self.eos_token_id = next((i for i in (self.tokenizer.eos_token_id, self.denoiser.eos_token_id,
                                              getattr(self.tokenizer, "sep_token_id", None)) if i is not None), None)
        self.stop_token_ids = list(getattr(self.denoiser, "stop_token_ids", None) or [self.eos_token_id])
        if self.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS (nor [SEP]) token, which starts documents and ends generations; "
                             "load it with mdlm.tokenizer.load_tokenizer")

        context = self.denoiser.context or max_length
        if context is None:
            raise ValueError("the model states no context length (max_position_embeddings, max_sequence_length or "
                             "model_length in its config); pass max_length=")
        self.max_length = int(max_length or context)
        if not 2 <= self.max_length <= context:
            raise ValueError(f"max_length={max_length} must be in [2, {context}] (the model's context)")
        self.rolling_context = int(rolling_context if rolling_context is not None else max(1, self.max_length // 4))
        if not 1 <= self.rolling_context < self.max_length - 1:
            raise ValueError(f"rolling_context={rolling_context} must be in [1, {self.max_length - 2}]")
        self.mc_num, self.rolling_mc_num = int(mc_num), int(rolling_mc_num or mc_num)
        self.mc_batch_size = int(mc_batch_size)
        self.batch_size = self._parse_batch_size(batch_size)
        self.is_greedy, self.seed, self.default_max_gen_toks = bool(is_greedy), int(seed), int(max_gen_toks)
        self.infill_suffix = bool(infill_suffix)
        if self.default_max_gen_toks < 1:
            raise ValueError(f"max_gen_toks must be >= 1, got {max_gen_toks}")
        from mdlm.decode import DecodeConfig

        if self.uniform_noise:  # DiffusionGemma: its one decoder, whatever the masked default is
            decode_args.setdefault("sampler", "uniform-noise")
        self.decode_config = DecodeConfig(**{"temperature": 0.0, **decode_args}, eos_token_id=self.eos_token_id)
        if self.decode_config.sampler == "assd" and (self.profile.name != "ours"
                                                     or getattr(self.config, "objective", None) != "as-arm"):
            raise ValueError(f"sampler=assd needs an any-subset AR run (trained with --objective as-arm); this is a "
                             f"{getattr(self.config, 'objective', None)} run: use sampler=confidence or first-hitting")

    # ------------------------------------------------------------------------------------------ setup
    @staticmethod
    def _check_args(pretrained, decode_args, dtype, seed, **counts) -> None:
        if pretrained is None:
            raise ValueError("pretrained= is required: the run folder written by mdlm-pretrain "
                             "(e.g. --model_args pretrained=runs/mdlm-small)")
        unknown = sorted(set(decode_args) - set(decode_arg_names()))
        if unknown:
            known = ["pretrained", "family", "trust_remote_code", "tokenizer", "mc_num", "rolling_mc_num", "mc_batch_size", "batch_size",
                     "is_greedy", "device", "dtype", "max_length", "rolling_context", "max_gen_toks", "seed",
                     "infill_suffix",
                     *decode_arg_names()]
            raise ValueError(f"unknown model arg(s) {', '.join(unknown)} for --model mdlm; known: {', '.join(known)}")
        for name, value in counts.items():
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not supported; choose one of {', '.join(DTYPES)}")
        if not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")

    @staticmethod
    def _parse_batch_size(batch_size) -> int:
        if isinstance(batch_size, str):
            if batch_size.startswith("auto"):
                logger.warning("batch_size=%s: automatic batch sizes are not supported; using %d", batch_size,
                               AUTO_BATCH_SIZE)
                return AUTO_BATCH_SIZE
            batch_size = int(batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return int(batch_size)

    def _setup_distributed(self, device):
        """An Accelerator when launched with several processes (accelerate launch / torchrun), else None."""
        import os

        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return None
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=device == "cpu")
        if accelerator.num_processes <= 1:
            return None
        self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
        return accelerator

    @property
    def is_autoregressive(self) -> bool:
        return self.denoiser.attention == "causal"

    @property
    def uniform_noise(self) -> bool:
        return getattr(self.denoiser, "corruption", "absorbing") == "uniform"

    def _refuse_likelihood(self) -> None:
        if self.uniform_noise:
            raise ValueError(f"{self.profile.name} is a uniform-noise diffusion model: mdlm has no likelihood bound for "
                             "uniform noise (the masked ELBO does not apply), so loglikelihood tasks cannot be scored; "
                             "evaluate it on generate_until tasks")

    @property
    def prefix_token_id(self) -> int:
        """What precedes a document: training packs documents as doc EOS doc EOS ..."""
        return self.eos_token_id

    def get_model_info(self) -> dict:
        return {"run": self.run_path, "family": self.profile.name, "attention": self.denoiser.attention, "world_size": self.world_size,
                "num_parameters": sum(p.numel() for p in self.model.parameters()),
                "mc_num": self.mc_num, "decode": {k: v for k, v in dataclasses.asdict(self.decode_config).items()
                                                  if k != "step_callback"}}

    # ------------------------------------------------------------------------------------------ collectives
    def all_gather(self, tensor):
        return tensor if self.accelerator is None else self.accelerator.gather(tensor)

    def gather_object(self, obj, dst=0):
        if self.accelerator is None:
            return [obj]
        gathered = [None] * self.world_size if self.rank == dst else None
        torch.distributed.gather_object(obj, gathered, dst=dst)
        return gathered

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------------------------------ tokens
    def tok_encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's convention: trailing spaces of the context belong to the continuation; the
        continuation's tokens are those of the whole text after the context's."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.tok_encode(context + continuation)
        context_ids = self.tok_encode(context)
        continuation_ids = whole[len(context_ids):]
        return self._fit(context_ids or [self.prefix_token_id], continuation_ids)

    def _fit(self, context: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
        """Truncate from the left to the context length: the context first, then (with a warning) the
        continuation, keeping at least one context token."""
        if len(continuation) > self.max_length - 1:
            logger.warning("a %d-token continuation is longer than the context of %d; only its last %d tokens "
                           "are scored", len(continuation), self.max_length, self.max_length - 1)
            context, continuation = continuation[-self.max_length:-(self.max_length - 1)], \
                continuation[-(self.max_length - 1):]
        return context[-(self.max_length - len(continuation)):], continuation

    def _generators(self, pairs):
        return [torch.Generator().manual_seed(_request_seed(self.seed, c, x)) for c, x in pairs]

    # ------------------------------------------------------------------------------------------ likelihood
    def _nll(self, pairs, mc_num: int, progress: bool) -> list[float]:
        if self.is_autoregressive:
            return [nll for nll, _ in autoregressive_nll(self.model, pairs, self.batch_size, progress)]
        return diffusion_nll(self.denoiser, pairs, mc_num, self.mc_batch_size, self._generators(pairs),
                             progress=progress)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        self._refuse_likelihood()
        pairs = [self._encode_pair(*request.args) for request in requests]
        if self.is_autoregressive:
            scored = autoregressive_nll(self.model, pairs, self.batch_size, not disable_tqdm)
            results = [(-nll, greedy) for nll, greedy in scored]
        else:
            nll = self._nll(pairs, self.mc_num, not disable_tqdm)
            greedy = self._greedy_reproduces(pairs) if self.is_greedy else [False] * len(pairs)
            results = [(-n, g) for n, g in zip(nll, greedy)]
        for request, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", request.args, result)
        return results

    @torch.no_grad()
    def _greedy_reproduces(self, pairs) -> list[bool]:
        """Whether LLaDA-style greedy decoding (temperature 0, one token per step, most confident
        first) of len(continuation) masks after the context gives exactly the continuation."""
        from mdlm.decode import DecodeConfig

        config = DecodeConfig(sampler="confidence", remasking="low-confidence", temperature=0.0, steps=None)
        out = []
        for start in tqdm(range(0, len(pairs), self.batch_size), desc="is_greedy", leave=False):
            chunk = pairs[start : start + self.batch_size]
            rows = [c + [self.denoiser.mask_token_id] * len(x) for c, x in chunk]
            canvas, valid = pad_rows(rows, self._pad_id, "left", self._device)
            tokens = self._decode(canvas, valid, config, generator=None)
            for row, (_, continuation) in zip(tokens.tolist(), chunk):
                out.append(row[len(row) - len(continuation):] == continuation)
        return out

    def rolling_windows(self, text: str) -> list[tuple[list[int], list[int]]]:
        """(context, continuation) windows of at most max_length tokens in all, whose continuations
        partition the text's tokens; the first is conditioned on the document-start token, the others on
        the `rolling_context` tokens before them."""
        windows = get_rolling_token_windows(self.tok_encode(text), self.prefix_token_id, self.max_length - 1,
                                            self.rolling_context)
        return [tuple(make_disjoint_window(window)) for window in windows]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        self._refuse_likelihood()
        windows, owners = [], []
        for index, request in enumerate(requests):
            for window in self.rolling_windows(request.args[0]):
                windows.append(window)
                owners.append(index)
        nll = self._nll(windows, self.rolling_mc_num, not disable_tqdm)
        totals = [0.0] * len(requests)
        for owner, value in zip(owners, nll):
            totals[owner] -= value
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # ------------------------------------------------------------------------------------------ generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        results: list[str | None] = [None] * len(requests)
        by_kwargs: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            by_kwargs.setdefault(repr(sorted(request.args[1].items())), []).append(index)
        progress = tqdm(total=len(requests), desc="generate_until", disable=disable_tqdm)
        for indices in by_kwargs.values():
            gen_kwargs = dict(requests[indices[0]].args[1])
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                texts = self._generate([requests[i].args[0] for i in chunk], gen_kwargs)
                for i, text in zip(chunk, texts):
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                progress.update(len(chunk))
        progress.close()
        return results

    def _generation_settings(self, gen_kwargs: dict):
        gen_kwargs = dict(gen_kwargs)
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_gen_toks = int(gen_kwargs.pop("max_gen_toks", self.default_max_gen_toks))
        max_gen_toks = max(1, min(max_gen_toks, self.max_length // 2))
        sampling = {}
        if gen_kwargs.pop("do_sample", None) is False:
            sampling["temperature"] = 0.0
        for key in ("temperature", "top_k", "top_p"):
            if key in gen_kwargs and gen_kwargs[key] is not None:
                sampling[key] = gen_kwargs.pop(key)
        if sampling.get("temperature") == 0.0:
            sampling.update(top_k=None, top_p=None)
        ignored = sorted(set(gen_kwargs) - {"max_length", "num_beams", "repetition_penalty"})
        if ignored:
            logger.warning("generation kwargs %s are not used by the mdlm model", ignored)
        return until, max_gen_toks, dataclasses.replace(self.decode_config, **sampling)

    def _split_prompt(self, context: str, max_gen_toks: int) -> tuple[list[int], list[int]]:
        """(prefix ids, suffix ids) that fit the context with max_gen_toks new tokens; the suffix is empty
        unless the context has an infill hole and the model can see a suffix."""
        if context.count(INFILL_HOLE) > 1:
            raise ValueError(f"a generation context holds {INFILL_HOLE} {context.count(INFILL_HOLE)} times; "
                             "an infill context has exactly one hole")
        prefix, _, suffix = context.partition(INFILL_HOLE)
        prefix_ids = self.tok_encode(prefix) or [self.prefix_token_id]
        sees_suffix = self.infill_suffix and not (self.is_autoregressive or self.uniform_noise)  # those continue the prefix
        suffix_ids = self.tok_encode(suffix) if sees_suffix else []
        room = self.max_length - max_gen_toks
        suffix_ids = suffix_ids[: max(room - len(prefix_ids), room // 2)]
        return prefix_ids[-(room - len(suffix_ids)):], suffix_ids

    def _generate(self, contexts: list[str], gen_kwargs: dict) -> list[str]:
        until, max_gen_toks, config = self._generation_settings(gen_kwargs)
        return [self._cut(ids, until) for ids in self.generate_ids(contexts, max_gen_toks, config, until)]

    def generate_ids(self, contexts: list[str], max_gen_toks: int, config, until=()) -> list[list[int]]:
        """The generated token ids of each context (at most max_gen_toks, before cutting at EOS/until)."""
        prompts = [self._split_prompt(context, max_gen_toks) for context in contexts]
        generator = torch.Generator(device="cpu").manual_seed(_request_seed(self.seed, prompts))
        if self.is_autoregressive:
            return self._autoregressive_generate([p for p, _ in prompts], max_gen_toks, config, list(until),
                                                 generator)
        rows = [p + [self.denoiser.mask_token_id] * max_gen_toks + s for p, s in prompts]
        canvas, valid = pad_rows(rows, self._pad_id, "left", self._device)
        tokens = self._decode(canvas, valid, config, generator).tolist()
        return [row[len(row) - len(s) - max_gen_toks: len(row) - len(s)] for row, (_, s) in zip(tokens, prompts)]

    def _cut(self, ids: list[int], until: list[str]) -> str:
        ids = ids[: next((k for k, t in enumerate(ids) if t in self.stop_token_ids), len(ids))]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        for stop in until:
            if stop:
                text = text.split(stop, 1)[0]
        return text

    @property
    def _pad_id(self) -> int:
        pad = getattr(self.config, "pad_token_id", None)
        return pad if pad is not None else self.eos_token_id

    def _decode(self, canvas, valid, config, generator) -> torch.Tensor:
        from mdlm.decode import decode

        return decode(self.denoiser, canvas, config, valid=valid, generator=generator).tokens

    @torch.no_grad()
    def _autoregressive_generate(self, prompts: list[list[int]], max_new: int, config, until: list[str],
                                 generator) -> list[list[int]]:
        """Left-to-right next-token sampling with a KV cache, rows left-padded; a row stops at EOS or
        when its text contains a stop string."""
        canvas, valid = pad_rows(prompts, self._pad_id, "left", self._device)
        positions = default_position_ids(valid)
        logits, cache = self.denoiser.logits(canvas, valid, positions, use_cache=True)  # (B, L, V)
        next_position = positions[:, -1:] + 1
        generated = [[] for _ in prompts]
        done = [False] * len(prompts)
        for _ in range(max_new):
            tokens = draw(logits[:, -1].float(), config, generator).tokens.view(-1, 1).to(self._device)  # (B, 1)
            for i, token in enumerate(tokens.flatten().tolist()):
                if done[i]:
                    continue
                generated[i].append(token)
                if token == self.eos_token_id or any(stop and stop in self.tokenizer.decode(generated[i])
                                                     for stop in until):
                    done[i] = True
            if all(done):
                break
            logits, cache = self.denoiser.logits(tokens, torch.ones_like(tokens, dtype=torch.bool), next_position,
                                                 cache=cache, use_cache=True)
            next_position = next_position + 1
        return generated
