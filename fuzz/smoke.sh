#!/usr/bin/env bash
# Fuzz smoke: builds every cargo-fuzz target with nightly and runs each for SECONDS (default 30)
# on a scratch copy of its committed corpus (fuzz/corpus/<target>/ and
# fuzz/regressions/<target>/), so the committed corpus never grows. Prints one line per target:
#   FUZZ <target> execs=<n> result=ok|crash
# and exits non-zero if any target crashed; the crashing input is copied to
# fuzz/artifacts/<target>/ (move it to fuzz/regressions/<target>/ with the fix).
#
# Environment: FUZZ_TARGETS="a b" limits the targets; CARGO_TARGET_DIR is honoured.
set -euo pipefail

seconds="${1:-30}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

# The core is safe Rust (unsafe_code is forbidden), so AddressSanitizer adds nothing but time:
# build without a sanitizer; debug assertions and overflow checks stay on (cargo-fuzz default).
build_flags=(--sanitizer none)
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
  build_flags+=(--target-dir "${CARGO_TARGET_DIR}/fuzz")
fi

targets="${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}"
echo "== cargo +nightly fuzz build (${targets//$'\n'/ })"
cargo +nightly fuzz build "${build_flags[@]}"

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failed=0
summary=()
for target in $targets; do
  corpus="$scratch/$target"
  mkdir -p "$corpus" "artifacts/$target"
  for dir in "corpus/$target" "regressions/$target"; do
    if [ -d "$dir" ]; then
      find "$dir" -maxdepth 1 -type f -exec cp {} "$corpus/" \;
    fi
  done
  log="$scratch/$target.log"
  echo "== fuzz $target for ${seconds}s"
  result=ok
  if ! cargo +nightly fuzz run "${build_flags[@]}" "$target" "$corpus" -- \
      -max_total_time="$seconds" -print_final_stats=1 \
      -artifact_prefix="$here/artifacts/$target/" >"$log" 2>&1; then
    result=crash
    failed=1
    tail -n 60 "$log"
  fi
  # libFuzzer's final stats line: "stat::number_of_executed_units: N"; fall back to the last
  # "#N" status line.
  execs="$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)"
  if [ -z "$execs" ]; then
    execs="$(grep -o '^#[0-9]*' "$log" | tail -n 1 | tr -d '#')"
  fi
  line="FUZZ $target execs=${execs:-0} result=$result"
  echo "$line"
  summary+=("$line")
done

echo "== fuzz summary"
printf '%s\n' "${summary[@]}"
exit "$failed"
