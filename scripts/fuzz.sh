#!/usr/bin/env bash
# Long fuzzing run: every target of tests/fuzz.rs with N cases each
# (default 1,000,000), in release mode. Prints, per target, the cases run
# and the panics found (must be 0); record the result in RELIABILITY.md.
#   scripts/fuzz.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-1000000}"
start=$(date +%s)
FERRITE_FUZZ_CASES="$N" cargo test --release --test fuzz -- --nocapture --test-threads 2 2>&1 | grep -E "^fuzz |test result|panicked"
echo "fuzz: $N cases per target in $(( $(date +%s) - start )) s"
