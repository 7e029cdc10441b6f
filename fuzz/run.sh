#!/usr/bin/env bash
# Fuzzes every parser of untrusted input (fuzz/fuzz_targets/) with cargo-fuzz
# and libFuzzer, FUZZ_TIME seconds per target, and fails if any target finds
# a crash, a panic or a hang. `make fuzz` runs it.
#
#   FUZZ_TIME=60           seconds per target
#   FUZZ_TARGETS="a b"     only these targets (default: all, see `cargo fuzz list`)
#   FUZZ_TOOLCHAIN=stable  build with this toolchain instead of nightly
#   CARGO_BUILD_JOBS=1     compile jobs (default 1: the ASan build is big and
#                          shares the machine)
#
# The committed seeds in fuzz/corpus/<target> are read, never written: what
# libFuzzer finds goes to fuzz/target/corpus/<target>, kept between runs.
# A crashing input lands in fuzz/artifacts/<target>/; reproduce it with
# `cargo +nightly fuzz run <target> <file>`, then make it a unit test beside
# the parser.
set -euo pipefail

cd "$(dirname "$0")"
FUZZ_TIME=${FUZZ_TIME:-60}
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1}

say() { echo "fuzz: $*" >&2; }
run() {
    echo "+ $*" >&2
    "$@"
}

# Settings come from RELAY_* variables too; the targets must see none of the
# caller's, or two machines would fuzz different code paths.
for v in $(compgen -e | grep '^RELAY_' || true); do unset "$v"; done

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    run cargo install cargo-fuzz --locked
fi

# libFuzzer needs nightly-only flags (-Zsanitizer, sancov passes). With no
# nightly installed, RUSTC_BOOTSTRAP lets stable accept them.
toolchain=${FUZZ_TOOLCHAIN:-}
if [ -z "$toolchain" ] && command -v rustup >/dev/null 2>&1 &&
    rustup toolchain list | grep -q '^nightly'; then
    toolchain=nightly
fi
cargo=(cargo)
if [ -n "$toolchain" ]; then
    cargo=(cargo "+$toolchain")
fi
if [ "$toolchain" != nightly ]; then
    say "no nightly toolchain: using ${toolchain:-the default} with RUSTC_BOOTSTRAP=1"
    export RUSTC_BOOTSTRAP=1
fi

# The relay's dependencies are pinned once, in the root Cargo.lock; starting
# from a copy of it builds the fuzzed code with exactly those versions.
run cp ../Cargo.lock Cargo.lock

if [ -n "${FUZZ_TARGETS:-}" ]; then
    read -r -a targets <<<"$FUZZ_TARGETS"
else
    mapfile -t targets < <("${cargo[@]}" fuzz list)
fi
[ "${#targets[@]}" -gt 0 ] || {
    say "no targets"
    exit 1
}

for t in "${targets[@]}"; do
    [ -f "fuzz_targets/$t.rs" ] || {
        say "no target $t (have: $(ls fuzz_targets | sed 's/\.rs$//' | tr '\n' ' '))"
        exit 2
    }
done

# Built before fuzzing, so compile errors show here rather than in a log;
# `cargo fuzz run` below then finds everything up to date.
if [ -n "${FUZZ_TARGETS:-}" ]; then
    for t in "${targets[@]}"; do run "${cargo[@]}" fuzz build "$t"; done
else
    run "${cargo[@]}" fuzz build
fi

failed=()
for t in "${targets[@]}"; do
    corpus=target/corpus/$t
    logs=target/fuzz-logs
    mkdir -p "$corpus" "$logs" "artifacts/$t"
    marker=$(mktemp)
    flags=(-max_total_time="$FUZZ_TIME" -timeout=10 -print_final_stats=1)
    if [ -f "dict/$t.dict" ]; then
        flags+=(-dict="dict/$t.dict")
    fi
    log=$logs/$t.log
    say "$t for ${FUZZ_TIME}s (libFuzzer output: fuzz/$log)"
    status=0
    dirs=("$corpus")
    if [ -d "corpus/$t" ]; then
        dirs+=("corpus/$t")
    fi
    run "${cargo[@]}" fuzz run "$t" "${dirs[@]}" -- "${flags[@]}" >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
    say "$t: ${execs:-?} runs, ${rate:-?} runs/s, corpus $(find "$corpus" -type f | wc -l) inputs, exit $status"
    if [ "$status" -ne 0 ]; then
        tail -n 40 "$log" >&2
        found=$(find "artifacts/$t" -type f -newer "$marker" | sort)
        for f in $found; do
            say "$t: crashing input fuzz/$f (reproduce: cargo ${toolchain:++$toolchain }fuzz run $t fuzz/$f)"
        done
        failed+=("$t")
    fi
    rm -f "$marker"
done

if [ "${#failed[@]}" -gt 0 ]; then
    say "FAILED: ${failed[*]}"
    exit 1
fi
say "no crash in ${#targets[@]} targets (${FUZZ_TIME}s each)"
