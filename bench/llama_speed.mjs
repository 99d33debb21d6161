#!/usr/bin/env node
// llama.cpp's side of bench/llama_side_by_side.sh: the CPU build npm `node-llama-cpp` ships
// (third_party/npm) loads a GGUF file, prefills one prompt of token ids and generates greedily,
// timing both, as `dsmoe generate --verbose` times its prefill step and its decode steps:
//
//   llama_speed.mjs MODEL.gguf THREADS IDS NEW_TOKENS
//     IDS: comma-separated token ids (the prompt). Prints one JSON line:
//     {"prefill_tokens", "prefill_s", "decode_tokens", "decode_s"}
//
// prefill_s: from handing over the prompt to the first generated token (the whole prompt in one
// batch, the logits of its last position, one greedy sample); decode_s: the NEW_TOKENS - 1 tokens
// after it, one decode each. Settings, chosen to match dsmoe's (see ../shared/reference/engines.md):
// flash attention off (its CPU kernel works in f16), the KV cache F32 (dsmoe's default --kv-cache),
// batch = context size >= the prompt (one batch), weights read at load (no mmap: page faults of a
// memory-mapped file would land in the first timed prefill, while dsmoe copies its weights at load),
// exactly THREADS threads (maxThreads 0: the add-on does not cap or share them).
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const modDir = process.env.DSMOE_NODE_MODULES || path.join(here, '..', 'third_party', 'npm', 'node_modules');
const { getLlama } = await import(pathToFileURL(path.join(modDir, 'node-llama-cpp', 'dist', 'index.js')).href);

const [modelPath, threadsArg, idsArg, newArg] = process.argv.slice(2);
const threads = Number(threadsArg), newTokens = Number(newArg);
const ids = (idsArg || '').split(',').filter((s) => s !== '').map(Number);
if (!modelPath || !(threads >= 1) || !(newTokens >= 2) || ids.length === 0 || ids.some((t) => !Number.isInteger(t) || t < 0)) {
  console.error('usage: llama_speed.mjs MODEL.gguf THREADS IDS NEW_TOKENS (threads >= 1, new tokens >= 2, ids comma-separated)');
  process.exit(2);
}

const llama = await getLlama({ gpu: false, build: 'never', logLevel: 'error', maxThreads: 0 });
const model = await llama.loadModel({ modelPath, useMmap: false });
const size = ids.length + newTokens + 8;
const context = await model.createContext({
  contextSize: size,
  batchSize: size,
  threads: { ideal: threads, min: threads },
  sequences: 1,
  flashAttention: false,
  experimentalKvCacheKeyType: 'F32',
  experimentalKvCacheValueType: 'F32',
});
const seq = context.getSequence();
const gen = seq.evaluate(ids, { temperature: 0 });
const t0 = performance.now();
let r = await gen.next();
const t1 = performance.now();
for (let i = 1; i < newTokens && !r.done; ++i) r = await gen.next();
const t2 = performance.now();
if (r.done) throw new Error('llama.cpp stopped generating before NEW_TOKENS tokens');
await gen.return();
console.log(JSON.stringify({
  prefill_tokens: ids.length, prefill_s: (t1 - t0) / 1e3, decode_tokens: newTokens - 1, decode_s: (t2 - t1) / 1e3,
}));
await context.dispose();
await model.dispose();
await llama.dispose();
