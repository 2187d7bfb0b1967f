//! replikativ in the browser and in Node.js: the crdt crate, the memory store and the sans-IO
//! protocol core compiled to WebAssembly, driven by a small event loop over the JS `WebSocket`,
//! the JS clock and (optionally) IndexedDB. No threads, no `SystemTime::now`, no tokio.
//!
//! The npm package `replikativ` (`js/` in the repository) wraps this crate; that is what
//! applications use:
//!
//! ```js
//! import { Stage } from "replikativ";
//! const stage = await Stage.create({ user: "mail:alice@example.org", store: "indexeddb" });
//! stage.connect("ws://127.0.0.1:31744");
//! const list = await stage.ormap.create();
//! await stage.ormap.assoc(list, "milk", [["add", 2]]);
//! stage.onChange(list, () => render(stage.ormap.keys(list)));
//! ```
//!
//! Parts:
//! - `api`: the [`Stage`] JS class (writes return promises that resolve once durable, reads are
//!   synchronous: the state is in memory);
//! - `driver`: feeds the core inputs and carries out its outputs;
//! - `link`: the websocket with reconnect (backoff with jitter) and an application-level
//!   heartbeat;
//! - [`persist`]: IndexedDB as a write-behind journal of the memory store (barriers complete only
//!   after the strict transaction's `complete` event);
//! - `realize`: the JS side of `streamIntoIdentity`;
//! - [`value`]: JS values to and from replikativ values.
//!
//! # Values
//!
//! | JS | replikativ value |
//! |---|---|
//! | `null`, `undefined` | nil (read back as `null`) |
//! | `true`, `false` | bool |
//! | a number that is an integer within ±(2^53 − 1) | integer |
//! | any other number (`1.5`, `NaN`, `Infinity`, `1e300`) | float |
//! | `BigInt` (within 128 bits) | integer |
//! | string | string |
//! | `Uint8Array` | bytes |
//! | `Array` | list |
//! | plain object | map with string keys |
//! | `Map` | map with any keys |
//!
//! Back to JS: integers within ±(2^53 − 1) become numbers, larger ones `BigInt`; a map whose
//! keys are all strings becomes a plain object, any other map a `Map`; bytes a `Uint8Array`. A
//! float with an integral value (`2.0`, written by a Rust peer) reads back as the number `2`,
//! which a JS write turns into the integer 2: JS has one number type. Functions, symbols, cycles
//! and values nested deeper than the value model's depth limit are refused with an error.

mod api;
mod driver;
mod link;
pub mod persist;
mod realize;
pub mod value;

pub use api::Stage;
pub use link::{
    DEAD_AFTER_MS, HEARTBEAT_MS, MAX_BACKOFF_MS, MAX_BUFFERED_BYTES, MAX_FRAME_BYTES, MIN_BACKOFF_MS,
    STABLE_AFTER_MS,
};
pub use realize::Stream;
