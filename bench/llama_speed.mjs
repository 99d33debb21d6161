#!/usr/bin/env node
// llama.cpp's side of bench/llama_side_by_side.sh: the CPU build npm `node-llama-cpp` ships
// (third_party/npm) loads a GGUF file, prefills B prompts of token ids and generates greedily for
// each, timing both, as `dsmoe generate --verbose` times its prefill step and its decode steps:
//
//   llama_speed.mjs MODEL.gguf THREADS IDS NEW_TOKENS
//     IDS: comma-separated token ids (a prompt); B prompts separated by ';' are one batch of B
//     sequences. Prints one JSON line:
//     {"sequences", "prefill_tokens", "prefill_s", "decode_tokens", "decode_s"}
//
// prefill_s: from handing over the prompts to the first generated token of every sequence (all
// prompts in one batch, the logits of each last position, one greedy sample each); decode_s: the
// NEW_TOKENS - 1 tokens of every sequence after it, each step one llama_decode of B tokens
// (node-llama-cpp gathers the sequences' pending evaluations of one event-loop cycle into one
// batch; the steps are awaited together so every step holds all B). decode_tokens counts all of them.
// Settings, chosen to match dsmoe's (see ../shared/reference/engines.md):
// flash attention off (its CPU kernel works in f16), the KV cache F32 (dsmoe's default --kv-cache),
// batch = context size >= the prompts (one batch), weights read at load (no mmap: page faults of a
// memory-mapped file would land in the first timed prefill, while dsmoe copies its weights at load),
// exactly THREADS threads (maxThreads 0: the add-on does not cap or share them).
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const modDir = process.env.DSMOE_NODE_MODULES || path.join(here, '..', 'third_party', 'npm', 'node_modules');
const { getLlama } = await import(pathToFileURL(path.join(modDir, 'node-llama-cpp', 'dist', 'index.js')).href);

const [modelPath, threadsArg, idsArg, newArg] = process.argv.slice(2);
const threads = Number(threadsArg), newTokens = Number(newArg);
const prompts = (idsArg || '').split(';').map((p) => p.split(',').filter((s) => s !== '').map(Number));
if (!modelPath || !(threads >= 1) || !(newTokens >= 2) || prompts.some((ids) => ids.length === 0 || ids.some((t) => !Number.isInteger(t) || t < 0))) {
  console.error('usage: llama_speed.mjs MODEL.gguf THREADS IDS NEW_TOKENS (threads >= 1, new tokens >= 2, ids comma-separated, prompts ;-separated)');
  process.exit(2);
}

const llama = await getLlama({ gpu: false, build: 'never', logLevel: 'error', maxThreads: 0 });
const model = await llama.loadModel({ modelPath, useMmap: false });
const perSequence = Math.max(...prompts.map((ids) => ids.length)) + newTokens + 8;
const size = perSequence * prompts.length;
const context = await model.createContext({
  contextSize: size,
  batchSize: size,
  threads: { ideal: threads, min: threads },
  sequences: prompts.length,
  flashAttention: false,
  experimentalKvCacheKeyType: 'F32',
  experimentalKvCacheValueType: 'F32',
});
const gens = prompts.map((ids) => context.getSequence().evaluate(ids, { temperature: 0 }));
const step = async () => {
  const rs = await Promise.all(gens.map((g) => g.next()));
  if (rs.some((r) => r.done)) throw new Error('llama.cpp stopped generating before NEW_TOKENS tokens');
};
const t0 = performance.now();
await step();
const t1 = performance.now();
for (let i = 1; i < newTokens; ++i) await step();
const t2 = performance.now();
await Promise.all(gens.map((g) => g.return()));
console.log(JSON.stringify({
  sequences: prompts.length, prefill_tokens: prompts.reduce((n, ids) => n + ids.length, 0), prefill_s: (t1 - t0) / 1e3,
  decode_tokens: (newTokens - 1) * prompts.length, decode_s: (t2 - t1) / 1e3,
}));
await context.dispose();
await model.dispose();
await llama.dispose();
