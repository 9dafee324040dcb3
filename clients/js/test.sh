#!/usr/bin/env bash
# CI entry for the TypeScript SDK: install, build, test (unit, React, and integration tests
# against the real server). The integration tests run the binary named by LIVEBASE_BIN
# (default: ../../target/debug/livebase, built here if missing and cargo is available).
set -euo pipefail
cd "$(dirname "$0")"

export LIVEBASE_BIN="${LIVEBASE_BIN:-$(cd ../.. && pwd)/target/debug/livebase}"
if [ ! -x "$LIVEBASE_BIN" ]; then
  echo "== livebase binary not found at $LIVEBASE_BIN: building it"
  (cd ../.. && cargo build --locked -p livebase-server)
fi

echo "== npm $( [ -f package-lock.json ] && echo ci || echo install )"
if [ -f package-lock.json ]; then
  npm ci --no-audit --no-fund
else
  npm install --no-audit --no-fund
fi

echo "== build (tsc)"
npm run build

echo "== test"
npm test
