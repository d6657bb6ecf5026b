"""The OpenAI SDK's Responses API (`client.responses.create`) against tierwise, which serves it
through chat completions on tiers that speak only chat: plain, streamed, tools, structured output,
a fallback, a conversation by `previous_response_id` that falls back on its second turn, retrieve and
delete, and the 400 for state tierwise never keeps."""

import json

import openai
import pytest


def test_a_plain_response(client, fakes):
    local, _ = fakes
    raw = client.responses.with_raw_response.create(
        model="classification", instructions="Be brief.", input="My card was charged twice"
    )
    response = raw.parse()
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.output_text == "Hello from the fake upstream."
    assert response.usage.input_tokens == 20 and response.usage.output_tokens == 5
    assert raw.headers["x-tierwise-tier"] == "local"
    sent = local.requests()[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"]["messages"][0] == {"role": "system", "content": "Be brief."}


def test_a_streamed_response(client, fakes):
    events = list(client.responses.create(model="classification", input="hi", stream=True))
    types = [event.type for event in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "Hello from the fake upstream."
    completed = events[-1].response
    assert completed.id == events[0].response.id
    assert completed.output_text == text
    assert completed.usage.output_tokens == 5
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_the_streaming_helper_assembles_the_final_response(client, fakes):
    with client.responses.stream(model="classification", input="hi") as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert final.output_text == "Hello from the fake upstream."


def test_tools_and_a_second_turn_with_the_calls_output(client, fakes):
    local, _ = fakes
    local.behave(
        reply="", tool_calls=[{"id": "call_1", "name": "weather", "arguments": '{"city": "Paris"}'}]
    )
    tools = [
        {
            "type": "function",
            "name": "weather",
            "description": "The weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    response = client.responses.create(model="classification", input="Weather in Paris?", tools=tools)
    call = response.output[0]
    assert call.type == "function_call"
    assert (call.call_id, call.name, json.loads(call.arguments)) == ("call_1", "weather", {"city": "Paris"})

    local.behave(reply="It is sunny in Paris.")
    second = client.responses.create(
        model="classification",
        tools=tools,
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
    )
    assert second.output_text == "It is sunny in Paris."
    messages = local.requests()[-1]["body"]["messages"]
    assert messages[1]["tool_calls"][0]["id"] == "call_1"
    assert messages[2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}


def test_streamed_tool_calls(client, fakes):
    local, _ = fakes
    local.behave(reply="", tool_calls=[{"id": "call_1", "name": "weather", "arguments": '{"city": "Paris"}'}])
    events = list(
        client.responses.create(
            model="classification",
            input="Weather in Paris?",
            tools=[{"type": "function", "name": "weather", "parameters": {"type": "object"}}],
            stream=True,
        )
    )
    arguments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert json.loads(arguments) == {"city": "Paris"}
    done = [e for e in events if e.type == "response.output_item.done"]
    assert done[0].item.type == "function_call" and done[0].item.arguments == arguments


def test_structured_output_goes_as_a_json_schema_response_format(client, fakes):
    local, _ = fakes
    local.behave(reply='{"label": "billing"}')
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string"}},
        "required": ["label"],
        "additionalProperties": False,
    }
    response = client.responses.create(
        model="classification",
        input="My card was charged twice",
        text={"format": {"type": "json_schema", "name": "ticket", "schema": schema, "strict": True}},
    )
    assert json.loads(response.output_text) == {"label": "billing"}
    sent = local.requests()[-1]["body"]["response_format"]
    assert sent == {"type": "json_schema", "json_schema": {"name": "ticket", "schema": schema, "strict": True}}


def test_a_tier_that_fails_falls_back_and_the_answer_is_still_a_response(client, fakes):
    local, _ = fakes
    local.behave(fault={"kind": "status", "status": 503})
    raw = client.responses.with_raw_response.create(model="classification", input="hi")
    assert raw.headers["x-tierwise-tier"] == "api_fast"
    assert raw.headers["x-tierwise-fallback"] == "local:http_503"
    assert raw.parse().output_text == "Hello from the fake upstream."


def test_a_broken_stream_ends_with_response_failed(client, fakes):
    local, _ = fakes
    local.behave(fault={"kind": "cut_after_chunks", "chunks": 3})
    events = list(client.responses.create(model="classification", input="hi", stream=True))
    assert events[-1].type == "response.failed"
    assert events[-1].response.id == events[0].response.id
    assert events[-1].response.error.code == "server_error"


def test_state_tierwise_never_keeps_is_a_400_and_an_unknown_id_openais_400(client, fakes):
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="classification", input="hi", background=True)
    assert refused.value.param == "background"
    with pytest.raises(openai.BadRequestError) as unknown:
        client.responses.create(model="classification", input="hi", previous_response_id="resp_unknown")
    assert unknown.value.code == "previous_response_not_found"
    assert unknown.value.param == "previous_response_id"
    assert "Previous response with id 'resp_unknown' not found." in str(unknown.value)


def test_a_conversation_by_previous_response_id_falls_back_on_its_second_turn(client, fakes):
    local, api = fakes
    first = client.responses.create(model="native_first", input="My name is Ada.")
    assert first.id.startswith("resp_") and first.id != "resp_fake", "kept under the gateway's id"
    assert api.requests()[-1]["body"]["store"] is False, "the gateway keeps it, not the upstream"

    api.behave(fault={"kind": "status", "status": 503})
    raw = client.responses.with_raw_response.create(
        model="native_first", previous_response_id=first.id, input="What is my name?"
    )
    assert raw.headers["x-tierwise-tier"] == "local"
    assert raw.headers["x-tierwise-fallback"] == "api_native:http_503"
    second = raw.parse()
    assert second.previous_response_id == first.id and second.store is True
    messages = local.requests()[-1]["body"]["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "My name is Ada."),
        ("assistant", "Hello from the fake upstream."),
        ("user", "What is my name?"),
    ]

    # A third turn, streamed, goes on from the local tier's answer.
    events = list(
        client.responses.create(
            model="classification", previous_response_id=second.id, input="Thanks.", stream=True
        )
    )
    third = events[-1].response
    assert events[-1].type == "response.completed" and third.previous_response_id == second.id
    assert len(local.requests()[-1]["body"]["messages"]) == 5
    # responses.input_items.list: what the third turn answered, the turns before it included.
    items = client.responses.input_items.list(third.id, order="asc")
    assert [(item.role, item.content[0].text) for item in items] == [
        ("user", "My name is Ada."),
        ("assistant", "Hello from the fake upstream."),
        ("user", "What is my name?"),
        ("assistant", "Hello from the fake upstream."),
        ("user", "Thanks."),
    ]

    kept = client.responses.retrieve(third.id)
    assert (kept.id, kept.output_text, kept.previous_response_id) == (third.id, third.output_text, second.id)
    client.responses.delete(third.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(third.id)
    with pytest.raises(openai.BadRequestError) as gone:
        client.responses.create(model="classification", previous_response_id=third.id, input="Still there?")
    assert gone.value.code == "previous_response_not_found"


def test_a_passed_through_stream_says_the_gateway_keeps_it(client, fakes):
    _, api = fakes
    events = list(client.responses.create(model="native_first", input="hi", stream=True))
    assert api.requests()[-1]["body"]["store"] is False
    objects = [event.response for event in events if getattr(event, "response", None) is not None]
    assert [event.type for event in events if getattr(event, "response", None) is not None] == [
        "response.created", "response.in_progress", "response.completed"
    ]
    assert {(o.id, o.store) for o in objects} == {(objects[0].id, True)}
    assert objects[0].id != "resp_fake"
    assert client.responses.retrieve(objects[0].id).store is True


def test_a_server_that_serves_responses_gets_them_passed_through(client, fakes):
    _, api = fakes
    response = client.responses.create(model="native_first", input="hi")
    assert response.id.startswith("resp_") and response.id != "resp_fake", "kept: the gateway's id"
    assert response.output_text == "Hello from the fake upstream."
    sent = api.requests()[-1]
    assert sent["path"] == "/v1/responses"
    assert sent["body"]["store"] is False and sent["body"]["model"] == "gpt-4o-mini"

    events = list(client.responses.create(model="native_first", input="hi", stream=True))
    assert events[0].response.id != "resp_fake"
    assert events[-1].type == "response.completed" and events[-1].response.id == events[0].response.id
    assert events[-1].response.usage.output_tokens == 5


def test_a_fallback_from_a_passed_through_tier_lands_translated(client, fakes):
    local, api = fakes
    api.behave(fault={"kind": "status", "status": 503})
    raw = client.responses.with_raw_response.create(model="native_first", input="hi")
    assert raw.headers["x-tierwise-tier"] == "local"
    assert raw.headers["x-tierwise-fallback"] == "api_native:http_503"
    response = raw.parse()
    assert response.id.startswith("resp_") and response.id != "resp_fake"
    assert local.requests()[-1]["path"] == "/v1/chat/completions"
