import socket
import threading

import pytest
from pydantic import SecretStr

from core.generators.base import GenerationParams, PromptSpec, finish_of
from core.generators.errors import GeneratorError
from core.generators.estimate import utf8_bytes_estimate
from core.generators.openai_compat import OpenAIGenerator, redact_url
from core.types import Source
from tests.fakes.openai_server import FakeOpenAIServer, Reply, error_reply

KEY = "sk-test-SECRET-123456"
SPEC = PromptSpec(
    system="Be concise.",
    question="What is XSS?",
    history=(),
    passages=(Source(index=1, ref="CWE-79", source="cwe", title="XSS", text="Script injection."),),
)
PARAMS = GenerationParams(max_new_tokens=64, temperature=0.2, seed=7)


@pytest.fixture
def server():
    with FakeOpenAIServer(api_key=KEY) as s:
        yield s


@pytest.fixture
def gen(server: FakeOpenAIServer):
    g = OpenAIGenerator(server.base_url, SecretStr(KEY), "ghostlm", 4096, timeout=5)
    yield g
    g.close()


def test_streaming_pieces_join_to_the_canned_reply(server, gen):
    server.set_reply(Reply("XSS lets attackers run script in a victim's browser [1]. Café ☕ too."))
    pieces, reason = finish_of(gen.stream(SPEC, PARAMS, lambda: False))
    assert len(pieces) > 3
    assert "".join(pieces) == "XSS lets attackers run script in a victim's browser [1]. Café ☕ too."
    assert reason == "stop"
    req = server.requests[-1]
    assert req.path == "/v1/chat/completions" and req.stream
    assert req.headers["Authorization"] == f"Bearer {KEY}"
    assert req.body["model"] == "ghostlm" and req.body["max_tokens"] == 64 and req.body["seed"] == 7
    assert req.messages[0] == {"role": "system", "content": "Be concise."}
    assert req.messages[-1]["role"] == "user" and req.messages[-1]["content"].endswith("What is XSS?")
    assert "[1] XSS (CWE-79)" in req.messages[-1]["content"]


@pytest.mark.parametrize(
    "status, words",
    [
        (401, "rejected the API key"),
        (403, "rejected the API key"),
        (429, "rate limiting"),
        (500, "failed (HTTP 500)"),
        (503, "failed (HTTP 503)"),
        (400, "refused the request"),
    ],
)
def test_http_errors_are_clear_and_never_contain_the_key(server, gen, status, words):
    # A server that echoes the key back in its error message must still not leak it.
    server.set_reply(error_reply(status, f"bad thing with key {KEY}", headers={"Retry-After": "3"}))
    with pytest.raises(GeneratorError) as info:
        list(gen.stream(SPEC, PARAMS, lambda: False))
    msg = str(info.value)
    assert words in msg and "127.0.0.1" in msg and KEY not in msg and "***" in msg
    assert KEY not in repr(info.value) and info.value.__cause__ is None
    if status == 429:
        assert "retry after 3 s" in msg


def test_wrong_key_gets_401_message(server):
    g = OpenAIGenerator(server.base_url, "sk-wrong-key-abc", "ghostlm", 4096, timeout=5)
    with pytest.raises(GeneratorError, match="rejected the API key") as info:
        g.check()
    assert "sk-wrong-key-abc" not in str(info.value)
    g.close()


def test_should_stop_closes_the_stream_early(server, gen):
    server.set_reply(Reply(chunks=[f"w{i} " for i in range(200)], chunk_delay=0.02))
    got: list[str] = []
    stream = gen.stream(SPEC, PARAMS, lambda: len(got) >= 3)
    while True:  # not finish_of: should_stop watches `got`, so pieces must land there as they arrive
        try:
            got.append(next(stream))
        except StopIteration as end:
            reason = end.value
            break
    assert got == ["w0 ", "w1 ", "w2 "] and reason == "cancelled"
    assert server.wait_for_disconnect()  # the connection was dropped, the server did not finish the reply


def test_consumer_closing_the_iterator_drops_the_connection(server, gen):
    server.set_reply(Reply(chunks=[f"w{i} " for i in range(200)], chunk_delay=0.02))
    it = gen.stream(SPEC, PARAMS, lambda: False)
    assert next(it) == "w0 "
    it.close()
    assert server.wait_for_disconnect()


def test_broken_json_in_stream_is_an_error(server, gen):
    server.set_reply(Reply("never", broken_json=True))
    with pytest.raises(GeneratorError, match="invalid stream event"):
        list(gen.stream(SPEC, PARAMS, lambda: False))


def test_slow_server_times_out_with_clear_message(server):
    server.set_reply(Reply("late", delay=2.0))
    g = OpenAIGenerator(server.base_url, KEY, "ghostlm", 4096, timeout=0.3)
    with pytest.raises(GeneratorError, match=r"did not answer within 0.3 s"):
        list(g.stream(SPEC, PARAMS, lambda: False))
    g.close()


def test_unreachable_server():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    g = OpenAIGenerator(f"http://user:{KEY}@127.0.0.1:{port}/v1?token={KEY}", KEY, "m", 4096, timeout=2)
    for call in (g.check, lambda: list(g.stream(SPEC, PARAMS, lambda: False))):
        with pytest.raises(
            GeneratorError, match=r"cannot reach the model server at http://127.0.0.1"
        ) as info:
            call()
        assert KEY not in str(info.value)
    g.close()


def test_check_lists_models(server, gen):
    assert gen.check() == ["ghostlm"]
    assert server.requests[-1].path == "/v1/models"


def test_complete_and_logprobs(server, gen):
    server.set_reply(
        Reply(
            "B",
            logprobs=[
                {
                    "token": "B",
                    "logprob": -0.1,
                    "top_logprobs": [{"token": "B", "logprob": -0.1}, {"token": "A", "logprob": -2.5}],
                }
            ],
        )
    )
    msgs = [{"role": "user", "content": "A or B?"}]
    assert gen.complete(msgs, temperature=0) == "B"
    assert gen.next_token_logprobs(msgs, top_logprobs=2) == {"B": -0.1, "A": -2.5}
    assert server.requests[-1].body["logprobs"] is True and server.requests[-1].body["max_tokens"] == 1
    server.set_reply(Reply("B"))  # a server without logprobs support
    with pytest.raises(GeneratorError, match="does not return logprobs"):
        gen.next_token_logprobs(msgs)
    server.set_reply(Reply(broken_json=True))
    with pytest.raises(GeneratorError, match="invalid JSON"):
        gen.complete(msgs)


def test_token_counts_are_conservative_estimates(gen):
    if not gen.exact_counts:
        assert gen.count_tokens("abcdef") == 2 == utf8_bytes_estimate("abcdef")
        assert gen.count_tokens("日本") == 2  # 6 UTF-8 bytes
    n = gen.prompt_tokens(SPEC)
    assert n > sum(gen.count_tokens(m) for m in ("Be concise.", "What is XSS?"))


def test_generator_is_usable_from_a_worker_thread(server, gen):
    server.set_reply(Reply("from a thread"))
    out: list[str] = []
    t = threading.Thread(target=lambda: out.extend(gen.stream(SPEC, PARAMS, lambda: False)))
    t.start()
    t.join(10)
    assert "".join(out) == "from a thread"


def test_redact_url():
    assert redact_url("https://u:p@host:8080/v1?key=abc") == "https://host:8080/v1"


async def test_streams_from_a_worker_thread_inside_an_event_loop(server, gen):
    import asyncio

    server.set_reply(Reply("async world"))
    pieces = await asyncio.to_thread(lambda: list(gen.stream(SPEC, PARAMS, lambda: False)))
    assert "".join(pieces) == "async world"


def test_length_finish_reason_is_reported(server, gen):
    server.set_reply(Reply("cut short", finish_reason="length"))
    pieces, reason = finish_of(gen.stream(SPEC, PARAMS, lambda: False))
    assert "".join(pieces) == "cut short"
    assert reason == "length"
