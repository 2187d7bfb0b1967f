// The package's API over the wasm module (shared by the browser and Node.js entry points).

/** Wraps the wasm module `wasm` (already initialised) in the package's API. */
export function makeApi(wasm, ready) {
  class Stage {
    /** @param {any} inner the wasm Stage */
    constructor(inner) {
      this.inner = inner;
      const kinds = ["ormap", "cdvcs", "lww", "gset"];
      for (const kind of kinds) {
        this[kind] = { create: (id) => inner.createDatatype(kind, id ?? undefined) };
      }
      Object.assign(this.ormap, {
        assoc: (address, key, txs) => inner.assoc(address, key, txs),
        put: (address, key, txs) => inner.put(address, key, txs),
        dissoc: (address, key, revert) => inner.dissoc(address, key, revert),
        get: (address, key) => inner.get(address, key),
        keys: (address) => inner.keys(address),
        conflicts: (address) => inner.conflicts(address),
      });
      Object.assign(this.cdvcs, {
        transact: (address, txs) => inner.transact(address, txs),
        heads: (address) => inner.heads(address),
        log: (address) => inner.log(address),
        merge: (address, heads, correcting) => inner.merge(address, heads, correcting),
      });
      Object.assign(this.lww, {
        set: (address, value) => inner.lwwSet(address, value),
        get: (address) => inner.lwwGet(address),
      });
      Object.assign(this.gset, {
        add: (address, element) => inner.gsetAdd(address, element),
        elements: (address) => inner.elements(address),
      });
    }

    /** Opens a stage: `{user?, key?, caps?, store: "memory" | "indexeddb", name?, peerId?}`. */
    static async create(options) {
      await ready();
      return new Stage(await wasm.Stage.create(options));
    }

    /** A new user key as key-file text (keep it secret; pass it as `Stage.create({key})`). */
    static async generateKey() {
      await ready();
      return wasm.Stage.generateKey();
    }

    /** Lets `grantee` (`key:...`) read (and with `write`, write) `addresses` of this stage's
     * user for `ms` milliseconds: a capability as text, for the grantee's `Stage.create({caps})`. */
    grant(grantee, addresses, ms, write = false) {
      return this.inner.grant(grantee, addresses, ms, write);
    }

    /** Deletes the IndexedDB database of a (closed) stage. */
    static async deleteDatabase(name) {
      await ready();
      return wasm.Stage.deleteDatabase(name);
    }

    get user() { return this.inner.user; }
    get peerId() { return this.inner.peerId; }

    /** Connects to a node and keeps reconnecting; resolves once the link is first open. */
    connect(url) { return this.inner.connect(url); }
    /** Drops the link (edits go on locally and sync on the next connect). */
    disconnect() { this.inner.disconnect(); }
    /** Disconnects and stops everything (timers, IndexedDB). */
    close() { this.inner.close(); }

    /** `{state, pending, url, attempts, lastClose}`. */
    connectionState() { return this.inner.connectionState(); }
    /** Calls `callback(state)` on every change of the connection state; returns an unsubscribe function. */
    onConnectionState(callback) {
      const id = this.inner.onConnectionState(callback);
      return () => this.inner.off(id);
    }

    /** Subscribes to an address (or a list): its data arrives from the node. */
    subscribe(addresses) { return this.inner.subscribe(addresses); }
    /** Whether the stage holds a datatype at `address`. */
    has(address) { return this.inner.has(address); }

    /** Calls `callback({address, local, kind})` after each durable change; returns an unsubscribe function. */
    onChange(address, callback) {
      const id = this.inner.onChange(address, callback);
      return () => this.inner.off(id);
    }

    /** Async iterator over the changes of `address`: `for await (const change of stage.changes(a))`. */
    changes(address) {
      const queue = [];
      let wake = null;
      const off = this.onChange(address, (change) => {
        queue.push(change);
        if (wake) { wake(); wake = null; }
      });
      return {
        [Symbol.asyncIterator]() { return this; },
        async next() {
          while (queue.length === 0) await new Promise((resolve) => { wake = resolve; });
          return { value: queue.shift(), done: false };
        },
        async return() { off(); return { value: undefined, done: true }; },
      };
    }

    /**
     * Applies every commit at `address`, in the datatype's deterministic order, through
     * `reducers[fn](state, params, commit) => state` to a state that starts as `initial`
     * (a value or a function making one), and calls `onState(state, info)` after each change.
     * Each commit reaches the reducers once per stream. Returns `{stop(), state, error}`.
     */
    streamIntoIdentity(address, reducers, onState, options = {}) {
      const fresh = () => (typeof options.initial === "function" ? options.initial() : structuredClone(options.initial ?? null));
      const stream = this.inner.stream(address);
      const handle = { state: fresh(), error: null, stop: () => {} };
      const step = () => {
        if (handle.error) return;
        let plan;
        try {
          plan = stream.next();
        } catch (e) {
          // A value still being fetched: the next change tries again.
          return;
        }
        if (plan.cdvcsConflict && options.onCdvcsConflict) options.onCdvcsConflict(plan.cdvcsConflict);
        if (plan.ormapConflicts.length && options.onOrmapConflict) options.onOrmapConflict(plan.ormapConflicts);
        if (plan.reset) handle.state = fresh();
        if (plan.units.length === 0 && !plan.reset) return;
        try {
          for (const unit of plan.units) {
            for (const commit of unit.commits) {
              for (const [fn, params] of commit.transactions) {
                const reducer = reducers[fn];
                if (!reducer) throw new Error(`no reducer for transaction ${JSON.stringify(fn)} (commit ${commit.id})`);
                handle.state = reducer(handle.state, params, commit);
              }
            }
          }
        } catch (e) {
          handle.error = e;
          off();
          if (options.onError) options.onError(e);
          return;
        }
        onState(handle.state, plan);
      };
      const off = this.onChange(address, step);
      handle.stop = off;
      step();
      return handle;
    }
  }

  return { Stage };
}
