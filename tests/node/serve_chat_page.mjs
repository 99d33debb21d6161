// The chat page of `dsmoe serve` (GET /) in headless Chromium, driven by playwright-core
// (third_party/npm); tests/cpp/test_serve_clients.cpp starts the server and runs
//   node tests/node/serve_chat_page.mjs BASE_URL API_KEY SCREENSHOT.png
// Two turns typed into the page at temperature 0: each streamed answer, as the page shows it, equals
// the server's greedy non-streamed answer to the same conversation (so the page keeps the
// conversation); tokens/s is shown; a bad setting (max tokens 0) shows the server's error message;
// the page requests nothing from any other origin. The screenshot is kept. Exits 1 naming each
// failed check.
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import path from "node:path";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const require = createRequire(path.join(root, "third_party/npm/package.json"));
const { chromium } = require("playwright-core");

const [base, apiKey, screenshot] = process.argv.slice(2);
const failures = [];
const check = (ok, what) => { if (!ok) failures.push(what); };
const MAX_TOKENS = 24;

async function greedy(messages) {
  const res = await fetch(base + "/v1/chat/completions", {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: "Bearer " + apiKey },
    body: JSON.stringify({ messages, max_tokens: MAX_TOKENS, temperature: 0 }),
  });
  if (!res.ok) throw new Error(`greedy reference: ${res.status} ${await res.text()}`);
  return (await res.json()).choices[0].message.content;
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium", headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
try {
  const page = await browser.newPage();
  const foreign = [];
  page.on("request", (r) => { if (!r.url().startsWith(base)) foreign.push(r.url()); });
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(e.message));
  await page.goto(base + "/", { waitUntil: "load" });
  await page.fill("#api-key", apiKey);
  await page.fill("#temperature", "0");
  await page.fill("#max-tokens", String(MAX_TOKENS));
  const conversation = [];
  for (const [turn, text] of ["Hello, model", "And then?"].entries()) {
    await page.fill("#input", text);
    await page.press("#input", "Enter");
    const answer = page.locator(".msg.assistant").nth(turn);
    await answer.waitFor();
    await page.waitForFunction((i) => {
      const a = document.querySelectorAll(".msg.assistant")[i];
      return a && a.dataset.state !== "streaming";
    }, turn, { timeout: 60000 });
    const state = await answer.getAttribute("data-state");
    const shown = await answer.evaluate((el) => el.textContent);
    conversation.push({ role: "user", content: text });
    const want = await greedy(conversation);
    check(state === "done", `turn ${turn}: the page's answer ended '${state}': ${await page.locator(".msg.error").allTextContents()}`);
    check(shown === want, `turn ${turn}: the page shows ${JSON.stringify(shown)}, the server's greedy answer is ${JSON.stringify(want)}`);
    conversation.push({ role: "assistant", content: want });
    const stats = await page.textContent("#stats");
    check(/^\d+ tokens, [0-9.]+ tokens\/s/.test(stats), `turn ${turn}: stats read '${stats}'`);
  }
  await page.screenshot({ path: screenshot, fullPage: true });
  // An error the server answers is shown, with its message.
  await page.fill("#max-tokens", "0");
  await page.fill("#input", "This one fails");
  await page.press("#input", "Enter");
  const err = page.locator(".msg.error");
  await err.waitFor({ timeout: 30000 });
  const errText = await err.textContent();
  check(errText.includes("400") && errText.includes("max_tokens"), `error shown: '${errText}'`);
  check(foreign.length === 0, `requests to other origins: ${foreign.join(", ")}`);
  check(pageErrors.length === 0, `script errors: ${pageErrors.join("; ")}`);
} finally {
  await browser.close();
}
if (failures.length) {
  console.error(`${failures.length} checks failed:\n  ` + failures.join("\n  "));
  process.exit(1);
}
console.log(`chat page: all checks passed; screenshot ${screenshot}`);
