"""mdlm-serve with the real `openai` client against a real uvicorn server on a free local port (tiny run).

One server per module (max batch 8); a second one with --max-queue 1, --max-batch 1 and an API key for
the 429 and 401 paths."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import openai
import pytest
import uvicorn

from mdlm.decode import DecodeConfig, generate
from mdlm.decode.loading import load_denoiser
from mdlm.decode.serve.app import create_app
from mdlm.decode.serve.scheduler import MASK_GLYPH

MAX_BATCH = 8


class LiveServer:
    """A uvicorn server in a thread of this process, on a free port."""

    def __init__(self, app):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, key: str = "none") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=60)

    def stats(self) -> dict:
        return httpx.get(self.url + "/health").json()

    def close(self):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def loaded(tiny_run_dir):
    denoiser, tokenizer, _ = load_denoiser(tiny_run_dir)
    return denoiser, tokenizer


@pytest.fixture(scope="module")
def server(loaded):
    live = LiveServer(create_app(*loaded, model_name="tiny", max_batch=MAX_BATCH))
    yield live
    live.close()


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def nfe_of(usage) -> int:
    return usage.model_extra["nfe"]


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert server.stats()["status"] == "ok"


def test_completion_equals_generate(loaded, client):
    """A lone request through the server gives `mdlm.decode.generate`'s text (same sampler and settings):
    greedy, and with a seed at temperature 1."""
    denoiser, tokenizer = loaded
    prompt = "def parse(self, text):"
    for settings in (dict(temperature=0.0, steps=8, block_length=8), dict(temperature=1.0, seed=7, remasking="margin"),
                     dict(temperature=0.0, remasking="threshold", threshold=0.2),
                     dict(temperature=0.0, remasking="entropy-bound", entropy_bound=0.5, block_length=8)):
        extra = {k: v for k, v in settings.items() if k not in ("temperature", "seed")}
        out = client.completions.create(model="tiny", prompt=prompt, max_tokens=24, temperature=settings["temperature"],
                                        seed=settings.get("seed"), extra_body=extra)
        expected = generate(denoiser, tokenizer, [prompt], 24, DecodeConfig(**settings))[0]
        assert out.choices[0].text == expected[:len(out.choices[0].text)]
        if out.choices[0].finish_reason == "length":
            assert out.choices[0].text == expected
        assert nfe_of(out.usage) >= 1 and out.usage.prompt_tokens > 0


def _alone_and_beside_seven(client, settings: dict) -> tuple[str, list[str]]:
    request = dict(model="tiny", prompt="import os\nimport sys\n", max_tokens=20, **settings)
    alone = client.completions.create(**request).choices[0].text
    others = [dict(model="tiny", prompt="x = " * (k + 1), max_tokens=8 + 3 * k, temperature=1.0, seed=100 + k,
                   extra_body={"remasking": "random"}) for k in range(7)]
    start = threading.Barrier(8)

    def send(req):
        start.wait()
        return client.completions.create(**req).choices[0].text

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, [request] + others))
    return alone, results


@pytest.mark.parametrize("settings", [dict(temperature=0.0), dict(temperature=1.0, seed=3)])
def test_tokens_do_not_depend_on_batch_neighbours(client, server, settings):
    calls_before = server.stats()["network_calls"]
    alone, results = _alone_and_beside_seven(client, settings)
    assert results[0] == alone
    # The eight shared network calls (fewer calls than the eight requests' steps one by one).
    assert server.stats()["network_calls"] - calls_before < 20 + sum(8 + 3 * k for k in range(7)) + 20


def test_rows_with_different_policies_share_a_call(loaded):
    """Step-wise rows of every remasking policy and different thresholds in one batch: each row's tokens
    are its tokens alone (the shared commit groups only policies that select alike)."""
    from mdlm.decode.serve.stepwise import RowDecoder, step_rows

    denoiser, tokenizer = loaded
    settings = [dict(remasking="threshold", threshold=1e-4), dict(remasking="threshold", threshold=0.9),
                dict(remasking="entropy-bound", entropy_bound=100.0), dict(remasking="entropy-bound", entropy_bound=0.0),
                dict(remasking="rcr", steps=6), dict(remasking="margin", steps=6, temperature=1.0),
                dict(remasking="random", temperature=1.0), dict(remasking="low-confidence", eoser=True, steps=4)]
    prompts = [tokenizer(f"def f{k}(x):" * (k % 3 + 1), add_special_tokens=False)["input_ids"] for k in range(8)]

    def rows():
        return [RowDecoder(p, 12, DecodeConfig(**{"temperature": 0.0, **s}, eos_token_id=tokenizer.eos_token_id),
                           denoiser, seed=k) for k, (p, s) in enumerate(zip(prompts, settings))]

    def run(batch):
        while any(not r.done for r in batch):
            step_rows(denoiser, [r for r in batch if not r.done], tokenizer.pad_token_id)
        return [r.generated.tolist() for r in batch]

    together = run(rows())
    alone = [run([row])[0] for row in rows()]
    assert together == alone


def test_stream_is_prefix_stable_and_matches_plain(client):
    request = dict(model="tiny", prompt="class Parser:", max_tokens=24, temperature=1.0, seed=11)
    plain = client.completions.create(**request)
    pieces, usage, events = [], None, []
    for chunk in client.completions.create(**request, stream=True,
                                           stream_options={"include_usage": True, "include_denoising": True}):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.text)
            if (choice.model_extra or {}).get("denoising"):
                events.append(choice.model_extra["denoising"])
    assert "".join(pieces) == plain.choices[0].text
    assert nfe_of(usage) == nfe_of(plain.usage) == len(events)
    assert [e["nfe"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["canvas"].count(MASK_GLYPH) == 24 - len(events[0]["revealed"])
    assert MASK_GLYPH not in "".join(events[-1]["canvas"][:events[-1]["committed"]])


def test_chat_plain_streamed_and_n(client):
    messages = [{"role": "user", "content": "Write a loop."}]
    out = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, n=3, temperature=1.0, seed=5)
    assert sorted(c.index for c in out.choices) == [0, 1, 2]
    assert all(c.message.role == "assistant" and isinstance(c.message.content, str) for c in out.choices)
    assert len({c.message.content for c in out.choices}) > 1  # three different seeds
    streamed = {0: "", 1: "", 2: ""}
    finished = {}
    for chunk in client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, n=3, temperature=1.0,
                                                seed=5, stream=True):
        for choice in chunk.choices:
            streamed[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert streamed == {c.index: c.message.content for c in out.choices}
    assert set(finished) == {0, 1, 2}


def test_stop_string_cuts_the_text(client):
    full = client.completions.create(model="tiny", prompt="def f(x):", max_tokens=24, temperature=1.0, seed=2)
    text = full.choices[0].text
    stop = text[5:7]
    assert stop.strip(), "the test needs a visible stop string; change the seed"
    cut = client.completions.create(model="tiny", prompt="def f(x):", max_tokens=24, temperature=1.0, seed=2, stop=stop)
    assert cut.choices[0].text == text[:text.find(stop)] and cut.choices[0].finish_reason == "stop"


def test_json_schema_output_parses_and_validates(client):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                               "admin": {"type": "boolean"},
                                               "color": {"enum": ["red", "green", "blue"]}},
              "required": ["name", "admin", "color"]}
    out = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "A person."}], temperature=0.0,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
    jsonschema.validate(json.loads(out.choices[0].message.content), schema)
    assert nfe_of(out.usage) >= 1


def test_sixteen_concurrent_clients(client):
    def one(k):
        return client.completions.create(model="tiny", prompt=f"value_{k} =", max_tokens=4 + k, temperature=0.0,
                                         extra_body={"steps": 4})

    with ThreadPoolExecutor(16) as pool:
        outs = list(pool.map(one, range(16)))
    assert all(nfe_of(o.usage) == 4 and o.choices[0].finish_reason in ("length", "stop") for o in outs)


def test_disconnect_mid_stream_frees_rows(server):
    body = {"model": "tiny", "prompt": "for i in range(", "max_tokens": 48, "temperature": 0.0, "stream": True,
            "stream_options": {"include_denoising": True}}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                break  # one step arrived: leave
    deadline = time.time() + 5
    while server.stats()["running_rows"] and time.time() < deadline:
        time.sleep(0.02)
    assert server.stats()["running_rows"] == 0
    calls = server.stats()["network_calls"]
    time.sleep(0.2)
    assert server.stats()["network_calls"] == calls  # nothing is decoded for the client that left


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "sampler": "nope"}, "sampler"),
    ({"prompt": "x", "max_tokens": 10_000}, "max_tokens"),
    ({"prompt": "x", "n": MAX_BATCH + 1}, "n"),
    ({"prompt": ["a"] * (MAX_BATCH + 1)}, "prompt"),
    ({"prompt": "x", "max_tokens": 8, "steps": 9}, "steps"),
    ({"prompt": "x", "remasking": "sideways"}, "remasking"),
    ({"prompt": "x", "sampler": "first-hitting", "block_length": 4}, "block_length"),
    ({"prompt": "x", "temperature": -1}, "temperature"),
    ({"prompt": "x", "top_k_typo": 3}, "top_k_typo"),
    ({"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object",
      "patternProperties": {"a": {}}}}}}, "response_format.json_schema.schema"),
    ({"prompt": "x", "response_format": {"type": "json_object"}}, "response_format"),
])
def test_bad_requests_get_a_4xx_naming_the_field(client, body, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny", **{k: v for k, v in body.items() if k in ("prompt", "max_tokens", "n",
                                                                                         "temperature")},
                                  extra_body={k: v for k, v in body.items()
                                              if k not in ("prompt", "max_tokens", "n", "temperature")})
    assert caught.value.status_code == 400 and caught.value.body["param"] == param, caught.value.body


def test_invalid_json_and_server_survives(server, client):
    response = httpx.post(server.url + "/v1/chat/completions", content=b"{not json", timeout=10)
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    bad_messages = httpx.post(server.url + "/v1/chat/completions", json={"messages": [{"content": 3}]}, timeout=10)
    assert bad_messages.status_code == 400 and bad_messages.json()["error"]["param"] == "messages[0]"
    no_prompt = httpx.post(server.url + "/v1/completions", json={"max_tokens": 4}, timeout=10)
    assert no_prompt.status_code == 400 and no_prompt.json()["error"]["param"] == "prompt"
    assert client.completions.create(model="tiny", prompt="ok", max_tokens=2).choices[0].finish_reason


@pytest.fixture(scope="module")
def guarded_server(loaded):
    live = LiveServer(create_app(*loaded, model_name="tiny", max_batch=1, max_queue=1, api_key="secret"))
    yield live
    live.close()


def test_api_key_and_full_queue(guarded_server):
    with pytest.raises(openai.AuthenticationError):
        guarded_server.client("wrong").completions.create(model="tiny", prompt="x", max_tokens=2)
    client = guarded_server.client("secret")

    def slow(_):
        try:
            client.completions.create(model="tiny", prompt="x", max_tokens=48, temperature=0.0)
            return 200
        except openai.RateLimitError as error:
            return error.status_code

    with ThreadPoolExecutor(5) as pool:
        codes = list(pool.map(slow, range(5)))
    assert 429 in codes and 200 in codes


def test_ctrl_c_drains_running_requests(loaded):
    """Stopping the app (what uvicorn does on Ctrl-C once connections are done) lets running jobs finish."""
    live = LiveServer(create_app(*loaded, model_name="tiny"))
    results = []
    worker = threading.Thread(target=lambda: results.append(live.client().completions.create(
        model="tiny", prompt="x", max_tokens=40, temperature=0.0)))
    worker.start()
    while not live.stats()["running_rows"]:
        time.sleep(0.01)
    live.close()
    worker.join(30)
    assert results and results[0].choices[0].finish_reason in ("length", "stop")
    assert not live.app.state.serve.scheduler.thread.is_alive()


class HeadlessChromium:
    """Headless Chromium driven over its DevTools pipe (--remote-debugging-pipe: it reads commands on fd 3
    and answers on fd 4, NUL-separated JSON), so a test can wait for the page instead of guessing a
    virtual-time budget (which runs out while a streamed response is still arriving)."""

    def __init__(self):
        import os

        commands_read, self.commands = os.pipe()
        self.answers, answers_write = os.pipe()
        os.dup2(commands_read, 100)
        os.dup2(answers_write, 101)

        def on_fds_3_and_4():
            os.dup2(100, 3)
            os.dup2(101, 4)

        self.process = subprocess.Popen(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                                         "--remote-debugging-pipe", "--window-size=1000,900", "about:blank"],
                                        preexec_fn=on_fds_3_and_4, close_fds=False, stderr=subprocess.DEVNULL)
        for fd in (commands_read, answers_write, 100, 101):
            os.close(fd)
        self.buffer, self.last_id, self.session = b"", 0, None

    def call(self, method: str, **params) -> dict:
        import os

        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self.buffer:
                chunk = os.read(self.answers, 1 << 16)
                assert chunk, "chromium closed its DevTools pipe"
                self.buffer += chunk
            raw, self.buffer = self.buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self.last_id:
                assert "error" not in reply, reply
                return reply["result"]

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", url=url)["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def close(self) -> None:
        import os

        os.close(self.commands)
        os.close(self.answers)
        self.process.kill()
        self.process.wait()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_page_shows_the_canvas_denoising(server):
    """Headless Chromium runs the page's stream: its history of network calls starts with masks and ends
    with every position a token, and the status line reports the finished request."""
    browser = HeadlessChromium()
    try:
        browser.open(server.url + "/?autostart=1&max_tokens=12&steps=6&temperature=1&delay=0")
        deadline = time.time() + 30
        while "network calls" not in (browser.evaluate("document.getElementById('status').textContent") or ""):
            assert time.time() < deadline, browser.evaluate("document.getElementById('status').textContent")
            time.sleep(0.05)
        history = browser.evaluate("[...document.querySelectorAll('#history .line')].map(line => "
                                   "[...line.querySelectorAll('.tok')].map(t => t.className.split(' ')[1]))")
    finally:
        browser.close()
    assert len(history) == 6 and all(len(line) == 12 for line in history)
    assert history[0].count("mask") == 10 and history[0].count("fresh") == 2
    assert "mask" not in history[-1] and history[-1].count("old") == 10
    assert [line.count("mask") for line in history] == [10, 8, 6, 4, 2, 0]


def test_cli_bad_model_is_one_line(tmp_path, capsys):
    from mdlm.decode.serve.cli import main

    assert main(["--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mdlm-serve: error:") and "\n" not in err
    assert main(["--model", str(tmp_path), "--max-batch", "0"]) == 2
    assert "--max-batch must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_sigint_drains_a_real_server_process(tiny_run_dir):
    """Ctrl-C (SIGINT) on `mdlm-serve`: the streamed request in flight still ends with [DONE], then it exits 0."""
    import signal
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "mdlm.decode.serve.cli", "--model", str(tiny_run_dir),
                                "--port", str(port)], stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                httpx.get(url + "/health", timeout=1)
                break
            except httpx.HTTPError:
                assert time.time() < deadline and process.poll() is None, "the server did not start"
                time.sleep(0.2)
        body = {"prompt": "x", "max_tokens": 48, "temperature": 0.0, "stream": True,
                "stream_options": {"include_denoising": True}}
        lines = []
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as response:
            for line in response.iter_lines():
                if line.startswith("data:") and not lines:
                    process.send_signal(signal.SIGINT)
                lines.append(line)
        assert lines[-1] == "data: [DONE]" or "data: [DONE]" in lines
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
