// Load generator for bench/serve_bench.sh: the official OpenAI Node SDK (third_party/npm) in a
// bounded loop against a running `dsmoe serve`.
//   node bench/serve_bench.mjs throughput BASE_URL CLIENTS REQUESTS_PER_CLIENT MAX_TOKENS
//     CLIENTS concurrent clients, each sending REQUESTS_PER_CLIENT streamed greedy completions one
//     after another; prints one JSON line: aggregate generated tokens/s (completion tokens / wall
//     time), time to first token and per-request latency (p50 / p99), mean inter-token gap.
//   node bench/serve_bench.mjs stall BASE_URL STREAMS MAX_TOKENS LONG_PROMPT_BYTES
//     STREAMS streams decode; once each has its first tokens, one request with a long prompt
//     arrives; prints the running streams' largest inter-token gap while that prompt is prefilled
//     (from its arrival to its first token) and their median gap before it.
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import path from "node:path";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(path.join(root, "third_party/npm/package.json"));
const OpenAI = require("openai");

const [mode, base, ...rest] = process.argv.slice(2);
const client = new OpenAI({ baseURL: base + "/v1", apiKey: "none", maxRetries: 0, timeout: 600000 });
const now = () => performance.now() / 1000;
const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] : NaN;
};
const round = (x) => Math.round(x * 1000) / 1000;

// One streamed greedy completion; the arrival time of each piece of text.
async function stream(prompt, maxTokens, onPiece = () => {}) {
  const t0 = now();
  const times = [];
  let tokens = 0;
  const s = await client.completions.create({
    prompt, max_tokens: maxTokens, temperature: 0, stream: true, stream_options: { include_usage: true },
  });
  for await (const chunk of s) {
    if (chunk.usage) tokens = chunk.usage.completion_tokens;
    if (chunk.choices.length && chunk.choices[0].text) {
      const t = now();
      times.push(t);
      onPiece(t);
    }
  }
  const t1 = now();
  if (tokens !== maxTokens) throw new Error(`a request generated ${tokens} tokens, not ${maxTokens}`);
  return { t0, t1, times, tokens };
}

// Short prompts (4-6 byte tokens), so the figures are decode's, not prefill's.
const promptOf = (i) => `Hi ${i}`;

if (mode === "throughput") {
  const [clients, perClient, maxTokens] = rest.map(Number);
  const results = [];
  const t0 = now();
  await Promise.all(Array.from({ length: clients }, async (_, c) => {
    for (let r = 0; r < perClient; ++r) results.push(await stream(promptOf(c * perClient + r), maxTokens));
  }));
  const wall = now() - t0;
  const tokens = results.reduce((a, r) => a + r.tokens, 0);
  const ttft = results.map((r) => r.times[0] - r.t0), lat = results.map((r) => r.t1 - r.t0);
  const gaps = results.flatMap((r) => r.times.slice(1).map((t, i) => t - r.times[i]));
  console.log(JSON.stringify({
    clients, requests: results.length, max_tokens: maxTokens, wall_s: round(wall), tokens,
    tokens_per_s: round(tokens / wall), ttft_p50_s: round(pct(ttft, 50)), ttft_p99_s: round(pct(ttft, 99)),
    latency_p50_s: round(pct(lat, 50)), latency_p99_s: round(pct(lat, 99)),
    itl_mean_s: round(gaps.reduce((a, b) => a + b, 0) / gaps.length),
  }));
} else if (mode === "stall") {
  const [streams, maxTokens, longBytes] = rest.map(Number);
  const pieces = Array.from({ length: streams }, () => []);
  let started = 0, release;
  const allStarted = new Promise((r) => (release = r));
  const running = Array.from({ length: streams }, (_, i) => stream(promptOf(i), maxTokens, (t) => {
    if (pieces[i].push(t) === 3 && ++started === streams) release();
  }));
  await allStarted;
  const longPrompt = "x".repeat(longBytes);
  const tArrive = now();
  let tFirst = 0;
  await stream(longPrompt, 1, (t) => { if (!tFirst) tFirst = t; });
  await Promise.all(running);
  // Gaps of the running streams that overlap the long prompt's prefill [arrival, first token].
  let worst = 0;
  const before = [];
  for (const ts of pieces)
    for (let k = 1; k < ts.length; ++k) {
      if (ts[k] > tArrive && ts[k - 1] < tFirst) worst = Math.max(worst, ts[k] - ts[k - 1]);
      if (ts[k] <= tArrive) before.push(ts[k] - ts[k - 1]);
    }
  console.log(JSON.stringify({
    streams, long_prompt_tokens: longBytes, prefill_s: round(tFirst - tArrive),
    worst_gap_during_prefill_s: round(worst), median_gap_before_s: round(pct(before, 50)),
  }));
} else {
  console.error("usage: serve_bench.mjs throughput|stall BASE_URL ...");
  process.exit(2);
}
