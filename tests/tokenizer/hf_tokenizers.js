#!/usr/bin/env node
// Reference encoder/decoder: Hugging Face's own `tokenizers` library (official Node bindings, npm
// package `tokenizers`, installed by scripts/setup.sh into third_party/npm). The dsmoe tokenizer
// tests and benchmark compare against it.
//
//   hf_tokenizers.js encode TOKENIZER_JSON IN.jsonl OUT.jsonl [--special]
//       IN: one JSON string per line. OUT: one JSON array of ids per line.
//   hf_tokenizers.js decode TOKENIZER_JSON IN.jsonl OUT.jsonl
//       IN: one JSON array of ids per line. OUT: one JSON string per line.
//   hf_tokenizers.js bench TOKENIZER_JSON IN.jsonl [--repeat N]
//       Prints {"bytes":..,"seconds":..,"mb_per_s":..,"tokens":..}: encodeBatch over all lines
//       (threads: RAYON_NUM_THREADS, the library's own pool).
'use strict';
const fs = require('fs');
const path = require('path');

const modDir = process.env.DSMOE_NODE_MODULES ||
  path.join(__dirname, '..', '..', 'third_party', 'npm', 'node_modules');
const { Tokenizer } = require(path.join(modDir, 'tokenizers'));

function readLines(file) {
  const data = fs.readFileSync(file, 'utf8');
  const lines = data.split('\n');
  if (lines.length && lines[lines.length - 1] === '') lines.pop();
  return lines.map((l) => JSON.parse(l));
}

async function encodeAll(tok, texts, special) {
  const out = new Array(texts.length);
  const chunk = 256;
  for (let i = 0; i < texts.length; i += chunk) {
    const encs = await tok.encodeBatch(texts.slice(i, i + chunk), { addSpecialTokens: special });
    for (let k = 0; k < encs.length; ++k) out[i + k] = encs[k].getIds();
  }
  return out;
}

async function main() {
  const [mode, tokFile, inFile, outFile, ...rest] = process.argv.slice(2);
  if (!mode || !tokFile || !inFile) {
    console.error('usage: hf_tokenizers.js encode|decode|bench TOKENIZER_JSON IN [OUT] [--special]');
    process.exit(2);
  }
  const tok = Tokenizer.fromFile(tokFile);
  const flags = [outFile, ...rest].filter((x) => x !== undefined);
  if (mode === 'encode') {
    const texts = readLines(inFile);
    const ids = await encodeAll(tok, texts, flags.includes('--special'));
    fs.writeFileSync(outFile, ids.map((x) => JSON.stringify(x)).join('\n') + (ids.length ? '\n' : ''));
  } else if (mode === 'decode') {
    const all = readLines(inFile);
    const out = [];
    for (const ids of all) out.push(JSON.stringify(await tok.decode(ids, false)));
    fs.writeFileSync(outFile, out.join('\n') + (out.length ? '\n' : ''));
  } else if (mode === 'bench') {
    const texts = readLines(inFile);
    const ri = flags.indexOf('--repeat');
    const repeat = ri >= 0 ? parseInt(flags[ri + 1], 10) : 3;
    let bytes = 0;
    for (const t of texts) bytes += Buffer.byteLength(t, 'utf8');
    await tok.encodeBatch(texts.slice(0, 64), { addSpecialTokens: false });  // warm-up
    let best = Infinity, tokens = 0;
    for (let r = 0; r < repeat; ++r) {
      const t0 = process.hrtime.bigint();
      const encs = await tok.encodeBatch(texts, { addSpecialTokens: false });
      const s = Number(process.hrtime.bigint() - t0) / 1e9;
      tokens = 0;
      for (const e of encs) tokens += e.getLength();
      best = Math.min(best, s);
    }
    console.log(JSON.stringify({ bytes, seconds: best, mb_per_s: bytes / 1e6 / best, tokens }));
  } else {
    console.error('unknown mode ' + mode);
    process.exit(2);
  }
}
main().catch((e) => { console.error(e && e.stack || String(e)); process.exit(1); });
