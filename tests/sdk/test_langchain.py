"""langchain-openai with `use_responses_api=True` (it speaks only the Responses API then) against the
gateway: invoke, stream, and a tool call bound with `bind_tools`, through a chat-only tier that the
gateway translates for."""

from langchain_openai import ChatOpenAI

from conftest import CLIENT_KEY


def responses_model(gateway_url, **extra):
    return ChatOpenAI(
        model="local",
        base_url=gateway_url + "/v1",
        api_key=CLIENT_KEY,
        use_responses_api=True,
        max_retries=0,
        **extra,
    )


def test_invoke_through_the_responses_api(gateway_url, fakes):
    local, _api = fakes
    local.behave(reply="Hello from the fake upstream.")
    message = responses_model(gateway_url).invoke("Hi there")
    assert message.text == "Hello from the fake upstream."
    assert message.id.startswith("resp_") or message.response_metadata["id"].startswith("resp_")
    assert message.usage_metadata["input_tokens"] == 20
    assert message.usage_metadata["output_tokens"] == 5
    # The chat-only tier got a chat completion; langchain spoke Responses to the gateway.
    assert local.requests()[-1]["path"] == "/v1/chat/completions"


def test_stream_through_the_responses_api(gateway_url, fakes):
    local, _api = fakes
    local.behave(reply="one two three four")
    chunks = list(responses_model(gateway_url).stream("Count to four"))
    text = "".join(chunk.text for chunk in chunks)
    assert text == "one two three four"
    assert len([chunk for chunk in chunks if chunk.text]) > 1, "streamed in pieces"
    usage = [chunk.usage_metadata for chunk in chunks if chunk.usage_metadata]
    assert usage and usage[-1]["output_tokens"] == 5


def test_a_bound_tool_is_called_through_the_responses_api(gateway_url, fakes):
    local, _api = fakes
    local.behave(reply="", tool_calls=[{"id": "call_7", "name": "weather", "arguments": '{"city": "Paris"}'}])

    def weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    message = responses_model(gateway_url).bind_tools([weather]).invoke("Weather in Paris?")
    assert [(call["name"], call["args"], call["id"]) for call in message.tool_calls] == [
        ("weather", {"city": "Paris"}, "call_7")
    ]
    sent = local.requests()[-1]["body"]
    assert sent["tools"][0]["function"]["name"] == "weather"
