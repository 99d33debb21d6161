#!/usr/bin/env node
// Peer engine for the GGUF tests: llama.cpp (the CPU build npm `node-llama-cpp` ships, in
// third_party/npm) loads a GGUF file, evaluates token ids and reports per-token log-probabilities.
//
//   llama_logprobs.mjs MODEL.gguf IN.jsonl OUT.json [--kv f32|f16] [--tokenize TEXT_FILE]
//     IN: one JSON array of token ids per line. OUT: {"logprobs": [[log p(ids[t] | ids[<t]) for t >= 1], ...],
//     "vocab": n, "prob_sums": [...], "tokens": [...]} (tokens: llama.cpp's ids of TEXT_FILE's text,
//     without BOS, when --tokenize is given).
// The KV cache is F32 by default: llama.cpp's default F16 cache rounds keys and values (~3e-3 in
// log-probs), which would hide a real mismatch at f32. Flash attention is off: its CPU kernel
// works in f16 whatever the cache type (measured here: 1e-4 to 6e-3 in log-probs with it, <= 3e-6
// without). Probabilities come from llama.cpp's sampler
// with every truncation off (temperature 1, top-k = the vocabulary, top-p 1, min-p 0), so they are
// the softmax of the logits; prob_sums lets the caller check that.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const modDir = process.env.DSMOE_NODE_MODULES || path.join(here, '..', '..', 'third_party', 'npm', 'node_modules');
const { getLlama } = await import(pathToFileURL(path.join(modDir, 'node-llama-cpp', 'dist', 'index.js')).href);

const args = process.argv.slice(2);
const [modelPath, inPath, outPath] = args;
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const kv = opt('--kv', 'f32').toUpperCase();
const tokenizeFile = opt('--tokenize', null);

const llama = await getLlama({ gpu: false, build: 'never', logLevel: 'error' });
const model = await llama.loadModel({ modelPath });
const seqs = fs.readFileSync(inPath, 'utf8').split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l));
const maxLen = Math.max(...seqs.map((s) => s.length));
const context = await model.createContext({
  contextSize: Math.max(64, maxLen + 8),
  batchSize: Math.max(64, maxLen + 8),
  threads: 1,
  sequences: seqs.length,
  flashAttention: false,
  experimentalKvCacheKeyType: kv,
  experimentalKvCacheValueType: kv,
});
const nVocab = Number(model.fileInfo?.metadata?.deepseek?.vocab_size ?? 0);
const out = { logprobs: [], prob_sums: [], vocab: nVocab };
for (const ids of seqs) {
  const seq = context.getSequence();
  const input = ids.map((t) => [t, { generateNext: { probabilities: true, options: { temperature: 1, topK: 1 << 30, topP: 1, minP: 0, repeatPenalty: { penalty: 1, frequencyPenalty: 0, presencePenalty: 0, maxPunishTokens: 0 } } } }]);
  const res = await seq.controlledEvaluate(input);
  const lp = [];
  const sums = [];
  for (let t = 0; t + 1 < ids.length; ++t) {
    const probs = res[t]?.next?.probabilities;
    if (!probs) throw new Error(`no probabilities at position ${t}`);
    const p = probs.get(ids[t + 1]);
    lp.push(p === undefined || p <= 0 ? null : Math.log(p));
    let s = 0;
    for (const v of probs.values()) s += v;
    sums.push(s);
  }
  out.logprobs.push(lp);
  out.prob_sums.push(sums);
  seq.dispose();
}
if (tokenizeFile) out.tokens = Array.from(model.tokenize(fs.readFileSync(tokenizeFile, 'utf8')), Number);
fs.writeFileSync(outPath, JSON.stringify(out));
await context.dispose();
await model.dispose();
await llama.dispose();
