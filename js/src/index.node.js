// Node.js entry point (dist/node, CommonJS glue). Node 20 needs --experimental-websocket for the
// global WebSocket the link uses (Node 22 has it by default). Node has no IndexedDB: use
// store "memory".
import wasm from "../dist/node/replikativ_wasm.js";
import { makeApi } from "./api.js";

export function ready() {
  return Promise.resolve();
}

export const { Stage } = makeApi(wasm, ready);
