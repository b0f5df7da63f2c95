#!/usr/bin/env bash
# Runs every attestation fuzz target for a bounded time (default 30 s each).
#   attestation/fuzz/run.sh            # 30 s per target
#   FUZZ_SECONDS=300 attestation/fuzz/run.sh nitro
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`) and a nightly toolchain; without one,
# it falls back to RUSTC_BOOTSTRAP=1 on stable (tried: works with stable 1.95).
set -euo pipefail
cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-30}"
targets=("${@:-nitro ec2_iid x509_pop}")
# Separate from the workspace's target dir: nightly + sanitizer builds share nothing with it.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$PWD/target}"
if cargo +nightly --version >/dev/null 2>&1; then
    fuzz=(cargo +nightly fuzz)
else
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
fi
for t in ${targets[@]}; do
    mkdir -p "corpus/$t"
    "${fuzz[@]}" run "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$seconds" -rss_limit_mb=2048
done
