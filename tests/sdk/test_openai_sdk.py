"""The official OpenAI Python SDK, unchanged but for base_url, talking to tierwise."""

import base64

import openai
import pytest

from conftest import CLIENT_KEY, LIMITED_KEY, LOCAL_KEY


def test_chat_completion_through_a_route(client, fakes):
    local, _ = fakes
    raw = client.chat.completions.with_raw_response.create(
        model="classification", messages=[{"role": "user", "content": "My card was charged twice"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from the fake upstream."
    assert completion.usage.prompt_tokens == 20
    assert raw.headers["x-tierwise-route"] == "classification"
    assert raw.headers["x-tierwise-tier"] == "local"
    assert raw.headers["x-tierwise-request-id"]
    sent = local.requests()[-1]
    assert sent["body"]["model"] == "mistral-7b"
    assert sent["authorization"] == f"Bearer {LOCAL_KEY}"


def test_label_contract_reaches_the_sdk_normalized(client, fakes):
    local, _ = fakes
    local.behave(reply="The category is: Billing.")
    raw = client.chat.completions.with_raw_response.create(
        model="classification", messages=[{"role": "user", "content": "refund please"}]
    )
    assert raw.parse().choices[0].message.content == "billing"
    assert raw.headers["x-tierwise-contract"] == "normalized"


def test_streaming_with_usage(client, fakes):
    stream = client.chat.completions.create(
        model="classification",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the fake upstream."
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and usage[0].completion_tokens == 5


def test_a_streams_usage_carries_the_cost_the_ledger_stores(client, fakes):
    raw = client.chat.completions.with_raw_response.create(
        model="api_only",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [c.usage for c in raw.parse() if c.usage is not None]
    # gpt-4o-mini: 20 prompt tokens at $0.15 and 5 completion tokens at $0.60 per million.
    assert len(usage) == 1 and usage[0].model_extra["cost_usd"] == 0.000006


def test_streaming_without_usage_sees_no_usage_chunk(client, fakes):
    chunks = list(
        client.chat.completions.create(
            model="classification", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert chunks and all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


def test_embeddings_default_base64_and_float(client, fakes):
    result = client.embeddings.create(model="embed", input=["one", "two"])
    assert len(result.data) == 2
    assert result.data[0].embedding == pytest.approx([0.25, -0.5, 0.125])
    floats = client.embeddings.create(model="embed", input="one", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx([0.25, -0.5, 0.125])


def test_models_list(client):
    ids = {model.id for model in client.models.list()}
    assert {"classification", "embed", "local", "api_fast", "gpt-4o-mini"} <= ids


def test_fallback_is_an_ordinary_success(client, fakes):
    local, _ = fakes
    local.behave(fault={"kind": "status", "status": 503})
    raw = client.chat.completions.with_raw_response.create(
        model="classification", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-tierwise-tier"] == "api_fast"
    assert raw.headers["x-tierwise-fallback"] == "local:http_503"

    local.behave(fault={"kind": "cut_before_first_chunk"})
    _, api = fakes
    api_calls = len(api.requests())
    raw = client.chat.completions.with_raw_response.create(
        model="classification", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert raw.headers["x-tierwise-tier"] == "api_fast"
    assert raw.headers["x-tierwise-fallback"] == "local:stream_broken"
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text == "Hello from the fake upstream."
    assert len(api.requests()) == api_calls + 1


def test_bad_request_error(client):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="classification", messages=[])
    assert raised.value.body["param"] == "messages"


def test_authentication_error(gateway_url):
    wrong = openai.OpenAI(base_url=gateway_url + "/v1", api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def test_not_found_error_for_an_unknown_model(client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.code == "model_not_found"
    assert "classification" in raised.value.message


def test_request_too_large(client):
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model="classification", messages=[{"role": "user", "content": "x" * 200_000}])
    assert raised.value.status_code == 413


def test_upstream_down_is_an_internal_server_error(client, fakes):
    _, api = fakes
    api.behave(fault={"kind": "status", "status": 500})
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model="api_only", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 502
    assert "api_fast" in raised.value.message
    assert "sk-api-secret" not in raised.value.message


def test_upstream_rate_limit_is_a_rate_limit_error(client, fakes):
    _, api = fakes
    api.behave(fault={"kind": "status", "status": 429, "retry_after": 3})
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model="rate_limited", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.response.headers["retry-after"] == "3"
    # The tier now rests: the next call is refused the same way without reaching the API.
    calls = len(api.requests())
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model="rate_limited", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.response.headers["x-tierwise-fallback"] == "api_limited:rate_limited"
    assert len(api.requests()) == calls


def test_timeout_is_a_gateway_timeout(client, fakes):
    _, api = fakes
    api.behave(fault={"kind": "hang"})
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model="api_only", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 504


def test_upstream_client_error_passes_back(client, fakes):
    local, _ = fakes
    local.behave(fault={"kind": "status", "status": 422, "body": '{"error": {"message": "bad schema", "type": "invalid_request_error", "param": null, "code": null}}'})
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        client.chat.completions.create(model="classification", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.body["message"] == "bad schema"


VLLM_TOO_LONG = (
    '{"object": "error", "message": "This model\'s maximum context length is 8192 tokens. However, you '
    'requested 12000 tokens (11000 in the messages, 1000 in the completion). Please reduce the length of '
    'the messages or completion.", "type": "BadRequestError", "param": null, "code": 400}'
)


def test_a_request_too_long_for_the_local_model_is_an_ordinary_answer(client, fakes):
    local, api = fakes
    local.behave(fault={"kind": "status", "status": 400, "body": VLLM_TOO_LONG})
    raw = client.chat.completions.with_raw_response.create(
        model="classification", messages=[{"role": "user", "content": "a long document"}]
    )
    assert raw.parse().choices[0].message.content == "Hello from the fake upstream."
    assert raw.headers["x-tierwise-fallback"] == "local:context_too_long"


def test_a_request_no_tier_can_fit_is_context_length_exceeded(client, fakes):
    local, api = fakes
    for fake in (local, api):
        fake.behave(fault={"kind": "status", "status": 400, "body": VLLM_TOO_LONG})
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model="classification", messages=[{"role": "user", "content": "a long document"}]
        )
    assert raised.value.code == "context_length_exceeded"


def test_a_key_over_its_rpm_raises_rate_limit_error_with_openais_headers(gateway_url, fakes):
    limited = openai.OpenAI(base_url=gateway_url + "/v1", api_key=LIMITED_KEY, max_retries=0)
    ask = dict(model="classification", messages=[{"role": "user", "content": "hi"}])
    first = limited.chat.completions.with_raw_response.create(**ask)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    limited.chat.completions.create(**ask)
    with pytest.raises(openai.RateLimitError) as raised:
        limited.chat.completions.create(**ask)
    assert raised.value.code == "rate_limit_exceeded"
    assert raised.value.type == "requests"
    headers = raised.value.response.headers
    assert int(headers["retry-after"]) >= 1
    assert headers["x-ratelimit-remaining-requests"] == "0"


def test_a_spent_budget_raises_rate_limit_error_with_insufficient_quota(gateway_url, fakes):
    """OpenAI's own answer to an exhausted quota, so an application handles a spent budget as it
    handles OpenAI's: RateLimitError, code and type insufficient_quota, and no retry (the SDK reads
    x-should-retry before the status that would have it retry)."""
    _, api = fakes
    retrying = openai.OpenAI(base_url=gateway_url + "/v1", api_key=CLIENT_KEY, max_retries=2)
    before = len(api.requests())
    with pytest.raises(openai.RateLimitError) as raised:
        retrying.chat.completions.create(
            model="budget_spent", messages=[{"role": "user", "content": "hi"}], max_tokens=10
        )
    assert raised.value.code == "insufficient_quota"
    assert raised.value.type == "insufficient_quota"
    assert "budget" in raised.value.message
    assert raised.value.response.headers["x-should-retry"] == "false"
    assert len(api.requests()) == before, "no tier was called"



def test_a_cached_answer_reaches_the_sdk_as_an_ordinary_answer_plain_and_streamed(client, fakes):
    _, api = fakes
    api.behave(reply="Kept for an hour.")
    messages = [{"role": "user", "content": "what does the cache keep?"}]
    calls = len(api.requests())
    first = client.chat.completions.with_raw_response.create(model="cached", messages=messages)
    second = client.chat.completions.with_raw_response.create(model="cached", messages=messages)
    assert first.headers["x-tierwise-cache"] == "miss"
    assert second.headers["x-tierwise-cache"] == "hit"
    assert second.parse().choices[0].message.content == "Kept for an hour."
    assert second.parse().model_dump() == first.parse().model_dump()
    assert len(api.requests()) == calls + 1

    def streamed():
        stream = client.chat.completions.create(
            model="cached", messages=messages, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage = [c.usage for c in chunks if c.usage is not None]
        return text, usage

    text, usage = streamed()
    again, usage_again = streamed()
    assert text == again == "Kept for an hour."
    assert len(usage_again) == 1 and usage_again[0].completion_tokens == usage[0].completion_tokens
    # A hit costs nothing.
    assert usage_again[0].model_extra["cost_usd"] == 0
    assert len(api.requests()) == calls + 2
