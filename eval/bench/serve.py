"""Benchmark: mdlm-serve's step-level continuous batching against the same requests one by one.

64 requests of mixed prompt and output lengths (prompts of 3-24 tokens cut from standard-library text,
max_tokens 8-32, the confidence sampler at temperature 0 with low-confidence remasking, two tokens per
step) go to a real `mdlm-serve` process (one torch thread, as the baseline) from 1, 4 and 16 concurrent `openai` clients, streamed. Per
level: throughput (generated tokens per second, counting each request's max_tokens, since a diffusion
canvas decodes all of them), p50/p95 latency, p50/p95 time to the first committed text (the first
non-empty `delta`), the network calls, and the server's own decoding time (/health's busy_seconds), which
separates the cost of decoding in steps from the cost of HTTP, streaming and the clients. A third side
feeds the same requests straight into the server's scheduler in this process (no HTTP, no clients) at
the same concurrency: what step-level batching itself gives. The baseline runs the same 64 requests one by one through
`mdlm.decode.generate` in this process. The two sides alternate over --rounds rounds (one by one, then
each concurrency level) so that both see the same load of a shared machine; each side's median round is
reported, and every round's wall time is kept in the JSON. The server answers a request as soon as its
committed prefix reaches an end of text; the baseline always decodes the whole canvas; the NFE columns
show how much that saves.

    python -m mdlm.eval.bench.serve [--model runs/tiny] [--concurrency 1 4 16]
Writes results/serve.json and results/serve.png. About 2 minutes on 2 CPU cores with the tiny run.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mdlm.eval.bench.common import REPO_ROOT, add_output_dir_argument, write_results

NAME = "serve"
NUM_REQUESTS = 64
OUTPUT_LENGTHS = (8, 16, 24, 32)
TOKENS_PER_STEP = 2


def make_requests(tokenizer, context: int, seed: int = 0) -> list[dict]:
    """64 (prompt, max_tokens) pairs: prompts cut from standard-library text at 3-24 tokens, outputs
    8-32 tokens, each fitting the context."""
    from mdlm.data import stdlib_texts

    rng = random.Random(seed)
    texts = [t for t in stdlib_texts("validation", limit=64) if len(t) > 400]
    requests = []
    for k in range(NUM_REQUESTS):
        ids = tokenizer(rng.choice(texts)[:400], add_special_tokens=False)["input_ids"]
        max_tokens = OUTPUT_LENGTHS[k % len(OUTPUT_LENGTHS)]
        length = min(rng.randint(3, 24), context - max_tokens, len(ids))
        start = rng.randint(0, len(ids) - length)
        prompt = tokenizer.decode(ids[start:start + length])
        # the prompt re-tokenized may differ in length by a token or two; keep it within the context
        while len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) + max_tokens > context:
            prompt = prompt[:-1]
        requests.append({"prompt": prompt, "max_tokens": max_tokens, "steps": max_tokens // TOKENS_PER_STEP})
    rng.shuffle(requests)
    return requests


def one_by_one(model_dir: str, requests: list[dict]) -> dict:
    """The 64 requests through `mdlm.decode.generate`, one call each, in this process."""
    import torch

    from mdlm.decode import DecodeConfig
    from mdlm.decode.generate import generate_with_result
    from mdlm.decode.loading import load_denoiser

    torch.set_num_threads(1)  # as the server (OMP_NUM_THREADS=1): one core each, whatever else runs
    denoiser, tokenizer, _ = load_denoiser(model_dir)
    generate_with_result(denoiser, tokenizer, ["warm up"], 8, DecodeConfig(temperature=0.0))
    latencies, nfe = [], 0
    started = time.perf_counter()
    for request in requests:
        t0 = time.perf_counter()
        config = DecodeConfig(temperature=0.0, steps=request["steps"])
        _, result, _ = generate_with_result(denoiser, tokenizer, [request["prompt"]], request["max_tokens"], config)
        latencies.append(time.perf_counter() - t0)
        nfe += result.nfe
    wall = time.perf_counter() - started
    return {"wall_s": wall, "latencies": latencies, "nfe": nfe}


def through_scheduler(model_dir: str, requests: list[dict], concurrency: int) -> dict:
    """The requests straight into the server's scheduler in this process (no HTTP, no clients), at most
    `concurrency` in flight: what step-level batching gives before any serving cost."""
    import threading

    import torch

    from mdlm.decode import DecodeConfig
    from mdlm.decode.loading import load_denoiser
    from mdlm.decode.serve.scheduler import Choice, Job, Scheduler
    from mdlm.decode.serve.stepwise import RowDecoder

    torch.set_num_threads(1)
    denoiser, tokenizer, _ = load_denoiser(model_dir)
    scheduler = Scheduler(denoiser, tokenizer, max(16, concurrency), len(requests), {tokenizer.eos_token_id}).start()
    finished = threading.Semaphore(0)
    ended = {}

    def submit(k: int) -> None:
        request = requests[k]
        config = DecodeConfig(temperature=0.0, steps=request["steps"], eos_token_id=tokenizer.eos_token_id)
        ids = tokenizer(request["prompt"], add_special_tokens=False)["input_ids"]
        choice = Choice(0, ids, 0, row=RowDecoder(ids, request["max_tokens"], config, denoiser, 0))

        def emit(event, k=k):
            if event["type"] in ("done", "error"):
                ended[k] = (time.perf_counter(), event.get("nfe", 0))
                finished.release()

        scheduler.submit(Job([choice], config, request["max_tokens"], [], emit))
        started[k] = time.perf_counter()

    started = {}
    t0 = time.perf_counter()
    for k in range(min(concurrency, len(requests))):
        submit(k)
    for done in range(len(requests)):
        finished.acquire()
        if concurrency + done < len(requests):
            submit(concurrency + done)
    wall = time.perf_counter() - t0
    scheduler.stop()
    return {"wall_s": wall, "latencies": [ended[k][0] - started[k] for k in range(len(requests))],
            "nfe": sum(n for _, n in ended.values())}


def start_server(model_dir: str, max_batch: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "mdlm.decode.serve.cli", "--model", model_dir, "--port",
                                str(port), "--max-batch", str(max_batch), "--log-level", "warning"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.time() + 180
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"mdlm-serve exited: {process.stderr.read()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            process.kill()
            raise RuntimeError("mdlm-serve did not answer /health within 180 s")
        time.sleep(0.2)


def through_server(url: str, requests: list[dict], concurrency: int) -> dict:
    """The requests from `concurrency` client threads (each its own openai client), streamed."""
    import openai

    clients = [openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
               for _ in range(concurrency)]

    def send(k: int) -> dict:
        request = requests[k]
        client = clients[k % concurrency]
        t0 = time.perf_counter()
        first, nfe = None, 0
        stream = client.completions.create(model="bench", prompt=request["prompt"], max_tokens=request["max_tokens"],
                                           temperature=0.0, stream=True, stream_options={"include_usage": True},
                                           extra_body={"steps": request["steps"]})
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].text:
                first = time.perf_counter() - t0
            if chunk.usage is not None:
                nfe = chunk.usage.model_extra["nfe"]
        latency = time.perf_counter() - t0
        return {"latency": latency, "first_text": first if first is not None else latency, "nfe": nfe}

    send(0)  # warm up the connection and the server's first call
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        rows = list(pool.map(send, range(len(requests))))
    wall = time.perf_counter() - started
    return {"wall_s": wall, "latencies": [r["latency"] for r in rows], "first_text": [r["first_text"] for r in rows],
            "nfe": sum(r["nfe"] for r in rows)}


def decoding_seconds(url: str) -> float:
    """The server's time spent decoding so far (its /health `busy_seconds`)."""
    import httpx

    return httpx.get(url + "/health", timeout=10).json()["busy_seconds"]


def percentile(values, q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def summarize(run: dict, tokens: int) -> dict:
    out = {"wall_s": round(run["wall_s"], 3), "tokens_per_s": round(tokens / run["wall_s"], 1),
           "latency_p50_s": round(percentile(run["latencies"], 50), 4),
           "latency_p95_s": round(percentile(run["latencies"], 95), 4), "nfe": run["nfe"]}
    if "decode_s" in run:
        out["server_decode_s"] = round(run["decode_s"], 3)
    if "first_text" in run:
        out["first_text_p50_s"] = round(percentile(run["first_text"], 50), 4)
        out["first_text_p95_s"] = round(percentile(run["first_text"], 95), 4)
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = results["server"]
    xs = [r["concurrency"] for r in levels]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(xs, [r["tokens_per_s"] for r in levels], "o-", label="mdlm-serve (streamed, openai clients)")
    axes[0].plot(xs, [r["scheduler_alone"]["tokens_per_s"] for r in levels], "s:",
                 label="its scheduler alone (no HTTP, no clients)")
    axes[0].axhline(results["one_by_one"]["tokens_per_s"], color="gray", ls="--", label="one by one: generate()")
    for r in levels:
        axes[0].annotate(f"{r['speedup']:.1f}x", (r["concurrency"], r["tokens_per_s"]), textcoords="offset points",
                         xytext=(4, -12))
    axes[0].set(xscale="log", xticks=xs, xticklabels=[str(x) for x in xs], xlabel="concurrent clients",
                ylabel="generated tokens / s", title="throughput")
    axes[0].legend()
    for key, label in (("latency_p50_s", "latency p50"), ("latency_p95_s", "latency p95"),
                       ("first_text_p50_s", "first committed text p50")):
        axes[1].plot(xs, [r[key] for r in levels], "o-", label=label)
    axes[1].axhline(results["one_by_one"]["latency_p50_s"], color="gray", ls="--", label="one by one: latency p50")
    axes[1].set(xscale="log", xticks=xs, xticklabels=[str(x) for x in xs], xlabel="concurrent clients",
                ylabel="seconds", title="latency per request")
    axes[1].legend()
    fig.suptitle(f"mdlm-serve, {results['requests']} requests, {results['model']}, {results['machine']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown_table(results: dict) -> str:
    base = results["one_by_one"]
    lines = [f"{results['requests']} requests ({results['tokens']} generated tokens) on {results['model']}, "
             f"{results['machine']}:", "",
             "| clients | tokens/s | vs one by one | latency p50 / p95 (s) | first text p50 / p95 (s) | NFE | "
             "scheduler alone |",
             "|---:|---:|---:|---:|---:|---:|---:|",
             f"| one by one (generate) | {base['tokens_per_s']} | 1.00x | {base['latency_p50_s']} / "
             f"{base['latency_p95_s']} | - | {base['nfe']} | - |"]
    for r in results["server"]:
        alone = r["scheduler_alone"]
        lines.append(f"| {r['concurrency']} | {r['tokens_per_s']} | {r['speedup']:.2f}x | {r['latency_p50_s']} / "
                     f"{r['latency_p95_s']} | {r['first_text_p50_s']} / {r['first_text_p95_s']} | {r['nfe']} | "
                     f"{alone['tokens_per_s']} ({alone['speedup']:.2f}x) |")
    lines.append("")
    lines.append(f"At 1 client the server takes {100 * results['overhead_at_1']:+.1f}% of the one-by-one wall time end to "
                 f"end (HTTP, streaming and the clients included); its own decoding time is "
                 f"{100 * results['decode_overhead_at_1']:+.1f}% of it.")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO_ROOT / "runs" / "tiny"),
                        help="run folder (default runs/tiny: accelerate launch train/pretrain.py --config tiny "
                             "--output-dir runs/tiny)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of both sides (median reported)")
    add_output_dir_argument(parser)
    args = parser.parse_args(argv)
    if not (Path(args.model) / "config.json").exists():
        raise SystemExit(f"bench serve: error: no run in {args.model}; train one with: accelerate launch "
                         "train/pretrain.py --config tiny --output-dir runs/tiny")
    from mdlm.decode.loading import load_denoiser

    denoiser, tokenizer, _ = load_denoiser(args.model)
    requests = make_requests(tokenizer, denoiser.context or 1024)
    tokens = sum(r["max_tokens"] for r in requests)
    baseline_runs, server_runs = [], {c: [] for c in args.concurrency}
    scheduler_runs = {c: [] for c in args.concurrency}
    process, url = start_server(args.model, max(args.concurrency))
    try:
        # Rounds alternate the two sides, so that both see the same load of a shared machine; each side's
        # median round is reported.
        for round_index in range(args.rounds):
            baseline_runs.append(one_by_one(args.model, requests))
            line = [f"round {round_index + 1}: one by one {baseline_runs[-1]['wall_s']:.2f} s"]
            for concurrency in args.concurrency:
                busy = decoding_seconds(url)
                server_runs[concurrency].append(through_server(url, requests, concurrency))
                server_runs[concurrency][-1]["decode_s"] = decoding_seconds(url) - busy
                line.append(f"{concurrency} clients {server_runs[concurrency][-1]['wall_s']:.2f} s")
            for concurrency in args.concurrency:
                scheduler_runs[concurrency].append(through_scheduler(args.model, requests, concurrency))
                line.append(f"scheduler alone at {concurrency} {scheduler_runs[concurrency][-1]['wall_s']:.2f} s")
            print(", ".join(line), flush=True)
    finally:
        process.terminate()
        process.wait(30)
    median_run = lambda runs: sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]  # noqa: E731
    base = summarize(median_run(baseline_runs), tokens)
    base["wall_s_rounds"] = [round(r["wall_s"], 3) for r in baseline_runs]
    levels = []
    for concurrency in args.concurrency:
        level = {"concurrency": concurrency, **summarize(median_run(server_runs[concurrency]), tokens),
                 "wall_s_rounds": [round(r["wall_s"], 3) for r in server_runs[concurrency]]}
        level["speedup"] = round(level["tokens_per_s"] / base["tokens_per_s"], 3)
        alone = summarize(median_run(scheduler_runs[concurrency]), tokens)
        level["scheduler_alone"] = {**alone, "speedup": round(alone["tokens_per_s"] / base["tokens_per_s"], 3),
                                    "wall_s_rounds": [round(r["wall_s"], 3) for r in scheduler_runs[concurrency]]}
        levels.append(level)
    at_one = next((lv for lv in levels if lv["concurrency"] == 1), None)
    where = Path(args.model).resolve()
    shown = where.relative_to(REPO_ROOT) if where.is_relative_to(REPO_ROOT) else where
    results = dict(model=f"the {where.name} run ({shown})", requests=len(requests), tokens=tokens,
                   machine=f"{os.cpu_count()} CPU cores (shared), one torch thread per side",
                   tokens_per_step=TOKENS_PER_STEP, rounds=args.rounds,
                   sampler="confidence, low-confidence remasking, temperature 0", one_by_one=base, server=levels,
                   overhead_at_1=round(at_one["wall_s"] / base["wall_s"] - 1, 4) if at_one else None,
                   decode_overhead_at_1=round(at_one["server_decode_s"] / base["wall_s"] - 1, 4) if at_one else None)
    return write_results(args.output_dir, NAME, results, plot, markdown_table)


if __name__ == "__main__":
    main()
