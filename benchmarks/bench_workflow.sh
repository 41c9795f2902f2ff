#!/usr/bin/env bash
# Whole-workflow benchmark: the demo from scratch, timed, with peak memory, plus `snakemake -n` time.
#
#   benchmarks/bench_workflow.sh WORKDIR [--configfile FILE] [--cores N] [--dry-runs N]
#                                [--markdown FILE] [--dry-run-only] [-- EXTRA SNAKEMAKE ARGS/TARGETS]
#
# Safe by design: everything is built in WORKDIR, which must not exist or be empty; the repository's
# own results/ is never read, moved or deleted, and nothing is ever removed. WORKDIR gets a symlink
# `resources -> <repo>/resources` because config paths such as resources/fashion_mnist_subset are
# relative to Snakemake's working directory (--directory).
#
# Measures
#   - wall time of `snakemake --profile <repo>/profiles/local --cores N` (the demo's own profile) from
#     an empty WORKDIR;
#   - peak RSS two ways: GNU time's "Maximum resident set size" (the largest single process of the
#     tree: Linux reports the max over reaped descendants) and the peak of the summed RSS of the
#     whole process tree, sampled every 0.5 s (jobs that run side by side add up; a peak shorter
#     than 0.5 s can be missed);
#   - `snakemake -n` (DAG building, no job run) on the fresh WORKDIR, averaged over --dry-runs runs
#     (default 3), for the given config and for config/paper.yaml when it exists.
# Writes a Markdown snippet (default WORKDIR/bench_workflow.md) for docs/benchmarks.md; the run's
# log is WORKDIR/bench_workflow.log.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
INVOCATION="$0 $*"
usage() { sed -n '4,6p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

[ $# -ge 1 ] || usage
WORKDIR=$1; shift
CONFIG=$REPO/config/config.yaml
CORES=2
DRY_RUNS=3
MARKDOWN=
DRY_ONLY=0
EXTRA=()
while [ $# -gt 0 ]; do
  case $1 in
    --configfile) CONFIG=$(realpath "$2"); shift 2 ;;
    --cores) CORES=$2; shift 2 ;;
    --dry-runs) DRY_RUNS=$2; shift 2 ;;
    --markdown) MARKDOWN=$2; shift 2 ;;
    --dry-run-only) DRY_ONLY=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) usage ;;
    *) echo "bench_workflow.sh: unknown argument $1" >&2; usage ;;
  esac
done

if [ -e "$WORKDIR" ] && [ -n "$(ls -A "$WORKDIR")" ]; then
  echo "bench_workflow.sh: $WORKDIR exists and is not empty; give a new or empty folder (nothing is deleted)" >&2
  exit 2
fi
mkdir -p "$WORKDIR"
WORKDIR=$(cd "$WORKDIR" && pwd)
ln -s "$REPO/resources" "$WORKDIR/resources"
MARKDOWN=${MARKDOWN:-$WORKDIR/bench_workflow.md}
mkdir -p "$(dirname "$MARKDOWN")"
LOG=$WORKDIR/bench_workflow.log

# The venv's snakemake and projection-probe, as scripts/demo.sh uses them.
if [ -x "$REPO/.venv/bin/snakemake" ]; then export PATH="$REPO/.venv/bin:$PATH"; fi
SNAKEMAKE=(snakemake -s "$REPO/Snakefile" --directory "$WORKDIR")

now() { date +%s.%N; }

# Mean seconds of `snakemake -n` over DRY_RUNS runs; "failed (rc N)" when it does not succeed.
dry_run_time() {
  local config=$1 total=0 start end rc
  for _ in $(seq "$DRY_RUNS"); do
    start=$(now)
    rc=0
    "${SNAKEMAKE[@]}" --configfile "$config" --cores "$CORES" -n --quiet >>"$LOG" 2>&1 || rc=$?
    end=$(now)
    if [ "$rc" -ne 0 ]; then echo "failed (rc $rc, see $LOG)"; return; fi
    total=$(echo "$total + $end - $start" | bc -l)
  done
  printf '%.2f s' "$(echo "$total / $DRY_RUNS" | bc -l)"
}

# Sum of RSS (kB) over PID and all its descendants, from one `ps` snapshot.
tree_rss_kb() {
  ps -e -o pid=,ppid=,rss= | awk -v root="$1" '
    { parent[$1] = $2; rss[$1] = $3 }
    END {
      total = 0
      for (p in rss) { q = p; while (q != "" && q != 0 && q != 1) { if (q == root) { total += rss[p]; break } q = parent[q] } }
      print total
    }'
}

echo "[bench_workflow] working directory $WORKDIR, config $CONFIG, $CORES cores" | tee "$LOG"

DRY_DEMO=$(dry_run_time "$CONFIG")
PAPER=$REPO/config/paper.yaml
if [ -f "$PAPER" ]; then DRY_PAPER=$(dry_run_time "$PAPER"); else DRY_PAPER="(config/paper.yaml not present)"; fi
N_JOBS=$("${SNAKEMAKE[@]}" --configfile "$CONFIG" --cores "$CORES" -n "${EXTRA[@]}" 2>/dev/null \
         | awk '$1 == "total" { print $2; exit }' || true)
echo "[bench_workflow] snakemake -n: $DRY_DEMO (config), $DRY_PAPER (paper); ${N_JOBS:-?} jobs to run"

WALL="not run (--dry-run-only)"; RSS_MAX_PROC="-"; RSS_TREE="-"; RC=0
if [ "$DRY_ONLY" -eq 0 ]; then
  TIME_FILE=$WORKDIR/bench_workflow.time
  PEAK_FILE=$WORKDIR/bench_workflow.peak_rss_kb
  echo 0 >"$PEAK_FILE"
  start=$(now)
  /usr/bin/time -v -o "$TIME_FILE" "${SNAKEMAKE[@]}" --profile "$REPO/profiles/local" --configfile "$CONFIG" \
    --cores "$CORES" "${EXTRA[@]}" >>"$LOG" 2>&1 &
  RUN_PID=$!
  # The sampler keeps the running maximum in a file so that the parent can read it afterwards.
  (
    peak=0
    while kill -0 "$RUN_PID" 2>/dev/null; do
      rss=$(tree_rss_kb "$RUN_PID")
      if [ "$rss" -gt "$peak" ]; then peak=$rss; echo "$peak" >"$PEAK_FILE"; fi
      sleep 0.5
    done
  ) &
  SAMPLER_PID=$!
  wait "$RUN_PID" || RC=$?
  end=$(now)
  wait "$SAMPLER_PID" || true
  WALL=$(printf '%.1f s' "$(echo "$end - $start" | bc -l)")
  kb=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$TIME_FILE")
  RSS_MAX_PROC=$(printf '%.0f MiB' "$(echo "${kb:-0} / 1024" | bc -l)")
  RSS_TREE=$(printf '%.0f MiB' "$(echo "$(cat "$PEAK_FILE") / 1024" | bc -l)")
  echo "[bench_workflow] exit $RC, wall $WALL, peak RSS: largest process $RSS_MAX_PROC, whole tree $RSS_TREE"
fi

CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
SMK_VERSION=$(snakemake --version 2>/dev/null || echo "?")
GIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git -C "$REPO" diff --quiet HEAD 2>/dev/null; then GIT="$GIT-dirty"; fi
LOAD=$(cut -d' ' -f1 /proc/loadavg)
{
  echo "### Whole workflow ($(basename "$CONFIG"), from scratch, --cores $CORES)"
  echo
  echo "Command: \`$INVOCATION\` (config $CONFIG)"
  echo
  echo "Machine: $(date -u +%Y-%m-%dT%H:%M:%SZ) · $CPU · $(nproc) CPUs (load $LOAD at the end) · snakemake $SMK_VERSION · git $GIT"
  echo
  echo "| measure | value |"
  echo "|---|---|"
  echo "| jobs | ${N_JOBS:-?} |"
  echo "| wall time | $WALL (exit $RC) |"
  echo "| peak RSS, largest single process (GNU time) | $RSS_MAX_PROC |"
  echo "| peak RSS, whole process tree (sampled every 0.5 s) | $RSS_TREE |"
  echo "| \`snakemake -n\`, $(basename "$CONFIG"), mean of $DRY_RUNS | $DRY_DEMO |"
  echo "| \`snakemake -n\`, paper.yaml, mean of $DRY_RUNS | $DRY_PAPER |"
} >"$MARKDOWN"
echo "[bench_workflow] wrote $MARKDOWN"
exit "$RC"
