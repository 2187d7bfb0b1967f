// Browser entry point: loads the wasm module (dist/web) on first use.
import init, * as wasm from "../dist/web/replikativ_wasm.js";
import { makeApi } from "./api.js";

let loading = null;
/** Loads the module once; `moduleOrPath` (optional) overrides where the .wasm file comes from. */
export function ready(moduleOrPath) {
  loading ??= init(moduleOrPath === undefined ? undefined : { module_or_path: moduleOrPath });
  return loading;
}

export const { Stage } = makeApi(wasm, () => ready());
