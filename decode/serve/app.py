"""The HTTP side: FastAPI routes that turn OpenAI requests into scheduler jobs and job events into
OpenAI responses (JSON, or server-sent events when `stream` is true).

    POST /v1/completions        POST /v1/chat/completions     GET /v1/models     GET /health     GET /
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import replace
from pathlib import Path

from fastapi import FastAPI, Request as HTTPRequest
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from mdlm.decode.config import refuse_block_length
from mdlm.decode.generate import completion_stop_ids
from mdlm.decode.serve.protocol import APIError, Request, _param_of, parse_request
from mdlm.decode.serve.scheduler import Choice, Job, QueueFull, Scheduler, whole_decode
from mdlm.decode.serve.stepwise import RowDecoder

PAGE = Path(__file__).with_name("static") / "index.html"
DISCONNECT_POLL_S = 0.25


class ServerState:
    """What the routes share: the model, the scheduler and the server's settings."""

    def __init__(self, denoiser, tokenizer, model_name: str, max_batch: int, max_queue: int,
                 api_key: str | None, default_max_tokens: int):
        self.denoiser, self.tokenizer, self.model_name = denoiser, tokenizer, model_name
        self.max_batch, self.api_key, self.default_max_tokens = max_batch, api_key, default_max_tokens
        stop_ids = completion_stop_ids(denoiser, tokenizer)  # the one stop rule: end of text, then the family's
        self.eos_token_id = stop_ids[0] if stop_ids else None
        self.stop_ids = set(stop_ids)
        self.scheduler = Scheduler(denoiser, tokenizer, max_batch, max_queue, self.stop_ids)
        self.created = int(time.time())

    def refuse_without_key(self, request: HTTPRequest) -> JSONResponse | None:
        """401 unless the request carries the server's bearer token (a plain check in each /v1/ route: an
        HTTP middleware would wrap every streamed chunk)."""
        if self.api_key and request.headers.get("authorization", "") != f"Bearer {self.api_key}":
            return error_response(APIError("a valid API key is required: send 'Authorization: Bearer <key>' (the "
                                           "server's --api-key / MDLM_API_KEY)", None, 401, code="invalid_api_key"))
        return None

    def job(self, request: Request, emit) -> Job:
        """The scheduler job of a validated request; settings the decoder refuses become an APIError."""
        seeds = request.seeds()
        choices = [Choice(index=p * request.n + j, prompt_ids=ids, seed=seeds[p * request.n + j])
                   for p, ids in enumerate(request.prompts) for j in range(request.n)]
        job = Job(choices, request.config, request.max_tokens, request.stop, emit,
                  denoising=request.include_denoising)
        stepwise = (request.schema is None and request.config.sampler == "confidence"
                    and self.denoiser.attention == "bidirectional" and not request.config.approximate_prefix_cache
                    and not request.config.dual_cache)  # the caches keep per-batch state: run whole
        try:
            if request.config.sampler in ("first-hitting", "ancestral"):
                refuse_block_length(request.config)  # before the stream starts, not as an error inside it
            if stepwise:
                for choice in choices:
                    choice.row = RowDecoder(choice.prompt_ids, request.max_tokens, request.config, self.denoiser,
                                            choice.seed)
            elif request.schema is not None:
                job.run_whole = self._json_job(request)
            else:
                job.run_whole = whole_decode(self.denoiser, self.tokenizer, self.stop_ids)
        except APIError:
            raise
        except ValueError as error:
            raise APIError(str(error), _param_of(str(error))) from None
        return job

    def _json_job(self, request: Request):
        from mdlm.decode.schema import Scaffold, UnsupportedSchemaError, generate_json

        try:
            Scaffold(request.schema, self.tokenizer)
        except (UnsupportedSchemaError, ValueError, TypeError) as error:
            raise APIError(f"the schema cannot be scaffolded: {error}", "response_format.json_schema.schema") from None
        texts = [t for t in request.prompt_texts for _ in range(request.n)]

        def run(job: Job):
            outputs, nfe = [], 0
            for choice, text in zip(job.choices, texts):
                out = generate_json(self.denoiser, self.tokenizer, text, request.schema,
                                    replace(job.config, seed=choice.seed))  # never invalid JSON as valid
                outputs.append(out.text)
                choice.completion_tokens = len(self.tokenizer(out.text, add_special_tokens=False)["input_ids"])
                nfe += out.nfe
            return outputs, nfe

        return run


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


def create_app(denoiser, tokenizer, model_name: str = "mdlm", max_batch: int = 32, max_queue: int = 256,
               api_key: str | None = None, default_max_tokens: int = 64) -> FastAPI:
    """The FastAPI app; its scheduler thread starts now and drains on the app's shutdown."""
    state = ServerState(denoiser, tokenizer, model_name, max_batch, max_queue, api_key, default_max_tokens)
    state.scheduler.start()

    async def lifespan(app):
        yield
        await asyncio.to_thread(state.scheduler.stop, True)

    app = FastAPI(title="mdlm-serve", lifespan=lifespan)
    app.state.serve = state

    @app.exception_handler(Exception)
    async def internal_error(request: HTTPRequest, error: Exception):  # never die on a request
        return error_response(APIError(f"internal error: {type(error).__name__}: {error}", None, 500, "server_error"))

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": state.model_name, **state.scheduler.stats()}

    @app.get("/v1/models")
    async def models(request: HTTPRequest):
        refused = state.refuse_without_key(request)
        if refused:
            return refused
        return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": state.created,
                                            "owned_by": "mdlm"}]}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest):
        return await _generate(state, request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HTTPRequest):
        return await _generate(state, request, chat=True)

    return app


async def _generate(state: ServerState, http: HTTPRequest, chat: bool):
    refused = state.refuse_without_key(http)
    if refused:
        return refused
    try:
        try:
            body = json.loads(await http.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise APIError(f"the request body is not valid JSON ({error})", None) from None
        request = parse_request(body, state.tokenizer, chat=chat, context=state.denoiser.context,
                                max_batch=state.max_batch, eos_token_id=state.eos_token_id,
                                model_name=state.model_name, default_max_tokens=state.default_max_tokens,
                                corruption=getattr(state.denoiser, "corruption", "absorbing"))
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        job = state.job(request, lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
        try:
            state.scheduler.submit(job)
        except QueueFull as error:
            raise APIError(f"the server is busy: {error}; retry later", None, 429, "rate_limit_exceeded") from None
    except APIError as error:
        return error_response(error)
    shape = Shape(chat, request.model)
    if request.stream:
        return StreamingResponse(_stream(shape, request, job, events), media_type="text/event-stream")
    while True:
        try:
            event = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
        except asyncio.TimeoutError:
            if await http.is_disconnected():
                job.cancelled = True  # its rows leave the batch at the next step
                return JSONResponse({}, status_code=499)
            continue
        if event["type"] == "error":
            return error_response(event_error(event))
        if event["type"] == "done":
            return JSONResponse(shape.response(event, usage(request, event)))


def event_error(event: dict) -> APIError:
    status = event.get("status", 500)
    return APIError(event["message"], None, status, "invalid_request_error" if status < 500 else "server_error")


def usage(request: Request, done: dict) -> dict:
    prompt_tokens = sum(len(p) for p in request.prompts)
    completion_tokens = sum(c["completion_tokens"] for c in done["choices"])
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens, "nfe": done["nfe"]}


class Shape:
    """The OpenAI object shapes of one endpoint (chat or text completion)."""

    def __init__(self, chat: bool, model: str):
        self.chat, self.model = chat, model
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def _head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def response(self, done: dict, usage: dict) -> dict:
        if self.chat:
            choices = [{"index": c["index"], "message": {"role": "assistant", "content": c["text"]},
                        "finish_reason": c["finish_reason"], "logprobs": None} for c in done["choices"]]
            return {**self._head("chat.completion"), "choices": choices, "usage": usage}
        choices = [{"index": c["index"], "text": c["text"], "finish_reason": c["finish_reason"], "logprobs": None}
                   for c in done["choices"]]
        return {**self._head("text_completion"), "choices": choices, "usage": usage}

    def chunk(self, index: int, text: str | None = None, finish_reason: str | None = None, role: bool = False,
              denoising: dict | None = None) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            choice = {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        else:
            choice = {"index": index, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
        if denoising is not None:
            choice["denoising"] = denoising
        return {**self._head("chat.completion.chunk" if self.chat else "text_completion"), "choices": [choice]}

    def usage_chunk(self, usage: dict) -> dict:
        return {**self._head("chat.completion.chunk" if self.chat else "text_completion"), "choices": [],
                "usage": usage}


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _stream(shape: Shape, request: Request, job: Job, events: asyncio.Queue):
    """Server-sent events: committed text as it becomes final, optional denoising events, the finish
    reasons, the usage, [DONE]. A client that goes away cancels this generator: its job's rows leave."""
    try:
        if shape.chat:
            for choice in job.choices:
                yield _sse(shape.chunk(choice.index, role=True))
        while True:
            event = await events.get()
            kind = event["type"]
            if kind == "text":
                yield _sse(shape.chunk(event["index"], text=event["text"]))
            elif kind == "denoising":
                details = {k: v for k, v in event.items() if k not in ("type", "index")}
                yield _sse(shape.chunk(event["index"], denoising=details))
            elif kind == "error":
                yield _sse(event_error(event).body())
                break
            elif kind == "done":
                for choice in event["choices"]:
                    rest = choice["text"][len(choice["sent"]):] if choice["text"].startswith(choice["sent"]) else ""
                    yield _sse(shape.chunk(choice["index"], text=rest or None, finish_reason=choice["finish_reason"]))
                if request.include_usage:
                    yield _sse(shape.usage_chunk(usage(request, event)))
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled = True  # no-op for a finished job; frees the rows of one whose client left
