#!/usr/bin/env bash
# Runs each fuzz target for a short while, starting from the seeds in
# fuzz/seeds (new inputs go to fuzz/corpus, failures to fuzz/artifacts).
#
#   FUZZ_SECONDS=N        seconds per target (default 20)
#   FUZZ_SANITIZER=NAME   cargo-fuzz sanitizer (default none: builds with the
#                         workspace's pinned stable toolchain, and ipc has no
#                         unsafe code for ASan to watch); "address" and the
#                         others need nightly and use `cargo +nightly`.
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`, from crates.io). Without it
# the script says so and exits 0: `cargo test -p ipc` already runs the same
# target bodies over random inputs (ipc/tests/fuzz_smoke.rs).
set -euo pipefail
cd "$(dirname "$0")"

seconds="${FUZZ_SECONDS:-20}"
sanitizer="${FUZZ_SANITIZER:-none}"
targets=(decode_test_protocol decode_scheduler_protocol decode_pager_protocol ring_consumer publication_area apic_mmio)
toolchain=()
if [ "$sanitizer" != none ]; then
    toolchain=(+nightly)
fi

if ! cargo "${toolchain[@]}" fuzz --version >/dev/null 2>&1; then
    echo "run-smoke: cargo-fuzz is missing (cargo install cargo-fuzz); skipped"
    exit 0
fi

cargo "${toolchain[@]}" fuzz build --sanitizer "$sanitizer"
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    echo "run-smoke: $target for ${seconds}s (sanitizer: $sanitizer)"
    log="$(mktemp)"
    # The first directory collects new inputs; the seeds are only read.
    if ! cargo "${toolchain[@]}" fuzz run --sanitizer "$sanitizer" "$target" \
        "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        tail -n 40 "$log"
        echo "run-smoke: $target failed; the input is in fuzz/artifacts/$target"
        exit 1
    fi
    grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::average_exec_per_sec)' "$log" || true
    rm -f "$log"
done
echo "run-smoke: all targets ran ${seconds}s without a failure"
