#!/usr/bin/env bash
# `make fuzz`: run every fuzz target (or FUZZ_TARGETS="a b") for
# FUZZ_SECONDS each (default 300) with libFuzzer, then print a table of
# executions, coverage, corpus size and crashes per target. Needs the
# nightly toolchain (rustup toolchain install nightly) and cargo-fuzz,
# which it installs into target/tools on first use. Logs and crashing
# inputs: target/fuzz/<target>.log, fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${FUZZ_SECONDS:-300}
targets=${FUZZ_TARGETS:-$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^flownexus-fuzz$')}
export PATH="$PWD/../target/tools/bin:$PATH"
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked --root ../target/tools
fi
cargo +nightly fuzz build -O >/dev/null
mkdir -p ../target/fuzz
failed=0
printf '%-16s %12s %8s %8s %8s %8s\n' target execs exec/s cov corpus crashes
for t in $targets; do
  log=../target/fuzz/$t.log
  dict=()
  if [ -f "dict/$t.dict" ]; then dict=(-dict="dict/$t.dict"); fi
  status=0
  # The two targets whose input is a sequence of steps (datagrams with
  # time between them; records on a session) explore as much in 1 KB,
  # dozens of steps, and run four times as many inputs as with 4 KB.
  case $t in
    coap_exchange | dtls_session) max_len=1024 ;;
    *) max_len=4096 ;;
  esac
  cargo +nightly fuzz run -O "$t" "corpus/$t" -- -max_total_time="$seconds" -print_final_stats=1 \
    -max_len="$max_len" -timeout=10 "${dict[@]}" >"$log" 2>&1 || status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  corpus=$(find "corpus/$t" -type f | wc -l)
  crashes=$(find "artifacts/$t" -type f 2>/dev/null | wc -l)
  printf '%-16s %12s %8s %8s %8s %8s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$corpus" "$crashes"
  if [ "$status" != 0 ] || [ "$crashes" != 0 ]; then failed=1; fi
done
if [ "$failed" = 1 ]; then
  echo "fuzz: a target failed; the inputs are in fuzz/artifacts/, the logs in target/fuzz/" >&2
  exit 1
fi
