#!/usr/bin/env bash
# Run `python -m bench.throughput ARGS...` on a frozen copy of HEAD.
#
# A full run takes an hour on a small machine. In a repository where others commit (or leave
# half-saved files) meanwhile, each design would otherwise import whatever code is on disk
# when its process starts. The copy (git archive, no .git changes) shares the generated-input
# cache, and the report records the commit it measured.
set -euo pipefail
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
commit=$(git -C "$repo" rev-parse --short HEAD)
snap=$(mktemp -d "${TMPDIR:-/tmp}/leadscore-bench-$commit-XXXX")
trap 'rm -rf "$snap"' EXIT
git -C "$repo" archive HEAD | tar -x -C "$snap"
mkdir -p "$repo/bench/results/cache" "$snap/bench/results"
ln -s "$repo/bench/results/cache" "$snap/bench/results/cache"
export LEADSCORE_BENCH_CWD=$PWD
cd "$snap"
# Reports land in the repository's gitignored bench/results unless --json says otherwise.
LEADSCORE_BENCH_COMMIT=$commit python -m bench.throughput --json "$repo/bench/results/throughput.json" "$@"
