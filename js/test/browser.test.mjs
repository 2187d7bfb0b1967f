// The example app (examples/web) in headless Chromium (playwright-core, Debian's /usr/bin/chromium),
// served by the node itself (`replikativ serve --web examples/web`): two pages and the CLI edit one
// list concurrently and converge; a page edits while the node is down and the edits arrive after it
// restarts; a reload keeps the acknowledged state (IndexedDB) and catches up; a conflict is shown.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";
import { serve, waitFor, within, cli, ROOT } from "./helpers.mjs";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const FLAGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const WEB = path.join(ROOT, "examples/web");
const T = 15_000;

let dir;
let node;
let browser;

const nodeArgs = () => ({ args: ["--web", WEB], store: `file:${path.join(dir, "node")}` });

before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), "replikativ-browser-"));
  node = await serve(nodeArgs());
  browser = await within(T, "chromium launches", chromium.launch({ executablePath: CHROMIUM, args: FLAGS }));
});

after(async () => {
  await browser?.close();
  await node?.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** Opens the app in a fresh context (its own IndexedDB) or in `context`. */
async function open(query, context) {
  context ??= await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e));
  await page.goto(`http://127.0.0.1:${node.port}/?${new URLSearchParams(query)}`, { timeout: T });
  await page.waitForFunction(() => window.__app?.ready, null, { timeout: T });
  page.errors = errors;
  return page;
}

const texts = (page) =>
  page.evaluate(() => Object.values(window.__state ?? {}).flatMap((vs) => vs.map((v) => v.text)).sort());
const state = (page) => page.evaluate(() => window.__app.stage.connectionState());
const waitTexts = (page, want, what) =>
  waitFor(what, async () => JSON.stringify(await texts(page)) === JSON.stringify([...want].sort()), T);

test("two pages and the CLI edit one list concurrently and converge; a node restart loses nothing; a reload keeps state; a conflict is shown", async () => {
  const a = await open({ user: "mail:alice@example.org" });
  const list = await a.evaluate(() => window.__app.list);
  await a.waitForFunction(() => window.__app.stage.connectionState().state === "open", null, { timeout: T });
  const bContext = await browser.newContext();
  const b = await open({ user: "mail:bob@example.org", list }, bContext);
  await b.waitForFunction(() => window.__app.stage.connectionState().state === "open", null, { timeout: T });
  // B edits the list once it has arrived (until then the app keeps its form disabled).
  await b.waitForFunction(() => window.__app.stage.has(window.__app.list), null, { timeout: T });
  assert.equal(await b.locator("#add button").isDisabled(), false);

  // Concurrent edits from both pages and the CLI.
  await Promise.all([
    a.evaluate(() => window.__app.add("milk")),
    b.evaluate(() => window.__app.add("eggs")),
    cli(["ormap", "assoc", list, "from-cli", '[["todo", {"text": "bread", "done": false}]]', "--peer", node.url]),
  ]);
  for (const p of [a, b]) await waitTexts(p, ["bread", "eggs", "milk"], "both pages see all three");
  const keys = JSON.parse(await cli(["ormap", "keys", list, "--peer", node.url, "--json"]));
  assert.equal(keys.length, 3, JSON.stringify(keys));
  // The DOM shows them too.
  assert.equal(await a.locator("#todos li").count(), 3);

  // A conflict: both pages change "bread" while A is cut off; both values are kept and shown.
  await a.evaluate(() => window.__app.stage.disconnect());
  await Promise.all([
    a.evaluate(() => window.__app.toggle("from-cli", "bread (alice)")),
    b.evaluate(() => window.__app.toggle("from-cli", "bread (bob)")),
  ]);
  await a.evaluate(() => window.__app.stage.connect(`ws://${location.host}`));
  for (const p of [a, b]) {
    await waitFor("the conflict reaches both pages", async () => (await p.locator("li.conflict").count()) === 1, T);
    const shown = await p.locator("li.conflict .values").textContent();
    assert.match(shown, /bread \(alice\).*\|.*bread \(bob\)|bread \(bob\).*\|.*bread \(alice\)/);
  }
  const conflicts = await b.evaluate((l) => window.__app.stage.ormap.conflicts(l), list);
  assert.deepEqual(conflicts.map((c) => c.key), ["from-cli"]);
  // Editing it again (put replaces both values) resolves it.
  await b.evaluate(() => window.__app.toggle("from-cli", "bread"));
  for (const p of [a, b]) await waitFor("resolved", async () => (await p.locator("li.conflict").count()) === 0, T);

  // The node goes down; page A edits meanwhile; the node restarts on the same port and store.
  const port = node.port;
  await node.stop();
  await waitFor("A sees the link down", async () => (await state(a)).state !== "open", T);
  await a.evaluate(() => window.__app.add("while the node was down"));
  assert.ok((await state(a)).pending >= 1, JSON.stringify(await state(a)));
  await a.waitForSelector("#status[data-state=reconnecting]", { timeout: T });
  node = await serve({ ...nodeArgs(), listen: `127.0.0.1:${port}` });
  await a.waitForFunction(() => window.__app.stage.connectionState().state === "open", null, { timeout: 40_000 });
  const want = ["bread", "eggs", "milk", "while the node was down"];
  await waitTexts(b, want, "B sees the edit made while the node was down");
  await waitFor("the node has it", async () => {
    const k = JSON.parse(await cli(["ormap", "keys", list, "--peer", node.url, "--json"]));
    return k.length === 4;
  });
  await waitFor("nothing pending at A", async () => (await state(a)).pending === 0, T);

  // B reloads offline: its acknowledged state comes back from IndexedDB.
  await b.goto(`http://127.0.0.1:${node.port}/?${new URLSearchParams({ user: "mail:bob@example.org", list, offline: "1" })}`);
  await b.waitForFunction(() => window.__app?.ready, null, { timeout: T });
  assert.deepEqual(await texts(b), want.sort());
  assert.equal((await state(b)).state, "offline");
  // A edits; B reloads online and catches up.
  await a.evaluate(() => window.__app.add("after the reload"));
  await b.goto(`http://127.0.0.1:${node.port}/?${new URLSearchParams({ user: "mail:bob@example.org", list })}`);
  await b.waitForFunction(() => window.__app?.ready, null, { timeout: T });
  await waitTexts(b, [...want, "after the reload"], "B catches up after the reload");

  assert.deepEqual(a.errors, []);
  assert.deepEqual(b.errors, []);
});
