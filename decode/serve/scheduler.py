"""Step-level continuous batching: one thread, one running batch, one network call at a time.

The scheduler thread owns the model. Each turn of its loop:
  1. drops the rows of jobs whose client went away (their rows leave at this step),
  2. admits waiting jobs, oldest first, while the batch has room (`max_batch` rows; a job's n rows join
     together),
  3. makes one network call per group of rows that can share it (`group_key`: the step-wise confidence
     rows whose calls have the same shape), left-padded (`stepwise.step_rows`),
  4. runs one job of a sampler that has no step-wise form (first-hitting, ancestral, ASSD, JSON schema
     rounds, block-causal models, uniform-noise on DiffusionGemma) whole, as a group of its own, between
     two steps of the batch,
  5. hands each row's news to its job: committed text, a denoising event, the end.
A job talks back through `emit` (thread-safe; the HTTP side turns the events into responses). The
server never dies on a request: an exception inside a job ends that job with an error event.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable

from mdlm.decode.config import DecodeConfig
from mdlm.decode.serve.stepwise import RowDecoder, step_rows

MASK_GLYPH = "\u2591"  # light shade: a position still masked, in the live canvas


class QueueFull(Exception):
    """More jobs are waiting than --max-queue allows (the HTTP side answers 429)."""


@dataclass
class Choice:
    """One output sequence of a job: its prompt, its decoder (step-wise) and what was sent of it."""

    index: int
    prompt_ids: list[int]
    seed: int
    row: RowDecoder | None = None
    sent: str = ""  # text already handed out as committed
    text: str | None = None  # the final text
    finish_reason: str | None = None
    completion_tokens: int = 0
    final_length: int = -1  # generated positions known final at the last look (text is re-read when it grows)


@dataclass
class Job:
    """One HTTP request: its choices (n per prompt), its settings and where its events go."""

    choices: list[Choice]
    config: DecodeConfig
    max_tokens: int
    stop: list[str]
    emit: Callable[[dict], None]
    denoising: bool = False  # send per-step canvas events
    run_whole: Callable | None = None  # a job without a step-wise form: called in the thread -> list of texts
    cancelled: bool = False
    nfe: int = 0
    submitted: float = field(default_factory=time.perf_counter)
    id: int = field(default_factory=itertools.count().__next__)

    @property
    def rows(self) -> int:
        return len(self.choices)


def group_key(config: DecodeConfig) -> tuple:
    """Rows whose network calls have the same shape share a call: the head at chosen positions or at all."""
    return (config.full_logits,)


class Scheduler:
    """See the module docstring. `submit` (any thread) -> the job starts at the next step; `stop(drain)`."""

    def __init__(self, denoiser, tokenizer, max_batch: int = 32, max_queue: int = 256, stop_token_ids=()):
        self.denoiser, self.tokenizer = denoiser, tokenizer
        self.max_batch, self.max_queue = max_batch, max_queue
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.stop_ids = {int(i) for i in stop_token_ids if i is not None}
        self.waiting: deque[Job] = deque()
        self.running: list[Job] = []
        self.lock = threading.Condition()
        self.stopping = False
        self.network_calls = 0
        self.busy_seconds = 0.0  # time spent decoding (steps and whole jobs), for /health
        self.pieces: dict[int, str] = {}
        self.thread = threading.Thread(target=self._loop, name="mdlm-serve-scheduler", daemon=True)

    def start(self) -> "Scheduler":
        self.thread.start()
        return self

    def submit(self, job: Job) -> None:
        with self.lock:
            if self.stopping:
                raise QueueFull("the server is shutting down")
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"{len(self.waiting)} requests are already waiting (--max-queue {self.max_queue})")
            self.waiting.append(job)
            self.lock.notify()

    def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Refuse new jobs; with `drain` finish the waiting and running ones first."""
        with self.lock:
            self.stopping = True
            if not drain:
                for job in [*self.waiting, *self.running]:
                    job.cancelled = True
            self.lock.notify()
        self.thread.join(timeout)

    def stats(self) -> dict:
        with self.lock:
            return {"running_requests": len(self.running), "running_rows": sum(j.rows for j in self.running),
                    "waiting_requests": len(self.waiting), "network_calls": self.network_calls,
                    "busy_seconds": round(self.busy_seconds, 3)}

    # -- the loop -------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self.lock:
                self._drop_cancelled()
                self._admit()
                if not self.running:
                    if self.stopping and not self.waiting:
                        return
                    self.lock.wait(0.5)
                    continue
                running = list(self.running)
            whole = [job for job in running if job.run_whole is not None]
            stepwise = [job for job in running if job.run_whole is None]
            groups: dict[tuple, list[Job]] = {}
            for job in stepwise:
                groups.setdefault(group_key(job.config), []).append(job)
            for jobs in groups.values():
                self._guarded(jobs, self._step_group)
            if whole:
                self._guarded([whole[0]], lambda jobs: self._run_whole(jobs[0]))

    def _drop_cancelled(self) -> None:
        self.running = [job for job in self.running if not job.cancelled]
        self.waiting = deque(job for job in self.waiting if not job.cancelled)

    def _admit(self) -> None:
        rows = sum(job.rows for job in self.running)
        while self.waiting and rows + self.waiting[0].rows <= self.max_batch:
            job = self.waiting.popleft()
            if job.run_whole is None:
                for choice in job.choices:
                    choice.row = RowDecoder(choice.prompt_ids, job.max_tokens, job.config, self.denoiser, choice.seed)
            self.running.append(job)
            rows += job.rows

    def _guarded(self, jobs: list[Job], work) -> None:
        """Run `work(jobs)`; a failure ends those jobs with an error instead of ending the server."""
        started = time.perf_counter()
        try:
            work(jobs)
        except Exception as error:  # noqa: BLE001  (one request must never take the server down)
            if os.environ.get("MDLM_TRACEBACK"):
                traceback.print_exc()
            # Settings a sampler refuses are the request's fault (400); a model whose output cannot be made
            # to fit the schema is 422; anything else is ours (500).
            status = 400 if isinstance(error, ValueError) else 422 if type(error).__name__ == "SchemaFitError" else 500
            for job in jobs:
                job.emit({"type": "error", "message": f"{type(error).__name__}: {error}", "status": status})
                self._retire(job)
        finally:
            self.busy_seconds += time.perf_counter() - started

    def _retire(self, job: Job) -> None:
        with self.lock:
            if job in self.running:
                self.running.remove(job)

    def _step_group(self, jobs: list[Job]) -> None:
        rows = [c.row for job in jobs for c in job.choices if c.finish_reason is None]
        step_rows(self.denoiser, rows, self.pad_id)
        self.network_calls += 1
        for job in jobs:
            job.nfe += 1
            for choice in job.choices:
                if choice.finish_reason is None:
                    self._after_step(job, choice)
            if all(c.finish_reason is not None for c in job.choices):
                self._finish(job)

    def _run_whole(self, job: Job) -> None:
        texts, nfe = job.run_whole(job)
        job.nfe = nfe
        for choice, text in zip(job.choices, texts):
            choice.text, choice.finish_reason = self._cut_at_stop(text, job.stop)
            choice.finish_reason = choice.finish_reason or "length"
            self._send(job, choice, choice.text)
        self._finish(job)

    # -- per choice -----------------------------------------------------------------------------------------

    def piece(self, token_id: int) -> str:
        if token_id not in self.pieces:
            self.pieces[token_id] = self.tokenizer.decode([token_id], skip_special_tokens=False)
        return self.pieces[token_id]

    def _after_step(self, job: Job, choice: Choice) -> None:
        row = choice.row
        final_length = row.final_before()
        if final_length == choice.final_length and not row.done and not job.denoising:
            return  # nothing new is final: no text to read
        choice.final_length = final_length
        generated = row.generated.tolist()
        final = generated[:final_length]
        stop_at = next((k for k, t in enumerate(final) if t in self.stop_ids), None)
        ids = final if stop_at is None else final[:stop_at]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        text, stopped_by_string = self._cut_at_stop(text, job.stop)
        finished = row.done or stop_at is not None or stopped_by_string is not None
        if job.denoising:
            job.emit({"type": "denoising", "index": choice.index, "step": row.global_step, "nfe": row.nfe,
                      "revealed": row.revealed, "remasked": row.remasked,
                      "canvas": [MASK_GLYPH if t == row.mask_id else self.piece(t) for t in generated],
                      "committed": len(final), "done": finished})
        if finished:
            choice.text = text
            choice.completion_tokens = len(ids)
            choice.finish_reason = "stop" if (stop_at is not None or stopped_by_string is not None) else "length"
            row.finish()
            self._send(job, choice, text)
            return
        # Hold back what could still become a stop string, and a split multi-byte character.
        hold = max((len(s) - 1 for s in job.stop), default=0)
        safe = text[:len(text) - hold] if hold else text
        self._send(job, choice, safe.rstrip("\ufffd"))

    def _send(self, job: Job, choice: Choice, text: str) -> None:
        if text.startswith(choice.sent) and len(text) > len(choice.sent):
            job.emit({"type": "text", "index": choice.index, "text": text[len(choice.sent):]})
            choice.sent = text

    @staticmethod
    def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, str | None]:
        hits = [(text.find(s), s) for s in stops if s and s in text]
        if not hits:
            return text, None
        where, stop = min(hits)
        return text[:where], stop

    def _finish(self, job: Job) -> None:
        self._retire(job)
        job.emit({"type": "done", "nfe": job.nfe, "choices": [
            {"index": c.index, "text": c.text if c.text is not None else c.sent, "finish_reason": c.finish_reason,
             "completion_tokens": c.completion_tokens, "sent": c.sent} for c in job.choices]})


def whole_decode(denoiser, tokenizer, stop_ids):
    """`Job.run_whole` for samplers without a step-wise form: one batched `decode` of the job's rows with a
    denoiser wrapper of its own (so that its NFE is its own)."""
    from mdlm.decode.canvas import Canvas
    from mdlm.decode.generate import completion_ids
    from mdlm.decode.registry import decode

    def run(job: Job):
        mask_id = denoiser.require_mask_id()
        rows = [c.prompt_ids + [mask_id] * job.max_tokens for c in job.choices]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        canvas = Canvas.from_rows(denoiser, rows, pad)
        canvas.generated[:, :-job.max_tokens] = False
        meter = denoiser.meter()
        config = job.config if job.config.seed is not None else replace(job.config, seed=job.choices[0].seed)
        result = decode(denoiser, canvas, config)
        ids = completion_ids(result.tokens.cpu(), canvas.generated.cpu(), sorted(stop_ids))
        for choice, row in zip(job.choices, ids):
            choice.completion_tokens = len(row)
        return [tokenizer.decode(row, skip_special_tokens=True) for row in ids], meter.nfe

    return run
