#!/usr/bin/env bash
# make test-timing: the cost of refusing a signature must not depend on where it differs.
# Counts the instructions of one `Verifier::verify` call per case under valgrind (callgrind):
# instruction counts are deterministic, unlike timings on a shared machine. Every mismatch
# (first, middle, last, all MAC bytes) must cost exactly the same; a control comparison that
# stops at the first difference must not, which shows the method sees what it is looking for.
set -euo pipefail
bin=${1:?usage: signature_timing.sh path/to/signature_timing}
command -v valgrind >/dev/null || { echo "test-timing needs valgrind: apt-get install valgrind"; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# Instructions executed inside $2 (a function name) when the example runs case $1.
count() {
  valgrind --tool=callgrind --callgrind-out-file="$out/$1" --collect-atstart=no \
    --toggle-collect="$2" "$bin" "$1" >/dev/null 2>"$out/$1.log" \
    || { cat "$out/$1.log"; exit 1; }
  awk '/^totals:/ {print $2}' "$out/$1"
}

status=0
declare -A ir
echo "Instructions in Verifier::verify (1 KiB body, one secret):"
for case in first-byte middle-byte last-byte all-bytes match; do
  ir[$case]=$(count "$case" 'aftercart_shopify::signature::Verifier::verify')
  printf '  %-12s %10s\n' "$case" "${ir[$case]}"
done
for case in middle-byte last-byte all-bytes; do
  if [ "${ir[$case]}" != "${ir[first-byte]}" ]; then
    echo "FAIL: a mismatch at $case costs ${ir[$case]} instructions, at first-byte ${ir[first-byte]}"
    status=1
  fi
done
if [ -z "${ir[first-byte]}" ] || [ "${ir[first-byte]}" -lt 1000 ]; then
  echo "FAIL: verify was not measured (${ir[first-byte]:-no} instructions): was it renamed or inlined?"
  status=1
fi

echo "Control, an early-exit comparison of the same MACs:"
first=$(count control-first 'signature_timing::early_exit_eq')
last=$(count control-last 'signature_timing::early_exit_eq')
printf '  %-12s %10s\n  %-12s %10s\n' control-first "$first" control-last "$last"
if [ "$first" = "$last" ]; then
  echo "FAIL: the control's cost did not change with the position: the method cannot see a leak"
  status=1
fi
[ $status = 0 ] && echo "OK: refusing a signature costs the same wherever it differs"
exit $status
