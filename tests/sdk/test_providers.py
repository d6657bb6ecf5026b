"""The official OpenAI SDK against the gateway when a tier's provider speaks another wire format:
the local tier fails and the request falls back to Anthropic's Messages API (played by the fake in
that format), plain and streamed, with tool calls, usage and cost as the SDK reads them; and
embeddings through an Azure deployment."""

import json

import pytest

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]

WEATHER = dict(
    reply="Checking.",
    tool_calls=[{"id": "toolu_01A", "name": "weather", "arguments": '{"city":"Paris"}'}],
    prompt_tokens=1000,
    cached_tokens=200,
    cache_write_tokens=100,
    completion_tokens=50,
)

# claude-sonnet-4-5: 700 fresh input × $3 + 200 cache reads × $0.30 + 100 cache writes × $3.75
# + 50 output × $15 per million tokens.
COST = 0.003285


def test_fallback_to_anthropic_plain(client, fakes):
    local, api = fakes
    local.behave(fault={"kind": "status", "status": 503})
    api.behave(**WEATHER)
    raw = client.chat.completions.with_raw_response.create(
        model="claude_fallback", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS
    )
    completion = raw.parse()
    assert raw.headers["x-tierwise-tier"] == "claude"
    assert raw.headers["x-tierwise-fallback"] == "local:http_503"
    message = completion.choices[0].message
    assert message.content == "Checking."
    call = message.tool_calls[0]
    assert call.id == "toolu_01A" and call.function.name == "weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert completion.choices[0].finish_reason == "tool_calls"
    assert completion.usage.prompt_tokens == 1000
    assert completion.usage.prompt_tokens_details.cached_tokens == 200
    assert completion.usage.prompt_tokens_details.cache_write_tokens == 100
    assert float(raw.headers["x-tierwise-cost-usd"]) == pytest.approx(COST, abs=1e-12)
    sent = api.requests()[-1]
    assert sent["path"] == "/v1/messages"
    assert sent["x_api_key"] == "sk-ant-secret" and sent["anthropic_version"] == "2023-06-01"


def test_fallback_to_anthropic_streamed(client, fakes):
    local, api = fakes
    local.behave(fault={"kind": "status", "status": 503})
    api.behave(**WEATHER)
    chunks = list(
        client.chat.completions.create(
            model="claude_fallback",
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=TOOLS,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Checking."
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].id == "toolu_01A" and calls[0].function.name == "weather"
    assert json.loads("".join(tc.function.arguments or "" for tc in calls)) == {"city": "Paris"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and chunks[-1].usage is not None, "the usage chunk is the last"
    assert usage[0].prompt_tokens == 1000 and usage[0].completion_tokens == 50
    assert usage[0].model_extra["cost_usd"] == pytest.approx(COST, abs=1e-12)


def test_anthropic_overloaded_mid_stream_reaches_the_sdk_as_an_error(client, fakes):
    import openai

    local, api = fakes
    local.behave(fault={"kind": "status", "status": 503})
    api.behave(fault={"kind": "error_mid_stream", "after": 5})
    stream = client.chat.completions.create(
        model="claude_fallback", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIError, match="Overloaded"):
        for _ in stream:
            pass


def test_fallback_to_azure_plain_and_streamed(client, fakes):
    local, api = fakes
    local.behave(fault={"kind": "status", "status": 503})
    api.behave(**dict(WEATHER, cache_write_tokens=0))
    raw = client.chat.completions.with_raw_response.create(
        model="azure_fallback", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS
    )
    completion = raw.parse()
    assert raw.headers["x-tierwise-tier"] == "azure"
    assert completion.choices[0].message.tool_calls[0].id == "toolu_01A"
    # gpt-4o, not the deployment's name: 800 × $2.50 + 200 × $1.25 + 50 × $10 per million.
    assert float(raw.headers["x-tierwise-cost-usd"]) == pytest.approx(0.00275, abs=1e-12)
    sent = api.requests()[-1]
    assert sent["path"] == "/openai/deployments/gpt4o-prod/chat/completions"
    assert sent["query"] == "api-version=2024-10-21" and sent["api_key"] == "azure-secret"

    chunks = list(
        client.chat.completions.create(
            model="azure_fallback",
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=TOOLS,
            stream=True,
        )
    )
    # Azure's first chunk has no choice; an SDK user reading choices[0] of every chunk must not
    # meet it.
    assert all(c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Checking."


def test_an_azure_content_filter_refusal_reaches_the_sdk_as_a_bad_request(client, fakes):
    import openai

    local, api = fakes
    local.behave(fault={"kind": "status", "status": 503})
    api.behave(fault={"kind": "content_filter"})
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="azure_fallback", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.code == "content_filter"


def test_embeddings_fall_back_to_an_azure_deployment(client, fakes):
    local, api = fakes
    local.behave(fault={"kind": "status", "status": 503})
    api.behave(prompt_tokens=1000)
    raw = client.embeddings.with_raw_response.create(model="azure_vectors", input=["one document", "another"])
    embeddings = raw.parse()
    assert raw.headers["x-tierwise-tier"] == "azure_embed"
    assert raw.headers["x-tierwise-fallback"] == "embed_local:http_503"
    assert [e.index for e in embeddings.data] == [0, 1]
    assert len(embeddings.data[0].embedding) == 3
    assert embeddings.usage.prompt_tokens == 1000
    # Priced as the tier's base_model, text-embedding-3-large at $0.13 per million tokens.
    assert float(raw.headers["x-tierwise-cost-usd"]) == pytest.approx(0.00013, abs=1e-12)
    sent = api.requests()[-1]
    assert sent["path"] == "/openai/deployments/embed-prod/embeddings"
    assert sent["query"] == "api-version=2024-10-21" and sent["api_key"] == "azure-secret"
    assert sent["authorization"] is None
