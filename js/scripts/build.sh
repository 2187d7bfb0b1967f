#!/usr/bin/env bash
# Builds the npm package's WebAssembly: the replikativ-wasm crate for wasm32-unknown-unknown, the
# JS glue for browsers (dist/web) and Node.js (dist/node) with wasm-bindgen (the CLI's version
# must equal the crate's pinned wasm-bindgen), then wasm-opt -Os from npm's binaryen (Debian's
# binaryen 108 breaks the module). Prints the module's size.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(cd .. && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
PROFILE=${REPLIKATIV_WASM_PROFILE:-wasm-release}
want=$(sed -n 's/^wasm-bindgen = "=\(.*\)"/\1/p' "$ROOT/crates/wasm/Cargo.toml")
have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')
if [ "$want" != "$have" ]; then
  echo "wasm-bindgen $want is needed (found ${have:-none}): cargo install wasm-bindgen-cli --version $want" >&2
  exit 1
fi
(cd "$ROOT" && cargo build --profile "$PROFILE" --target wasm32-unknown-unknown -p replikativ-wasm)
WASM="$TARGET_DIR/wasm32-unknown-unknown/$PROFILE/replikativ_wasm.wasm"
rm -rf dist
wasm-bindgen --target web --out-dir dist/web --no-typescript "$WASM"
wasm-bindgen --target nodejs --out-dir dist/node --no-typescript "$WASM"
# The nodejs glue is CommonJS inside this ES module package.
echo '{"type": "commonjs"}' > dist/node/package.json
for d in web node; do
  ./node_modules/.bin/wasm-opt -Os --enable-bulk-memory --enable-nontrapping-float-to-int \
    --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue \
    "dist/$d/replikativ_wasm_bg.wasm" -o "dist/$d/replikativ_wasm_bg.wasm"
done
raw=$(stat -c %s dist/web/replikativ_wasm_bg.wasm)
gz=$(gzip -9 -c dist/web/replikativ_wasm_bg.wasm | wc -c)
echo "wasm module after wasm-opt -Os: $raw bytes, $gz bytes gzipped (budget: 409600 and 153600)"
