#!/usr/bin/env bash
# Runs the fuzz targets (livebase-core, livebase-protocol) on the stable toolchain.
#
#   fuzz/run.sh SECONDS [TARGET...]     (targets: rules filter rest frames; default: all)
#
# Installs cargo-fuzz if it is missing, builds the targets (release, debug assertions on,
# no sanitizer), then runs each target for SECONDS. Exits non-zero if a target fails to build
# or libFuzzer reports a crash, timeout or out-of-memory; the input that did it is kept under
# fuzz/artifacts/<target>/ and the full libFuzzer log in fuzz/artifacts/<target>.log.
#
# Environment: CARGO_TARGET_DIR (where to build; default fuzz/target), FUZZ_SANITIZER
# (none | address; default none: the code under test is safe Rust, and none is ~2x faster).
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2 # builds with --locked on Rust 1.95

secs="${1:-}"
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
    echo "usage: $0 SECONDS [TARGET...]" >&2
    exit 2
fi
shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(rules filter rest frames)

fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$fuzz_dir/.."

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

# cargo-fuzz passes nightly-only rustc flags (-Zsanitizer, -Cpasses=sancov-module with
# unstable options); RUSTC_BOOTSTRAP lets the stable compiler accept them.
export RUSTC_BOOTSTRAP=1
sanitizer="${FUZZ_SANITIZER:-none}"
build_flags=(--sanitizer "$sanitizer" --debug-assertions)

for t in "${targets[@]}"; do
    echo "== building $t"
    if ! cargo fuzz build "${build_flags[@]}" "$t"; then
        echo "   FAILED: $t does not build" >&2
        exit 1
    fi
done

status=0
for t in "${targets[@]}"; do
    corpus="$fuzz_dir/corpus/$t"
    log="$fuzz_dir/artifacts/$t.log"
    mkdir -p "$corpus" "$fuzz_dir/artifacts/$t"
    seeds=("$fuzz_dir/seeds/$t")
    if [ "$t" = frames ]; then
        # Every documented frame, shared with the protocol crate's and the SDK's tests.
        seeds+=("$PWD/crates/livebase-protocol/fixtures/client" "$PWD/crates/livebase-protocol/fixtures/server")
    fi
    echo "== fuzzing $t for ${secs}s (log: ${log#"$PWD"/})"
    if cargo fuzz run "${build_flags[@]}" "$t" "$corpus" "${seeds[@]}" -- \
        -max_total_time="$secs" -timeout=10 -dict="$fuzz_dir/dict/$t.dict" -print_final_stats=1 \
        >"$log" 2>&1; then
        execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
        rate="$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
        echo "   ok: $execs executions ($rate/s), corpus $(find "$corpus" -type f | wc -l) inputs"
    else
        status=1
        echo "   FAILED: $t (last lines of $log below; reproduce with: RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer $sanitizer $t <artifact>)"
        tail -n 40 "$log"
    fi
done
exit "$status"
