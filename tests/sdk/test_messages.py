"""The official `anthropic` Python SDK against tierwise's `/v1/messages`: served through chat
completions on chat tiers (plain, `messages.stream`, `stream=True`, tools with a `tool_result`
turn, interleaved parallel tool calls), passed through to an Anthropic tier (with the client's
betas), `count_tokens`, `models.list`, and errors raised as the SDK's own exception classes
(overload as `OverloadedError`, retried)."""

import anthropic
import pytest

from conftest import CLIENT_KEY


@pytest.fixture
def claude(gateway_url):
    # The SDK sends the key as `x-api-key` and adds `/v1/messages` to the base URL itself.
    return anthropic.Anthropic(base_url=gateway_url, api_key=CLIENT_KEY, max_retries=0)


HI = [{"role": "user", "content": "My card was charged twice"}]


def test_a_plain_message(claude, fakes):
    local, _ = fakes
    raw = claude.messages.with_raw_response.create(
        model="classification", max_tokens=64, system="Be brief.", messages=HI
    )
    message = raw.parse()
    assert message.id.startswith("msg_")
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text"
    assert message.content[0].text == "Hello from the fake upstream."
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (20, 5)
    assert raw.headers["x-tierwise-tier"] == "local"
    sent = local.requests()[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["body"]["max_tokens"] == 64


def test_the_streaming_helper_assembles_the_final_message(claude, fakes):
    with claude.messages.stream(model="classification", max_tokens=64, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello from the fake upstream."
    assert final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 5


def test_stream_true_yields_anthropics_events_in_order(claude, fakes):
    events = list(claude.messages.create(model="classification", max_tokens=64, messages=HI, stream=True))
    types = [event.type for event in events]
    assert types[:3] == ["message_start", "content_block_start", "content_block_delta"]
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert events[0].message.id.startswith("msg_")
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == "Hello from the fake upstream."
    delta = events[-2]
    assert delta.delta.stop_reason == "end_turn"
    assert delta.usage.output_tokens == 5


def test_tools_and_a_second_turn_with_the_tool_result(claude, fakes):
    local, _ = fakes
    local.behave(reply="", tool_calls=[{"id": "call_1", "name": "weather", "arguments": '{"city": "Paris"}'}])
    tools = [
        {
            "name": "weather",
            "description": "The weather in a city.",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    first = claude.messages.create(
        model="classification", max_tokens=64, tools=tools, messages=[{"role": "user", "content": "Weather in Paris?"}]
    )
    assert first.stop_reason == "tool_use"
    use = first.content[0]
    assert (use.type, use.id, use.name, use.input) == ("tool_use", "call_1", "weather", {"city": "Paris"})

    local.behave(reply="It is sunny in Paris.")
    second = claude.messages.create(
        model="classification",
        max_tokens=64,
        tools=tools,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": first.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]},
        ],
    )
    assert second.content[0].text == "It is sunny in Paris."
    sent = local.requests()[-1]["body"]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "call_1"
    assert sent[2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}

    local.behave(reply="", tool_calls=[{"id": "call_2", "name": "weather", "arguments": '{"city": "Oslo"}'}])
    with claude.messages.stream(
        model="classification", max_tokens=64, tools=tools, messages=[{"role": "user", "content": "Weather?"}]
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert (final.content[0].id, final.content[0].input) == ("call_2", {"city": "Oslo"})


def test_an_anthropic_tier_answers_as_it_came(claude, fakes):
    _, api = fakes
    message = claude.messages.create(model="claude_first", max_tokens=64, messages=HI)
    assert message.id == "msg_fake"
    assert api.requests()[-1]["path"] == "/v1/messages"
    with claude.messages.stream(model="claude_first", max_tokens=64, messages=HI) as stream:
        final = stream.get_final_message()
    assert final.id == "msg_fake"
    assert final.usage.output_tokens == 5


def test_count_tokens(claude, fakes):
    counted = claude.messages.count_tokens(model="classification", messages=HI)
    assert counted.input_tokens > 0
    longer = claude.messages.count_tokens(model="classification", system="Answer at length. " * 20, messages=HI)
    assert longer.input_tokens > counted.input_tokens


def test_count_tokens_asks_an_anthropic_tier_and_raises_its_refusal(claude, fakes):
    _, api = fakes
    api.behave(prompt_tokens=321)
    raw = claude.messages.with_raw_response.count_tokens(model="claude_first", messages=HI)
    assert raw.parse().input_tokens == 321
    assert raw.headers["x-tierwise-count"] == "provider"
    asked = api.requests()[-1]
    assert asked["path"] == "/v1/messages/count_tokens"
    assert "max_tokens" not in asked["body"]
    api.behave(fault={"kind": "status", "status": 400})
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.count_tokens(model="claude_first", messages=HI)
    # Anthropic down: the gateway's estimate answers.
    api.behave(fault={"kind": "status", "status": 500})
    raw = claude.messages.with_raw_response.count_tokens(model="claude_first", messages=HI)
    assert raw.parse().input_tokens > 0
    assert raw.headers["x-tierwise-count"] == "estimate"


def test_errors_are_the_sdks_own_exceptions(claude, fakes, gateway_url):
    with pytest.raises(anthropic.NotFoundError) as refused:
        claude.messages.create(model="no-such-model", max_tokens=9, messages=HI)
    assert refused.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as refused:
        claude.messages.create(model="classification", max_tokens=9, messages=HI, extra_body={"logprobs": True})
    assert "logprobs" in refused.value.message
    wrong = anthropic.Anthropic(base_url=gateway_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.create(model="classification", max_tokens=9, messages=HI)
    local, api = fakes
    local.behave(fault={"kind": "status", "status": 503})
    api.behave(fault={"kind": "status", "status": 503})
    with pytest.raises(anthropic.OverloadedError) as failed:
        claude.messages.create(model="classification", max_tokens=9, messages=HI)
    assert failed.value.body["error"]["type"] == "overloaded_error"


TOOLS = [
    {
        "name": "weather",
        "description": "The weather in a city.",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]


def test_an_anthropic_tiers_overload_is_the_sdks_overloaded_error_and_retried(fakes, gateway_url):
    _, api = fakes
    api.behave(fault={"kind": "status", "status": 529})
    before = len(api.requests())
    retrying = anthropic.Anthropic(base_url=gateway_url, api_key=CLIENT_KEY, max_retries=1)
    with pytest.raises(anthropic.OverloadedError) as failed:
        retrying.with_options(timeout=20).messages.create(model="claude", max_tokens=9, messages=HI)
    assert failed.value.status_code == 529
    assert failed.value.body["error"]["type"] == "overloaded_error"
    # The SDK retried the 529 once: two calls reached the Anthropic tier.
    assert len(api.requests()) - before == 2


def test_betas_reach_an_anthropic_tier(claude, fakes):
    _, api = fakes
    message = claude.beta.messages.create(
        model="claude_first", max_tokens=9, messages=HI, betas=["prompt-caching-2024-07-31", "context-1m-2025-08-07"]
    )
    assert message.id == "msg_fake"
    sent = api.requests()[-1]
    assert sent["path"] == "/v1/messages"
    assert sent["anthropic_beta"] == ["prompt-caching-2024-07-31,context-1m-2025-08-07"]
    # The version the SDK was written for, over the provider's configured one.
    assert sent["anthropic_version"] == claude.default_headers["anthropic-version"]
    assert sent["x_api_key"] == "sk-ant-secret"


def test_interleaved_parallel_tool_calls_assemble_whole(claude, fakes):
    local, _ = fakes
    local.behave(
        reply="",
        interleave_tool_calls=True,
        tool_calls=[
            {"id": "call_a", "name": "weather", "arguments": '{"city": "Oslo"}'},
            {"id": "call_b", "name": "weather", "arguments": '{"city": "Lima"}'},
        ],
    )
    with claude.messages.stream(model="classification", max_tokens=64, tools=TOOLS, messages=HI) as stream:
        final = stream.get_final_message()
    assert [(block.id, block.input) for block in final.content] == [
        ("call_a", {"city": "Oslo"}),
        ("call_b", {"city": "Lima"}),
    ]


def test_a_translated_streams_usage_starts_estimated_and_ends_the_upstreams(claude, fakes):
    estimate = claude.messages.count_tokens(model="classification", messages=HI).input_tokens
    events = list(claude.messages.create(model="classification", max_tokens=64, messages=HI, stream=True))
    assert events[0].message.usage.input_tokens == estimate
    with claude.messages.stream(model="classification", max_tokens=64, messages=HI) as stream:
        final = stream.get_final_message()
    assert (final.usage.input_tokens, final.usage.output_tokens) == (20, 5)


def test_models_are_listed_in_anthropics_shape(claude, fakes):
    models = list(claude.models.list())
    ids = [model.id for model in models]
    assert "classification" in ids and "claude_first" in ids
    assert all(model.type == "model" for model in models)
    one = claude.models.retrieve("classification")
    assert (one.id, one.type) == ("classification", "model")
    with pytest.raises(anthropic.NotFoundError):
        claude.models.retrieve("no-such-model")


def test_models_are_paged_as_the_sdk_pages_them(claude, fakes):
    """`limit`, `after_id` and `before_id` as Anthropic's API takes them: the SDK's auto-paging lists
    every model once whatever the page size, a page says where it lies and whether more follow,
    paging back from a model lists those before it, and a limit out of range is the SDK's
    BadRequestError."""
    everything = [model.id for model in claude.models.list(limit=1000)]
    assert len(everything) > 4
    assert [model.id for model in claude.models.list(limit=2)] == everything
    assert [model.id for model in claude.models.list()] == everything
    page = claude.models.list(limit=2)
    assert (len(page.data), page.has_more, page.first_id, page.last_id) == (
        2,
        True,
        everything[0],
        everything[1],
    )
    back = [model.id for model in claude.models.list(limit=2, before_id=everything[-1])]
    assert sorted(back, key=everything.index) == everything[:-1]
    assert len(back) == len(everything) - 1
    with pytest.raises(anthropic.BadRequestError, match="limit"):
        claude.models.list(limit=1001)
    with pytest.raises(anthropic.BadRequestError, match="after_id"):
        claude.models.list(after_id="no-such-model")
