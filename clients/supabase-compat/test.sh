#!/usr/bin/env bash
# CI entry for the supabase-js compatibility suite: the real, unmodified, pinned
# @supabase/supabase-js against the real server. The tests run the binary named by
# LIVEBASE_BIN (default: ../../target/debug/livebase, built here if missing and cargo is
# available).
set -euo pipefail
cd "$(dirname "$0")"

export LIVEBASE_BIN="${LIVEBASE_BIN:-$(cd ../.. && pwd)/target/debug/livebase}"
if [ ! -x "$LIVEBASE_BIN" ]; then
  echo "== livebase binary not found at $LIVEBASE_BIN: building it"
  (cd ../.. && cargo build --locked -p livebase-server)
fi

echo "== npm ci"
npm ci --no-audit --no-fund

# supabase-js needs a global WebSocket (realtime): Node 22 has one, Node 20 behind a flag.
flags=""
if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 22 ]; then flags="--experimental-websocket"; fi
echo "== test (node $flags --test)"
node $flags --test test/
