// Test helpers: a real `replikativ serve` node on an OS-assigned port, bounded waits, the CLI.
import { spawn, execFile, execFileSync } from "node:child_process";
import { once } from "node:events";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(here, "../..");
export const BIN = process.env.REPLIKATIV_BIN ?? path.join(ROOT, "target/debug/replikativ");

/** Resolves `fn()` once it returns a truthy value; fails after `ms`. */
export async function waitFor(what, fn, ms = 10_000) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${last})`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Rejects if `promise` takes longer than `ms`. */
export function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// Most tests run the node with authentication off (on loopback), so stages of several named
// users share addresses; `serve({auth: true})` keeps it on (docs/design.md §12, §13.2).
let authFlags;
function noAuth() {
  authFlags ??= execFileSync(BIN, ["serve", "--help"], { encoding: "utf8" }).includes("--auth") ? ["--auth", "off"] : [];
  return authFlags;
}

/**
 * Starts `replikativ serve` on `listen` (127.0.0.1:0: an OS-assigned port) with `store` and
 * `args`; resolves to `{url, port, child, exited, stop()}` once it printed its address.
 */
export async function serve({ args = [], listen = "127.0.0.1:0", store = "memory", auth = false } = {}) {
  const child = spawn(BIN, ["serve", "--listen", listen, "--store", store, ...(auth ? [] : noAuth()), ...args], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" },
  });
  // Attached at once: the child may exit before anything else runs.
  const exited = once(child, "exit");
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  let out = "";
  const url = await within(
    20_000,
    "replikativ serve to print its address",
    new Promise((resolve, reject) => {
      child.stdout.on("data", (d) => {
        out += d;
        const m = out.match(/listening on (ws:\/\/[0-9.:]+)/);
        if (m) resolve(m[1]);
      });
      exited.then(([code]) => reject(new Error(`replikativ serve exited (${code}): ${stderr}`)));
    }),
  );
  const port = Number(new URL(url).port);
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
    await within(10_000, "replikativ serve to stop", exited);
  };
  return { url, port, child, exited, stop, stderr: () => stderr };
}

/** Runs the CLI; resolves to its stdout, rejects on a non-zero exit (bounded). */
export function cli(args, ms = 15_000) {
  return within(
    ms,
    `replikativ ${args.join(" ")}`,
    new Promise((resolve, reject) => {
      execFile(BIN, args, { timeout: ms }, (err, stdout, stderr) => {
        if (err) reject(new Error(`replikativ ${args.join(" ")}: ${err.message} ${stderr}`));
        else resolve(stdout);
      });
    }),
  );
}
