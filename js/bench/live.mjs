// Live replication into a browser page: a writer (a Node.js stage, this package) makes N OR-Map
// assocs (default 100,000) through a `replikativ serve` node; a headless Chromium page (this
// package, memory store) and the Rust client (`replikativ watch`) receive them live, in the same run.
// Prints ops/s of the writer and of each receiver (first to last entry received).
//   node --experimental-websocket bench/live.mjs [N] [WINDOW]
import { spawn } from "node:child_process";
import path from "node:path";
import { chromium } from "playwright-core";
import { Stage } from "../src/index.node.js";
import { serve, waitFor, within, ROOT, BIN } from "../test/helpers.mjs";

const N = Number(process.argv[2] ?? 100_000);
const WINDOW = Number(process.argv[3] ?? 256);
const FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"];

const node = await serve({ args: ["--web", path.join(ROOT, "examples/web")] });
const writer = await Stage.create({ user: "mail:writer@example.org", store: "memory" });
await writer.connect(node.url);
const list = await writer.ormap.create();
await waitFor("the node holds the list", async () => true);

// Receiver 1: the browser page.
const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: FLAGS });
const page = await (await browser.newContext()).newPage();
page.on("pageerror", (e) => console.error("page error:", e));
page.on("crash", () => console.error("the page crashed"));
page.on("console", (m) => (m.type() === "error" ? console.error("page console:", m.text()) : null));
await page.goto(`http://127.0.0.1:${node.port}/bench.html?list=${encodeURIComponent(list)}`);
await page.waitForFunction(() => window.__ready, null, { timeout: 20_000 });

// Receiver 2: the Rust client, one JSON line per received entry (when it falls behind, it skips
// changes and prints the state again: entries are counted by key, from both kinds of line).
const watch = spawn(BIN, ["watch", list, "--peer", node.url], { stdio: ["ignore", "pipe", "inherit"] });
const rustKeys = new Set();
let rustFirst = 0;
let rustLast = 0;
let caughtUp = false;
let buf = "";
const rustSaw = (key) => {
  if (rustKeys.has(key)) return;
  rustKeys.add(key);
  if (rustKeys.size === 1) rustFirst = performance.now();
  rustLast = performance.now();
};
watch.stdout.on("data", (d) => {
  buf += d;
  let i;
  while ((i = buf.indexOf("\n")) >= 0) {
    const line = buf.slice(0, i);
    buf = buf.slice(i + 1);
    if (!line.startsWith("{")) continue;
    const j = JSON.parse(line);
    if (j.catch_up_done) caughtUp = true;
    else if (j.catch_up) for (const e of j.catch_up) rustSaw(JSON.stringify(e.key));
    else if (j.key !== undefined && !j.removed) rustSaw(JSON.stringify(j.key));
  }
});
await waitFor("the Rust client caught up", () => caughtUp, 20_000);

// Progress on stderr every 2 s (REPLIKATIV_BENCH_PROGRESS=1).
let writtenCount = 0;
const progress = process.env.REPLIKATIV_BENCH_PROGRESS
  ? setInterval(async () => {
      const n = await page.evaluate(() => window.__count()).catch(() => -1);
      console.error(`written ${writtenCount}, page ${n}, rust ${rustKeys.size}, writer link ${JSON.stringify(writer.connectionState())}`);
    }, 2000)
  : null;

// The writer: N assocs, at most WINDOW in flight.
let browserFirst = 0;
const t0 = performance.now();
let inFlight = [];
for (let i = 0; i < N; i++) {
  inFlight.push(writer.ormap.assoc(list, `k${i}`, [["set", i]]));
  if (inFlight.length >= WINDOW) {
    await Promise.all(inFlight);
    writtenCount = i + 1;
    inFlight = [];
    if (!browserFirst && (await page.evaluate(() => window.__count())) > 0) browserFirst = performance.now();
  }
}
await Promise.all(inFlight);
const written = performance.now();

// Poll the page (keys().length is O(n), so not too often).
let browserLast = 0;
await waitFor(
  "the page has every entry",
  async () => {
    const n = await page.evaluate(() => window.__count());
    if (n >= N) browserLast = performance.now();
    return n >= N;
  },
  Number(process.env.BENCH_TIMEOUT_MS ?? 600_000),
);
await waitFor("the Rust client has every entry", () => rustKeys.size >= N, Number(process.env.BENCH_TIMEOUT_MS ?? 600_000));

const rate = (n, a, b) => Math.round(n / ((b - a) / 1000));
console.log(`entries: ${N}, writer window: ${WINDOW}`);
console.log(`writer (Node.js, wasm):        ${rate(N, t0, written)} ops/s (${((written - t0) / 1000).toFixed(2)} s)`);
console.log(`browser page (Chromium, wasm): ${rate(N, t0, browserLast)} ops/s from the first write to the last entry seen (${((browserLast - t0) / 1000).toFixed(2)} s; first seen after ${((browserFirst || browserLast) - t0).toFixed(0)} ms; polled every 25 ms)`);
console.log(`Rust client (replikativ watch): ${rate(N, t0, rustLast)} ops/s from the first write to the last line (${((rustLast - t0) / 1000).toFixed(2)} s; first line after ${(rustFirst - t0).toFixed(0)} ms)`);

if (progress) clearInterval(progress);
watch.kill("SIGTERM");
await browser.close();
writer.close();
await within(10_000, "node stops", node.stop());
