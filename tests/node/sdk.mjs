// The official OpenAI Node SDK against the tierwise binary: `responses.create` plain, streamed,
// with tools and with structured output (text.format json_schema), a two-turn conversation by
// `previous_response_id` whose second turn falls back to another tier, and chat completions. The
// gateway and its fake upstreams are started by tests/sdk/test_node.py, which passes their
// addresses in the environment and runs this file with `node --test`.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import OpenAI from 'openai';

const client = new OpenAI({
  baseURL: process.env.TIERWISE_URL + '/v1',
  apiKey: process.env.TIERWISE_KEY,
  maxRetries: 0,
});
const local = process.env.FAKE_LOCAL_URL;
const api = process.env.FAKE_API_URL;

async function behave(behavior, fake = local) {
  const answer = await fetch(fake + '/_fake/behavior', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(behavior),
  });
  assert.ok(answer.ok, String(answer.status));
}

async function lastRequest(fake = local) {
  const requests = await (await fetch(fake + '/_fake/requests')).json();
  return requests[requests.length - 1];
}

test('responses.create answers through a chat-only tier', async () => {
  await behave({ reply: 'Hello from the fake upstream.' });
  const { data: response, response: raw } = await client.responses
    .create({ model: 'local', instructions: 'Be brief.', input: 'Hi there' })
    .withResponse();
  assert.match(response.id, /^resp_/);
  assert.equal(response.status, 'completed');
  assert.equal(response.output_text, 'Hello from the fake upstream.');
  assert.equal(response.usage.input_tokens, 20);
  assert.equal(response.usage.output_tokens, 5);
  assert.equal(raw.headers.get('x-tierwise-tier'), 'local');
  const sent = await lastRequest();
  assert.equal(sent.path, '/v1/chat/completions');
});

test('a streamed response has the documented events, one id and the text', async () => {
  await behave({ reply: 'Hello from the fake upstream.' });
  const stream = await client.responses.create({ model: 'local', input: 'Hi', stream: true });
  const types = [];
  let text = '';
  let completed;
  for await (const event of stream) {
    types.push(event.type);
    if (event.type === 'response.output_text.delta') text += event.delta;
    if (event.type === 'response.completed') completed = event.response;
  }
  assert.equal(types[0], 'response.created');
  assert.equal(types[1], 'response.in_progress');
  assert.equal(types.at(-1), 'response.completed');
  assert.ok(types.includes('response.output_text.done'), types.join(', '));
  assert.equal(text, 'Hello from the fake upstream.');
  assert.equal(completed.output_text ?? completed.output[0].content[0].text, text);
  assert.equal(completed.usage.output_tokens, 5);
});

test('the SDK stream helper assembles the final response', async () => {
  await behave({ reply: 'Streamed through the helper.' });
  const stream = client.responses.stream({ model: 'local', input: 'Hi' });
  const final = await stream.finalResponse();
  // The helper's final response is the `response.completed` snapshot (without the SDK's
  // `output_text` convenience, as from OpenAI's own API).
  assert.match(final.id, /^resp_/);
  assert.equal(final.status, 'completed');
  assert.equal(final.output[0].content[0].text, 'Streamed through the helper.');
});

test('tools: a function call comes back as a function_call item, its output goes back', async () => {
  await behave({
    reply: '',
    tool_calls: [{ id: 'call_1', name: 'weather', arguments: '{"city":"Paris"}' }],
  });
  const tools = [{
    type: 'function', name: 'weather', description: 'The weather in a city.', strict: false,
    parameters: { type: 'object', properties: { city: { type: 'string' } } },
  }];
  const first = await client.responses.create({ model: 'local', input: 'Weather in Paris?', tools });
  const call = first.output.find((item) => item.type === 'function_call');
  assert.ok(call, JSON.stringify(first.output));
  assert.equal(call.name, 'weather');
  assert.deepEqual(JSON.parse(call.arguments), { city: 'Paris' });

  await behave({ reply: 'Sunny in Paris.', tool_calls: [] });
  const second = await client.responses.create({
    model: 'local',
    tools,
    input: [
      { role: 'user', content: 'Weather in Paris?' },
      call,
      { type: 'function_call_output', call_id: call.call_id, output: 'sunny' },
    ],
  });
  assert.equal(second.output_text, 'Sunny in Paris.');
  const sent = await lastRequest();
  const tool = sent.body.messages.find((m) => m.role === 'tool');
  assert.equal(tool.tool_call_id, call.call_id);
  assert.equal(tool.content, 'sunny');
});

test('structured output: text.format json_schema reaches chat as response_format', async () => {
  await behave({ reply: '{"city":"Paris","days":3}', tool_calls: [] });
  const response = await client.responses.create({
    model: 'local',
    input: 'Forecast request: Paris, 3 days.',
    text: {
      format: {
        type: 'json_schema', name: 'forecast', strict: true,
        schema: {
          type: 'object', additionalProperties: false, required: ['city', 'days'],
          properties: { city: { type: 'string' }, days: { type: 'integer' } },
        },
      },
    },
  });
  assert.deepEqual(JSON.parse(response.output_text), { city: 'Paris', days: 3 });
  assert.equal(response.text.format.type, 'json_schema');
  const sent = await lastRequest();
  assert.equal(sent.body.response_format.type, 'json_schema');
  assert.equal(sent.body.response_format.json_schema.name, 'forecast');
});

test('a conversation by previous_response_id goes on when its second turn falls back', async () => {
  await behave({ reply: 'Hello from the fake upstream.', tool_calls: [] });
  await behave({}, api);
  // Passed through to OpenAI's Responses API (the API fake), kept by the gateway.
  const first = await client.responses.create({ model: 'native_first', input: 'My name is Ada.' });
  assert.match(first.id, /^resp_/);
  assert.notEqual(first.id, 'resp_fake', "kept under the gateway's own id");
  assert.equal(first.store, true);
  assert.equal((await lastRequest(api)).body.store, false, 'the gateway keeps it, not the upstream');

  // OpenAI is down: the second turn falls back to the local tier, served through chat.
  await behave({ fault: { kind: 'status', status: 503 } }, api);
  try {
    const { data: second, response: raw } = await client.responses
      .create({ model: 'native_first', previous_response_id: first.id, input: 'What is my name?' })
      .withResponse();
    assert.equal(raw.headers.get('x-tierwise-tier'), 'local');
    assert.equal(raw.headers.get('x-tierwise-fallback'), 'api_native:http_503');
    assert.equal(second.previous_response_id, first.id);
    assert.equal(second.output_text, 'Hello from the fake upstream.');
    const sent = await lastRequest();
    assert.equal(sent.path, '/v1/chat/completions');
    assert.deepEqual(
      sent.body.messages.map((m) => [m.role, m.content]),
      [
        ['user', 'My name is Ada.'],
        ['assistant', first.output_text],
        ['user', 'What is my name?'],
      ],
    );

    // responses.input_items.list: what the second turn answered, the first turn's included.
    const items = [];
    for await (const item of client.responses.inputItems.list(second.id, { order: 'asc' })) {
      items.push([item.role, item.content[0].text]);
    }
    assert.deepEqual(items, [
      ['user', 'My name is Ada.'],
      ['assistant', first.output_text],
      ['user', 'What is my name?'],
    ]);
  } finally {
    await behave({}, api);
  }
});

test('chat completions, plain and streamed', async () => {
  await behave({ reply: 'billing', tool_calls: [] });
  const answer = await client.chat.completions.create({
    model: 'classification', messages: [{ role: 'user', content: 'My card was charged twice.' }],
  });
  assert.equal(answer.choices[0].message.content, 'billing');
  const stream = await client.chat.completions.create({
    model: 'local', stream: true, messages: [{ role: 'user', content: 'Hi' }],
  });
  let text = '';
  for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
  assert.equal(text, 'billing');
});

test('an unknown model is the SDK\'s NotFoundError', async () => {
  await assert.rejects(
    client.responses.create({ model: 'no-such-route', input: 'Hi' }),
    (error) => error instanceof OpenAI.NotFoundError && error.code === 'model_not_found',
  );
});
