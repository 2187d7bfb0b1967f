// Two JS stages (the Node.js build) and a real Rust node (`replikativ serve`) replicate all four
// datatypes; JS reducers see each commit once; offline edits arrive after a reconnect.
// Run: node --experimental-websocket --test test/
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Stage } from "../src/index.node.js";
import { serve, waitFor, within, cli } from "./helpers.mjs";

let node;
let alice;
let bob;

before(async () => {
  node = await serve();
  alice = await Stage.create({ user: "mail:alice@example.org", store: "memory" });
  bob = await Stage.create({ user: "mail:bob@example.org", store: "memory" });
  await within(10_000, "alice connects", alice.connect(node.url));
  await within(10_000, "bob connects", bob.connect(node.url));
});

after(async () => {
  alice?.close();
  bob?.close();
  await node?.stop();
});

test("connection state is observable", () => {
  const s = alice.connectionState();
  assert.equal(s.state, "open");
  assert.equal(s.url, node.url);
  assert.equal(typeof s.pending, "number");
});

test("OR-Map: assocs both ways, values as JS objects, a concurrent conflict on both sides", async () => {
  const list = await alice.ormap.create();
  await alice.ormap.assoc(list, "milk", [["add", { n: 2, big: 2n ** 60n, bytes: new Uint8Array([1, 2, 3]) }]]);
  await bob.subscribe(list);
  const [milk] = await waitFor("bob sees milk", () => bob.ormap.get(list, "milk").length && bob.ormap.get(list, "milk"));
  const [fn, params] = milk.transactions[0];
  assert.equal(fn, "add");
  assert.equal(params.n, 2);
  assert.equal(params.big, 2n ** 60n);
  assert.deepEqual([...params.bytes], [1, 2, 3]);
  assert.equal(milk.author, "mail:alice@example.org");

  await bob.ormap.assoc(list, "eggs", [["add", 12]]);
  await waitFor("alice sees eggs", () => alice.ormap.get(list, "eggs").length === 1);
  assert.deepEqual(alice.ormap.keys(list).sort(), ["eggs", "milk"]);

  // The Rust CLI reads the node's copy.
  const out = JSON.parse(await cli(["ormap", "get", list, "eggs", "--peer", node.url, "--json"]));
  assert.equal(JSON.stringify(out).includes("12"), true, JSON.stringify(out));

  // Both assoc one key at once: both values survive on both sides, and both report the conflict.
  await Promise.all([alice.ormap.assoc(list, "k", [["set", "a"]]), bob.ormap.assoc(list, "k", [["set", "b"]])]);
  for (const s of [alice, bob]) {
    await waitFor(`${s.user} sees two values under k`, () => s.ormap.get(list, "k").length === 2);
    const conflicts = s.ormap.conflicts(list);
    assert.deepEqual(conflicts.map((c) => c.key), ["k"]);
    assert.equal(conflicts[0].commits.length, 2);
  }
  const seen = bob.ormap.get(list, "k").map((c) => c.transactions[0][1]).sort();
  assert.deepEqual(seen, ["a", "b"]);

  await alice.ormap.dissoc(list, "milk");
  await waitFor("bob sees milk removed", () => bob.ormap.get(list, "milk").length === 0);
});

test("CDVCS: commits both ways, one linear log, merge of concurrent heads", async () => {
  const log = await alice.cdvcs.create();
  await alice.cdvcs.transact(log, [["deposit", 10]]);
  await bob.subscribe(log);
  await waitFor("bob has alice's commit", () => bob.has(log) && bob.cdvcs.log(log).length === 2);
  await bob.cdvcs.transact(log, [["deposit", 5]]);
  await waitFor("alice has bob's commit", () => alice.cdvcs.log(log).length === 3);
  assert.deepEqual(
    alice.cdvcs.log(log).map((c) => c.id),
    bob.cdvcs.log(log).map((c) => c.id),
  );
  // Concurrent commits: two heads on both sides, then a merge converges them.
  bob.disconnect();
  await alice.cdvcs.transact(log, [["deposit", 1]]);
  await bob.cdvcs.transact(log, [["deposit", 2]]);
  await within(10_000, "bob reconnects", bob.connect(node.url));
  await waitFor("two heads at alice", () => alice.cdvcs.heads(log).length === 2);
  await waitFor("two heads at bob", () => bob.cdvcs.heads(log).length === 2);
  await alice.cdvcs.merge(log);
  await waitFor("bob sees the merge", () => bob.cdvcs.heads(log).length === 1);
  assert.deepEqual(alice.cdvcs.heads(log), bob.cdvcs.heads(log));
});

test("LWW register and G-Set replicate", async () => {
  const reg = await alice.lww.create();
  await alice.lww.set(reg, { theme: "dark" });
  await bob.subscribe(reg);
  await waitFor("bob reads the register", () => bob.has(reg) && bob.lww.get(reg)?.theme === "dark");
  await bob.lww.set(reg, 2n ** 64n);
  await waitFor("alice reads bob's write", () => alice.lww.get(reg) === 2n ** 64n);

  const set = await bob.gset.create();
  await bob.gset.add(set, "a");
  await alice.subscribe(set);
  await waitFor("alice has the set", () => alice.has(set) && alice.gset.elements(set).includes("a"));
  await alice.gset.add(set, new Uint8Array([7]));
  await alice.gset.add(set, 1.5);
  await waitFor("bob has all three", () => bob.gset.elements(set).length === 3);
  const els = bob.gset.elements(set);
  assert.ok(els.includes("a") && els.includes(1.5), String(els));
  assert.deepEqual([...els.find((e) => e instanceof Uint8Array)], [7]);
});

test("streamIntoIdentity: JS reducers see each commit once, across a reconnect", async () => {
  const log = await alice.cdvcs.create();
  await bob.subscribe(log);
  await waitFor("bob has the log", () => bob.has(log));
  const seen = new Map();
  const states = [];
  const stream = bob.streamIntoIdentity(
    log,
    {
      add: (sum, n, commit) => {
        seen.set(commit.id, (seen.get(commit.id) ?? 0) + 1);
        return sum + n;
      },
    },
    (sum) => states.push(sum),
    { initial: 0 },
  );
  for (let i = 1; i <= 20; i++) await alice.cdvcs.transact(log, [["add", i]]);
  await waitFor("the sum reaches 210", () => stream.state === 210);
  bob.disconnect();
  for (let i = 21; i <= 25; i++) await alice.cdvcs.transact(log, [["add", i]]);
  await within(10_000, "bob reconnects", bob.connect(node.url));
  await waitFor("the sum reaches 325", () => stream.state === 325);
  assert.equal(seen.size, 25);
  for (const [id, n] of seen) assert.equal(n, 1, `commit ${id} applied ${n} times`);
  assert.equal(states.at(-1), 325);
  assert.equal(stream.error, null);
  stream.stop();

  // An OR-Map stream: entries once each, conflicts reported.
  const map = await alice.ormap.create();
  await bob.subscribe(map);
  const applied = [];
  const conflicts = [];
  const s2 = bob.streamIntoIdentity(
    map,
    { todo: (todos, t, c) => (applied.push(c.id), { ...todos, [t.id]: t }) },
    () => {},
    { initial: {}, onOrmapConflict: (cs) => conflicts.push(...cs) },
  );
  await alice.ormap.assoc(map, "t1", [["todo", { id: "t1", text: "milk" }]]);
  await alice.ormap.assoc(map, "t2", [["todo", { id: "t2", text: "eggs" }]]);
  await waitFor("both todos", () => Object.keys(s2.state).length === 2);
  assert.equal(new Set(applied).size, applied.length);
  s2.stop();
});

test("offline edits are pending, then arrive after the reconnect", async () => {
  const list = await alice.ormap.create();
  await bob.subscribe(list);
  await waitFor("bob has the list", () => bob.has(list));
  bob.disconnect();
  assert.equal(bob.connectionState().state, "offline");
  await bob.ormap.assoc(list, "offline", [["add", 1]]);
  await bob.ormap.assoc(list, "offline2", [["add", 2]]);
  assert.ok(bob.connectionState().pending >= 2, JSON.stringify(bob.connectionState()));
  const states = [];
  const off = bob.onConnectionState((s) => states.push(s.state));
  await within(10_000, "bob reconnects", bob.connect(node.url));
  await waitFor("alice sees both offline edits", () => alice.ormap.get(list, "offline2").length === 1 && alice.ormap.get(list, "offline").length === 1);
  await waitFor("nothing pending at bob", () => bob.connectionState().pending === 0);
  assert.ok(states.includes("connecting") && states.includes("open"), states.join(","));
  off();
});

test("bad input gets a clear error", async () => {
  await assert.rejects(Stage.create({}), /user/);
  await assert.rejects(Stage.create({ user: "mail:x@example.org", store: "indexeddb" }), /IndexedDB is not available/);
  assert.throws(() => alice.ormap.get("not-an-address", "k"), /USER\/UUID/);
  assert.throws(() => alice.connect("http://example.org"), /ws:\/\//);
  const list = await alice.ormap.create();
  assert.throws(() => alice.ormap.assoc(list, "k", "not transactions"), /transactions/);
  assert.throws(() => alice.ormap.assoc(list, "k", [["f", () => 1]]), /functions/);
  const cyclic = {};
  cyclic.self = cyclic;
  assert.throws(() => alice.ormap.assoc(list, "k", [["f", cyclic]]), /deeper/);
  await assert.rejects(alice.lww.set(list, 1), /OR-Map, not a LWW register|not a/);
});

test("heartbeat: an idle link stays open on heartbeat answers; a node that stops answering is redialed", async () => {
  const n2 = await serve();
  const s = await Stage.create({ user: "mail:carol@example.org", heartbeatMs: 200, deadAfterMs: 1000 });
  try {
    await within(10_000, "carol connects", s.connect(n2.url));
    // Idle for several dead-after intervals: only the heartbeat's answers arrive, and they keep it open.
    const drops = [];
    const off = s.onConnectionState((st) => drops.push(st.state));
    await new Promise((r) => setTimeout(r, 3000));
    assert.equal(s.connectionState().state, "open");
    assert.deepEqual(drops.filter((x) => x !== "open"), []);
    off();
    // The node freezes (SIGSTOP): nothing arrives, the link is taken for dead.
    n2.child.kill("SIGSTOP");
    await waitFor("carol takes the link for dead", () => s.connectionState().state !== "open", 10_000);
    assert.match(s.connectionState().lastClose ?? "", /nothing from the node/);
    n2.child.kill("SIGCONT");
    await waitFor("carol is back", () => s.connectionState().state === "open", 15_000);
  } finally {
    n2.child.kill("SIGCONT");
    s.close();
    await n2.stop();
  }
});

test("a node that closes the link with a reason: the reason is shown and the link is redialed", async () => {
  const n3 = await serve({ args: ["--max-subscriptions-per-connection", "1"] });
  const s = await Stage.create({ user: "mail:dave@example.org" });
  try {
    const a = await s.ormap.create();
    const b = await s.ormap.create();
    assert.ok(a && b);
    // Two subscriptions in one subscribe: over the node's limit, it closes the connection.
    s.connect(n3.url);
    await waitFor("the node's reason reaches the app", () => /subscri/.test(s.connectionState().lastClose ?? ""), 10_000);
    // Redialed with backoff (attempts are reset only by a hello, which each redial gets again,
    // so count the closes instead).
    let closes = 0;
    const off = s.onConnectionState((st) => (st.state === "reconnecting" ? closes++ : null));
    await waitFor("it keeps redialing, with a growing delay", () => closes >= 2 && s.connectionState().attempts >= 2, 15_000);
    off();
  } finally {
    s.close();
    await n3.stop();
  }
});

test("authentication on: a key's stages replicate, another user writes with a granted capability, an anonymous one reads nothing", async () => {
  const secured = await serve({ auth: true });
  const aliceKey = await Stage.generateKey();
  const bobKey = await Stage.generateKey();
  const a1 = await Stage.create({ key: aliceKey, store: "memory" });
  const a2 = await Stage.create({ key: aliceKey, store: "memory" });
  assert.ok(a1.user.startsWith("key:"), a1.user);
  try {
    await within(10_000, "alice's first device connects", a1.connect(secured.url));
    await within(10_000, "alice's second device connects", a2.connect(secured.url));
    const list = await a1.ormap.create();
    await a1.ormap.assoc(list, "milk", [["add", 2]]);
    await a2.subscribe(list);
    await waitFor("alice's second device sees milk", () => a2.ormap.get(list, "milk").length === 1);

    // Bob writes alice's list with a capability she granted him.
    const bobPublic = (await Stage.create({ key: bobKey, store: "memory" })).user;
    const cap = a1.grant(bobPublic, [list], 60_000, true);
    const bob = await Stage.create({ key: bobKey, caps: [cap], store: "memory" });
    await within(10_000, "bob connects", bob.connect(secured.url));
    await bob.subscribe(list);
    await waitFor("bob sees milk", () => bob.ormap.get(list, "milk").length === 1);
    await bob.ormap.assoc(list, "eggs", [["add", 12]]);
    await waitFor("alice sees bob's eggs", () => a1.ormap.get(list, "eggs").length === 1);

    // A stage without a key authenticates anonymously: nothing of alice's list reaches it.
    const eve = await Stage.create({ user: "mail:eve@example.org", store: "memory" });
    await within(10_000, "eve connects", eve.connect(secured.url));
    await eve.subscribe(list);
    await new Promise((r) => setTimeout(r, 1500));
    let seen;
    try {
      seen = eve.ormap.get(list, "milk");
    } catch {
      seen = [];
    }
    assert.equal(seen.length, 0, "an anonymous stage read a private list");
    eve.close();
    bob.close();
  } finally {
    a1.close();
    a2.close();
    await secured.stop();
  }
});
