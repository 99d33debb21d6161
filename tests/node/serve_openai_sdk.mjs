// The official OpenAI Node SDK (npm `openai`, third_party/npm) against a running `dsmoe serve`:
// tests/cpp/test_serve_clients.cpp starts the server and writes what `dsmoe generate
// --temperature 0` answers for the same prompts into the spec file this script reads:
//   node tests/node/serve_openai_sdk.mjs SPEC.json
// Checks, through the SDK's own request and response handling: models.list; completions and chat
// completions, streamed and not, greedy, equal to generate token for token (the byte-level model's
// token id is its byte: chat logprobs carry each token's bytes); usage; finish_reason "length" and
// "stop"; and the SDK's error classes for 400, 401 and 404. Exits 1 naming every check that failed.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const require = createRequire(path.join(root, "third_party/npm/package.json"));
const OpenAI = require("openai");

const spec = JSON.parse(readFileSync(process.argv[2], "utf8"));
const failures = [];
let checks = 0;
function check(ok, what) {
  checks++;
  if (!ok) failures.push(what);
}
// JSON with object keys sorted: equal values, whatever the order of their keys.
const canon = (v) => JSON.stringify(v, (k, x) =>
  x && typeof x === "object" && !Array.isArray(x) ? Object.fromEntries(Object.entries(x).sort()) : x);
function eq(got, want, what) {
  const g = canon(got), w = canon(want);
  check(g === w, `${what}: got ${g}, want ${w}`);
}

// maxRetries 0: a 5xx or a dropped connection must show as a failure, not be retried away.
const client = new OpenAI({ baseURL: spec.base_url, apiKey: spec.api_key, maxRetries: 0, timeout: 120000 });

async function expectError(cls, status, param, fn, what) {
  try {
    await fn();
    check(false, `${what}: no error (want ${cls.name} ${status})`);
  } catch (e) {
    check(e instanceof cls, `${what}: ${e.constructor.name} (${e.message}), want ${cls.name}`);
    eq(e.status, status, `${what}: status`);
    if (param !== undefined) eq(e.param ?? null, param, `${what}: error.param`);
    check(typeof e.message === "string" && e.message.length > 0, `${what}: no message`);
  }
}

// A byte-level token's text, where it is one whole character (ASCII).
const asciiOf = (id) => (id < 128 ? String.fromCharCode(id) : null);

async function main() {
  const models = await client.models.list();
  eq(models.data.map((m) => m.id), [spec.model], "models.list ids");

  // Completions, whole: text, usage, logprobs tokens against generate's ids.
  const c = spec.completion;
  const whole = await client.completions.create({
    model: spec.model, prompt: c.prompt, max_tokens: c.max_tokens, temperature: 0, logprobs: 0,
  });
  eq(whole.object, "text_completion", "completion object");
  eq(whole.choices[0].text, c.text, "completion text (vs dsmoe generate)");
  eq(whole.choices[0].finish_reason, "length", "completion finish_reason");
  eq(whole.usage, { prompt_tokens: c.prompt_tokens, completion_tokens: c.ids.length,
                    total_tokens: c.prompt_tokens + c.ids.length }, "completion usage");
  const toks = whole.choices[0].logprobs?.tokens ?? [];
  eq(toks.length, c.ids.length, "completion logprobs.tokens count");
  c.ids.forEach((id, i) => {
    if (asciiOf(id) !== null) eq(toks[i], asciiOf(id), `completion token ${i} (id ${id})`);
  });

  // Completions, streamed: the SDK's SSE parsing; the pieces add up to the same text.
  let streamed = "", finish = null, usage = null;
  const cs = await client.completions.create({
    model: spec.model, prompt: c.prompt, max_tokens: c.max_tokens, temperature: 0, stream: true,
    stream_options: { include_usage: true },
  });
  for await (const chunk of cs) {
    if (chunk.usage) usage = chunk.usage;
    for (const ch of chunk.choices) {
      streamed += ch.text;
      if (ch.finish_reason) finish = ch.finish_reason;
    }
  }
  eq(streamed, c.text, "streamed completion text");
  eq(finish, "length", "streamed completion finish_reason");
  eq(usage?.completion_tokens, c.ids.length, "streamed completion usage");

  // A stop string: both end where generate --stop ends, with "stop".
  const st = spec.completion_stop;
  const stopped = await client.completions.create({
    model: spec.model, prompt: st.prompt, max_tokens: st.max_tokens, temperature: 0, stop: [st.stop],
  });
  eq(stopped.choices[0].text, st.text, `completion with stop ${JSON.stringify(st.stop)}`);
  eq(stopped.choices[0].finish_reason, "stop", "completion with stop: finish_reason");

  // Chat, whole and streamed, with logprobs: each token's bytes are generate's ids.
  const k = spec.chat;
  const chat = await client.chat.completions.create({
    model: spec.model, messages: k.messages, max_tokens: k.max_tokens, temperature: 0, logprobs: true, top_logprobs: 2,
  });
  eq(chat.object, "chat.completion", "chat object");
  eq(chat.choices[0].message.role, "assistant", "chat role");
  eq(chat.choices[0].message.content, k.text, "chat content (vs dsmoe generate on the rendered prompt)");
  eq(chat.choices[0].finish_reason, "length", "chat finish_reason");
  eq((chat.choices[0].logprobs?.content ?? []).map((t) => t.bytes), k.ids.map((id) => [id]), "chat tokens (bytes = ids)");
  for (const [i, t] of (chat.choices[0].logprobs?.content ?? []).entries()) {
    check(t.logprob <= 0 && t.top_logprobs.length === 2 && t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob,
          `chat token ${i}: logprob / top_logprobs shape ${JSON.stringify(t)}`);
  }
  eq(chat.usage, { prompt_tokens: k.prompt_tokens, completion_tokens: k.ids.length,
                   total_tokens: k.prompt_tokens + k.ids.length }, "chat usage");
  let content = "", role = null, ids = [];
  finish = null;
  usage = null;
  const ks = await client.chat.completions.create({
    model: spec.model, messages: k.messages, max_tokens: k.max_tokens, temperature: 0, stream: true, logprobs: true,
    stream_options: { include_usage: true },
  });
  for await (const chunk of ks) {
    eq(chunk.object, "chat.completion.chunk", "chat chunk object");
    if (chunk.usage) usage = chunk.usage;
    for (const ch of chunk.choices) {
      if (ch.delta.role) role = ch.delta.role;
      content += ch.delta.content ?? "";
      for (const t of ch.logprobs?.content ?? []) ids.push(...t.bytes);
      if (ch.finish_reason) finish = ch.finish_reason;
    }
  }
  eq(role, "assistant", "streamed chat role");
  eq(content, k.text, "streamed chat content");
  eq(ids, k.ids, "streamed chat tokens (bytes = ids)");
  eq(finish, "length", "streamed chat finish_reason");
  eq(usage?.completion_tokens, k.ids.length, "streamed chat usage");

  // Errors as the SDK's classes.
  await expectError(OpenAI.BadRequestError, 400, "temperature",
    () => client.completions.create({ model: spec.model, prompt: "x", temperature: 5 }), "temperature 5");
  await expectError(OpenAI.BadRequestError, 400, "top_logprobs",
    () => client.chat.completions.create({ model: spec.model, messages: k.messages, logprobs: true, top_logprobs: 21 }),
    "top_logprobs 21");
  await expectError(OpenAI.NotFoundError, 404, "model",
    () => client.chat.completions.create({ model: "gpt-4", messages: k.messages }), "unknown model");
  const stranger = new OpenAI({ baseURL: spec.base_url, apiKey: "wrong-key", maxRetries: 0 });
  await expectError(OpenAI.AuthenticationError, 401, undefined, () => stranger.models.list(), "wrong API key");
  await expectError(OpenAI.AuthenticationError, 401, undefined,
    () => stranger.completions.create({ model: spec.model, prompt: "x", stream: true }), "wrong API key, streamed");
}

main().then(
  () => {
    if (failures.length) {
      console.error(`${failures.length} of ${checks} checks failed:\n  ` + failures.join("\n  "));
      process.exit(1);
    }
    console.log(`openai SDK: all ${checks} checks passed`);
  },
  (e) => {
    console.error("unexpected error:", e);
    process.exit(1);
  },
);
