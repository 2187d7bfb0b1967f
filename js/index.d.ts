// Types of the `replikativ` npm package (hand-written over the wasm-bindgen module).

/** An address `USER/UUID`, e.g. `mail:alice@example.org/6f1c0e6a-8d7e-4a57-9d55-0f6a1d7b3c21`. */
export type Address = string;
/** A commit id: 64 hex digits. */
export type CommitId = string;

/**
 * A replicated value. Integers within ±(2^53 − 1) are numbers, larger ones `bigint`; other
 * numbers are floats; bytes are `Uint8Array`; maps with string keys are plain objects, other maps
 * `Map`s.
 */
export type Value =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | Value[]
  | { [key: string]: Value }
  | Map<Value, Value>;

/** A transaction: the name of one of the application's reducers and its parameters. */
export type Transaction = [fn: string, params: Value];

/** A commit with its transactions' parameters. */
export interface Commit {
  id: CommitId;
  parents: CommitId[];
  author: string;
  /** ms since the epoch (informational). */
  ts: number;
  transactions: Transaction[];
}

export interface StageOptions {
  /** The stage's user, owner of the addresses it creates (`mail:you@example.org`); default: the `key`'s user (`key:...`). */
  user?: string;
  /** A user key as key-file text (`Stage.generateKey()`, or a `replikativ key gen` file): proved to a node with authentication on. Without it the stage authenticates anonymously (it reads public addresses only). */
  key?: string;
  /** Capabilities (text from `grant()` or `replikativ key grant`) presented to the node after each handshake. */
  caps?: string[];
  /** `"memory"` (default; nothing survives a reload) or `"indexeddb"` (browsers only). */
  store?: "memory" | "indexeddb";
  /** The IndexedDB database (default `"replikativ"`). */
  name?: string;
  /** The peer id (default `browser-<uuid>`). */
  peerId?: string;
  /** Quiet time (ms) after which the client sends a heartbeat (default 10,000, at least 100). */
  heartbeatMs?: number;
  /** Quiet time (ms) after which the link is taken for dead and redialed (default 25,000, at least two heartbeats). */
  deadAfterMs?: number;
}

export interface ConnectionState {
  state: "offline" | "connecting" | "open" | "reconnecting";
  /** Local writes the node has not acknowledged yet. */
  pending: number;
  url: string | null;
  /** Lost or failed links since the link was last stable (open for 10 s); the reconnect delay grows with it. */
  attempts: number;
  /** Why the last link closed, while it is down. */
  lastClose: string | null;
  /** Frames waiting in the client for the socket's buffer to drain. */
  queued: number;
  /** Bytes the socket buffers (as the runtime reports it). */
  buffered: number;
}

export interface Change {
  address: Address;
  /** Whether this stage made it (or it came from the node). */
  local: boolean;
  kind: "OR-Map" | "CDVCS" | "LWW register" | "G-Set";
}

export interface Conflict {
  key: Value;
  commits: CommitId[];
}

/** A commit as streamIntoIdentity hands it to reducers (LWW and G-Set: synthetic, no author). */
export interface StreamCommit {
  id: CommitId;
  author: string | null;
  ts: number | null;
  transactions: Transaction[];
}

export type Reducer<S> = (state: S, params: any, commit: StreamCommit) => S;

export interface StreamOptions<S> {
  /** The initial state, or a function making one (also used when a CDVCS history is rebuilt). */
  initial?: S | (() => S);
  onCdvcsConflict?: (conflict: { heads: CommitId[]; mergeBases: CommitId[] }) => void;
  onOrmapConflict?: (conflicts: Conflict[]) => void;
  /** A reducer threw (or was missing): the stream stops. */
  onError?: (error: unknown) => void;
}

export interface StreamHandle<S> {
  readonly state: S;
  readonly error: unknown;
  stop(): void;
}

export declare class Stage {
  /** Opens a stage (with `"indexeddb"`, its stored state is loaded back). */
  static create(options: StageOptions): Promise<Stage>;
  /** A new user key as key-file text. */
  static generateKey(): Promise<string>;
  /** Lets `grantee` (`key:...`) read, and with `write` write, `addresses` of this stage's user (all if empty) for `ms` milliseconds; returns the capability as text. Needs a stage made with a `key`. */
  grant(grantee: string, addresses: Address[], ms: number, write?: boolean): string;
  /** Deletes the IndexedDB database of a closed stage. */
  static deleteDatabase(name: string): Promise<void>;

  readonly user: string;
  readonly peerId: string;

  /** Connects (`ws://` or `wss://`) and keeps reconnecting; resolves once the link is first open. */
  connect(url: string): Promise<void>;
  disconnect(): void;
  close(): void;
  connectionState(): ConnectionState;
  /** Returns an unsubscribe function. */
  onConnectionState(callback: (state: ConnectionState) => void): () => void;

  subscribe(addresses: Address | Address[]): Promise<void>;
  has(address: Address): boolean;
  /** Called after each durable change at `address`; returns an unsubscribe function. */
  onChange(address: Address, callback: (change: Change) => void): () => void;
  changes(address: Address): AsyncIterableIterator<Change>;
  streamIntoIdentity<S>(
    address: Address,
    reducers: Record<string, Reducer<S>>,
    onState: (state: S, plan: unknown) => void,
    options?: StreamOptions<S>,
  ): StreamHandle<S>;

  readonly ormap: {
    create(id?: string): Promise<Address>;
    /** Adds a value beside the key's others; resolves to its commit id once durable. */
    assoc(address: Address, key: Value, txs: Transaction[] | Transaction): Promise<CommitId>;
    /** Replaces every value of the key seen here. */
    put(address: Address, key: Value, txs: Transaction[] | Transaction): Promise<CommitId>;
    dissoc(address: Address, key: Value, revert?: Transaction[]): Promise<CommitId>;
    get(address: Address, key: Value): Commit[];
    keys(address: Address): Value[];
    conflicts(address: Address): Conflict[];
  };
  readonly cdvcs: {
    create(id?: string): Promise<Address>;
    transact(address: Address, txs: Transaction[] | Transaction): Promise<CommitId>;
    heads(address: Address): CommitId[];
    log(address: Address): Commit[];
    merge(address: Address, heads?: CommitId[], correcting?: Transaction[]): Promise<CommitId>;
  };
  readonly lww: {
    create(id?: string): Promise<Address>;
    set(address: Address, value: Value): Promise<void>;
    get(address: Address): Value;
  };
  readonly gset: {
    create(id?: string): Promise<Address>;
    add(address: Address, element: Value): Promise<void>;
    elements(address: Address): Value[];
  };
}

/** Browser build: loads the wasm module (optionally from `moduleOrPath`); `Stage.create` calls it. */
export declare function ready(moduleOrPath?: unknown): Promise<unknown>;
