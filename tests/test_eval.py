"""The lm-eval model `mdlm`, the local tasks and the CLI: real lm-eval runs of tiny models, offline."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import tiny_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import lm_eval  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402

from mdlm import MDLMForMaskedLM  # noqa: E402
from mdlm.decode import DecodeConfig, decode  # noqa: E402
from mdlm.eval import MDLMEvalModel, include_paths, task_manager  # noqa: E402
from mdlm.eval.adapter import INFILL_HOLE  # noqa: E402
from mdlm.eval.likelihood import exact_diffusion_nll  # noqa: E402
from mdlm.eval.tasks import build_data  # noqa: E402
from mdlm.eval.tasks.utils import edit_similarity, first_line, infill_results  # noqa: E402

TASKS = ["stdlib_ppl", "stdlib_next_line", "stdlib_infill"]


@pytest.fixture(scope="module")
def local_tasks():
    return task_manager(include_defaults=False)  # only the local tasks: fast to index


@pytest.fixture(scope="module")
def ar_run_dir(tmp_path_factory, stdlib_tokenizer):
    torch.manual_seed(1)
    run = tmp_path_factory.mktemp("tiny_ar_run")
    MDLMForMaskedLM(tiny_config(stdlib_tokenizer, attention="causal")).save_pretrained(run)
    stdlib_tokenizer.save_pretrained(run)
    return run


@pytest.fixture(scope="module")
def mdlm_lm(tiny_run_dir):
    return MDLMEvalModel(pretrained=str(tiny_run_dir), mc_num=8, mc_batch_size=8, batch_size=4)


@pytest.fixture(scope="module")
def ar_lm(ar_run_dir):
    return MDLMEvalModel(pretrained=str(ar_run_dir), batch_size=4)


def request(kind, *arguments):
    return Instance(request_type=kind, doc={}, arguments=tuple(arguments), idx=0)


def metric(results, task, name):
    return results["results"][task][f"{name},none"]


@pytest.mark.parametrize("which", ["mdlm", "ar"])
def test_simple_evaluate_runs_every_local_task(which, mdlm_lm, ar_lm, local_tasks):
    lm = mdlm_lm if which == "mdlm" else ar_lm
    results = lm_eval.simple_evaluate(model=lm, tasks=TASKS, task_manager=local_tasks, limit=2, log_samples=True)
    byte_perplexity, bits_per_byte = metric(results, "stdlib_ppl", "byte_perplexity"), \
        metric(results, "stdlib_ppl", "bits_per_byte")
    # A random tiny model is near uniform over its 512 tokens: a few bits per byte, far from 0 or infinity.
    assert 1 < bits_per_byte < 12 and bits_per_byte == pytest.approx(math.log2(byte_perplexity), rel=1e-9)
    assert 0 <= metric(results, "stdlib_next_line", "acc") <= 1
    assert 0 <= metric(results, "stdlib_infill", "edit_similarity") <= 1
    assert results["config"]["attention"] == ("bidirectional" if which == "mdlm" else "causal")
    for sample in results["samples"]["stdlib_infill"]:  # scored on the first non-blank generated line
        expected = infill_results(sample["doc"], [sample["filtered_resps"][0]])
        assert {k: sample[k] for k in expected} == expected and sample["doc"]["target"].strip()


def test_tasks_load_from_any_directory_and_build_deterministically(tmp_path, monkeypatch, local_tasks):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MDLM_EVAL_DATA", str(tmp_path / "data"))
    docs = local_tasks.load(["stdlib_infill"])
    task = next(iter(docs["tasks"].values())) if "tasks" in docs else next(iter(docs.values()))
    first = next(iter(task.test_docs()))
    assert INFILL_HOLE not in first["prefix"] + first["suffix"] and first["target"].strip()
    built = (tmp_path / "data" / "stdlib_infill.jsonl").read_bytes()
    build_data.build(tmp_path / "again", force=True)
    assert (tmp_path / "again" / "stdlib_infill.jsonl").read_bytes() == built


def test_infill_scoring():
    assert first_line("\n\n    x = 1\ny = 2") == "    x = 1" and first_line("") == ""
    assert infill_results({"target": "    x = 1"}, ["\nx = 1  \nz"]) == {"exact_match": 1.0, "edit_similarity": 1.0}
    assert edit_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert edit_similarity("", "") == 1.0 and edit_similarity("abc", "") == 0.0


def test_rolling_windows_partition_the_text(mdlm_lm):
    text = "".join(f"def f{i}(x):\n    return x * {i}\n" for i in range(30))
    tokens = mdlm_lm.tok_encode(text)
    windows = mdlm_lm.rolling_windows(text)
    assert len(tokens) > 2 * mdlm_lm.max_length and len(windows) > 2
    assert [t for _, continuation in windows for t in continuation] == tokens
    assert windows[0][0] == [mdlm_lm.eos_token_id]
    position = 0
    for context, continuation in windows:
        assert len(context) + len(continuation) <= mdlm_lm.max_length
        if position:  # later windows are conditioned on the tokens right before them
            assert len(context) >= mdlm_lm.rolling_context and context == tokens[position - len(context) : position]
        position += len(continuation)


def test_rolling_likelihood_of_a_short_text_is_exact(mdlm_lm, tiny_model, ar_lm, ar_run_dir):
    text = "x=1"  # three tokens: the diffusion path enumerates every mask (exact ELBO)
    tokens = mdlm_lm.tok_encode(text)
    assert 2 ** len(tokens) - 1 <= mdlm_lm.rolling_mc_num
    (total,) = mdlm_lm.loglikelihood_rolling([request("loglikelihood_rolling", text)], disable_tqdm=True)
    assert total == pytest.approx(-exact_diffusion_nll(tiny_model, [mdlm_lm.eos_token_id], tokens), rel=1e-5)
    (ar_total,) = ar_lm.loglikelihood_rolling([request("loglikelihood_rolling", text)], disable_tqdm=True)
    ids = torch.tensor([[ar_lm.eos_token_id, *tokens]])
    with torch.no_grad():
        logprobs = ar_lm.model(ids).logits[0, :-1].double().log_softmax(-1)
    assert ar_total == pytest.approx(float(logprobs.gather(1, ids[0, 1:, None]).sum()), rel=1e-6)


def test_loglikelihood_does_not_depend_on_batching(mdlm_lm):
    requests = [request("loglikelihood", "def add(a, b):\n", "    return a + b\n"),
                request("loglikelihood", "import os\n", "import collections.abc\n")]
    together = mdlm_lm.loglikelihood(requests, disable_tqdm=True)
    alone = mdlm_lm.loglikelihood(requests[1:], disable_tqdm=True)
    assert together[1][0] == pytest.approx(alone[0][0], rel=1e-5)
    assert all(value < 0 and greedy is False for value, greedy in together)  # is_greedy is off by default


def test_is_greedy_is_true_exactly_for_the_greedy_decode(tiny_run_dir, stdlib_tokenizer):
    lm = MDLMEvalModel(pretrained=str(tiny_run_dir), mc_num=4, is_greedy=True)
    pairs = []
    for text, length in [("class A:\n", 3), ("import os\nimport sys\n\n\ndef main():\n", 2)]:
        context = stdlib_tokenizer(text)["input_ids"]
        canvas = torch.tensor([context + [lm.config.mask_token_id] * length])
        greedy = decode(lm.model, canvas, DecodeConfig(temperature=0.0)).tokens[0, -length:].tolist()
        pairs += [(context, greedy), (context, greedy[:-1] + [(greedy[-1] + 1) % 100 + 10])]
    # Batched (left-padded rows of different lengths) as decoded one by one.
    assert lm._greedy_reproduces(pairs) == [True, False, True, False]


def test_generate_until_honours_until_and_length_with_any_sampler(tiny_run_dir, ar_lm):
    contexts = ["def parse(line):\n", "import os\n\n\nclass Config:\n"]
    for sampler in ("confidence", "first-hitting", "ancestral"):
        lm = MDLMEvalModel(pretrained=str(tiny_run_dir), sampler=sampler, steps=4 if sampler == "ancestral" else None,
                           temperature=1.0, batch_size=2)
        kwargs = {"until": ["("], "max_gen_toks": 6, "temperature": 1.0}
        outputs = lm.generate_until([request("generate_until", c, kwargs) for c in contexts], disable_tqdm=True)
        assert len(outputs) == 2 and all("(" not in o for o in outputs)
        ids = lm.generate_ids(contexts, 6, lm.decode_config)
        assert [len(row) for row in ids] == [6, 6] and lm.config.mask_token_id not in sum(ids, [])
        assert all(lm._cut(row, ["("]) == lm.tokenizer.decode(row).split("(")[0] for row in ids
                   if lm.eos_token_id not in row)
    ar_ids = ar_lm.generate_ids(contexts, 5, ar_lm.decode_config)
    assert all(1 <= len(row) <= 5 for row in ar_ids)


def test_infill_canvas_keeps_the_suffix_for_diffusion_only(mdlm_lm, ar_lm):
    context = "a = 1\n" + INFILL_HOLE + "\nc = 3\n"
    prefix, suffix = mdlm_lm._split_prompt(context, 8)
    assert prefix == mdlm_lm.tok_encode("a = 1\n") and suffix == mdlm_lm.tok_encode("\nc = 3\n")
    assert ar_lm._split_prompt(context, 8) == (ar_lm.tok_encode("a = 1\n"), [])
    mdlm_lm.infill_suffix = False  # the prefix-only ablation
    try:
        assert mdlm_lm._split_prompt(context, 8) == (prefix, [])
    finally:
        mdlm_lm.infill_suffix = True
    with pytest.raises(ValueError, match="exactly one hole"):
        mdlm_lm._split_prompt(INFILL_HOLE * 2, 8)


def test_autoregressive_generation_matches_a_plain_greedy_loop(ar_lm):
    prompts = [ar_lm.tok_encode("def parse(line):\n"), ar_lm.tok_encode("x")]
    generated = ar_lm._autoregressive_generate(prompts, 6, DecodeConfig(temperature=0.0), [], None)
    for prompt, tokens in zip(prompts, generated):
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(len(tokens)):
                ids.append(int(ar_lm.model(torch.tensor([ids])).logits[0, -1].argmax()))
        assert tokens == ids[len(prompt):]


def test_bad_model_args_give_clear_errors(tiny_run_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown model arg.*mc_samples"):
        MDLMEvalModel(pretrained=str(tiny_run_dir), mc_samples=3)
    with pytest.raises(FileNotFoundError, match="no such run folder"):
        MDLMEvalModel(pretrained=str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        MDLMEvalModel(pretrained=str(tmp_path))
    with pytest.raises(ValueError, match="mc_num must be an integer >= 1"):
        MDLMEvalModel(pretrained=str(tiny_run_dir), mc_num=0)
    with pytest.raises(ValueError, match="pretrained= is required"):
        MDLMEvalModel()
    with pytest.raises(ValueError, match="dtype"):
        MDLMEvalModel(pretrained=str(tiny_run_dir), dtype="float8")
    with pytest.raises(ValueError, match="sampler"):
        MDLMEvalModel(pretrained=str(tiny_run_dir), sampler="beam")
    with pytest.raises(ValueError, match="max_length"):
        MDLMEvalModel(pretrained=str(tiny_run_dir), max_length=10_000)
    registered = lm_eval.api.registry.get_model("mdlm")  # lm-eval's own path: registry + arg string
    assert registered is MDLMEvalModel
    with pytest.raises(ValueError, match="unknown model arg.*bogus"):
        registered.create_from_arg_string(f"pretrained={tiny_run_dir},bogus=1", {"batch_size": 1, "device": "cpu"})
    assert registered.create_from_arg_string(f"pretrained={tiny_run_dir},mc_num=3", {"batch_size": 2}).mc_num == 3


def test_cli_is_lm_evals_cli_with_the_model_and_local_tasks(tiny_run_dir, tmp_path):
    """`python -m mdlm.eval` with lm-eval's flags; the user's --include_path and the local tasks both work."""
    from importlib.metadata import entry_points

    assert any(e.value == "mdlm.eval.cli:main" for e in entry_points(group="console_scripts", name="mdlm-eval"))
    user_tasks = tmp_path / "my_tasks"
    user_tasks.mkdir()
    (user_tasks / "my_next_line.yaml").write_text(
        f"include: {build_data.Path(build_data.__file__).parent / 'stdlib_next_line.yaml'}\ntask: my_next_line\n")
    assert include_paths(str(user_tasks))[1:] == [str(user_tasks)]
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-m", "mdlm.eval", "--model", "mdlm", "--model_args",
               f"pretrained={tiny_run_dir},mc_num=4", "--tasks", "my_next_line,stdlib_infill", "--limit", "2",
               "--device", "cpu", "--include_path", str(user_tasks), "--output_path", str(out), "--log_samples"]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr[-3000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    assert set(results["results"]) == {"my_next_line", "stdlib_infill"}
    assert results["config"]["model_args"] == {"pretrained": str(tiny_run_dir), "mc_num": 4}
    assert len(list(out.rglob("samples_stdlib_infill_*.jsonl"))) == 1


@pytest.mark.slow
def test_two_process_accelerate_launch_gathers_on_rank_zero(tiny_run_dir, tmp_path, local_tasks):
    """A real `accelerate launch` of the CLI with two CPU processes (accelerate's `--multi_gpu` launcher is
    torchrun, which runs gloo processes on a CPU-only machine; `--cpu` alone runs one process); per-request
    seeding makes its numbers equal to a single-process run's."""
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "mdlm.eval", "--model", "mdlm",
               "--model_args", f"pretrained={tiny_run_dir},mc_num=8,mc_batch_size=8",
               "--tasks", "stdlib_next_line,stdlib_ppl", "--limit", "3", "--device", "cpu", "--output_path", str(out)]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr[-3000:]
    launched = json.loads(next(out.rglob("results_*.json")).read_text())
    assert launched["config"]["world_size"] == 2
    single = lm_eval.simple_evaluate(model=MDLMEvalModel(pretrained=str(tiny_run_dir), mc_num=8, mc_batch_size=8),
                                     tasks=["stdlib_next_line", "stdlib_ppl"], task_manager=local_tasks, limit=3)
    for task, name in [("stdlib_next_line", "acc"), ("stdlib_ppl", "bits_per_byte"), ("stdlib_ppl", "word_perplexity")]:
        assert metric(launched, task, name) == pytest.approx(metric(single, task, name), rel=1e-5)


# slow: the lm-eval CLI test covers the adapter end to end; this adds the benchmark's files (9 s)
@pytest.mark.slow
def test_benchmark_quick_run_writes_json_plot_and_table(tiny_run_dir, ar_run_dir, tmp_path):
    from mdlm.eval.bench import lm_eval as bench

    results = bench.main(["--mdlm-run", str(tiny_run_dir), "--ar-run", str(ar_run_dir), "--quick",
                          "--output-dir", str(tmp_path)])
    saved = json.loads((tmp_path / "lm_eval.json").read_text())
    assert (tmp_path / "lm_eval.png").stat().st_size > 10_000
    assert saved["models"]["ar"]["attention"] == "causal" and saved["config"]["limits"]["stdlib_infill"] == 4
    table = bench.markdown_table(saved)
    assert table == bench.markdown_table(results) and "| stdlib_next_line | acc |" in table
    assert set(saved["estimator"]["std"]) == set(bench.ESTIMATORS)
