#!/usr/bin/env bash
# Stop the single-node CI Slurm cluster started by .ci/slurm/start.sh.
#
#   .ci/slurm/stop.sh [STATE_DIR]         # STATE_DIR defaults to $SLURM_STATE_DIR, else /tmp/pp-slurm
#
# Cancels the jobs still queued or running, then stops slurmd, slurmctld, slurmdbd, mariadbd and
# munged, in that order, by the PIDs in STATE_DIR/run/*.pid (never by process name: other Slurm or
# MariaDB instances on the machine are left alone). A PID is only signalled if /proc says it still
# runs the expected program (guards against PID reuse). Each daemon gets SIGTERM and up to
# PP_SLURM_STOP_TIMEOUT seconds (default 30) to exit, then SIGKILL.
# Removes the fake GPU devices and the /etc/slurm/slurm.conf symlink that start.sh created.
# The state dir itself (configs, logs, accounting DB) is kept; delete it by hand if wanted.
# Idempotent: stopping a stopped cluster is a no-op. Exits non-zero if a daemon survives SIGKILL.
set -euo pipefail

STATE=${1:-${SLURM_STATE_DIR:-/tmp/pp-slurm}}
STATE=$(realpath -m "$STATE")
RUN=$STATE/run
TIMEOUT=${PP_SLURM_STOP_TIMEOUT:-30}
export SLURM_CONF=$STATE/etc/slurm.conf

log() { echo "stop.sh: $*"; }
[[ $(id -u) -eq 0 ]] || { echo "stop.sh: error: must run as root" >&2; exit 1; }
[[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] || { echo "stop.sh: error: PP_SLURM_STOP_TIMEOUT must be a positive integer" >&2; exit 1; }
if [[ ! -d $RUN ]]; then
  log "no cluster state in $STATE (nothing to stop)"
  exit 0
fi

pid_of() {  # pid_of NAME -> prints the live pid running program NAME, or nothing
  local f=$RUN/$1.pid pid exe
  [[ -s $f ]] || return 0
  pid=$(tr -dc '0-9' <"$f")
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
  exe=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | awk '{print $1}')
  if [[ $(basename "${exe:-?}") != "$1" ]]; then
    log "warning: pid $pid from $f runs '${exe:-?}', not $1; leaving it alone"
    return 0
  fi
  echo "$pid"
}

# Cancel the jobs of this cluster while slurmctld still answers.
if [[ -n $(pid_of slurmctld) ]] && command -v squeue >/dev/null; then
  jobs=$(squeue -h -o '%i' 2>/dev/null || true)
  if [[ -n $jobs ]]; then
    log "cancelling jobs: $(echo $jobs)"
    # shellcheck disable=SC2086
    scancel $jobs || true
    for ((i = 0; i < 20; i++)); do
      [[ -z $(squeue -h -t running,completing -o '%i' 2>/dev/null) ]] && break
      sleep 0.5
    done
  fi
fi

status=0
for d in slurmd slurmctld slurmdbd mariadbd munged; do
  pid=$(pid_of "$d")
  if [[ -z $pid ]]; then
    rm -f "$RUN/$d.pid"
    continue
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < TIMEOUT * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$d (pid $pid) ignored SIGTERM for ${TIMEOUT}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 1
    if kill -0 "$pid" 2>/dev/null; then
      echo "stop.sh: error: $d (pid $pid) survived SIGKILL" >&2
      status=1
      continue
    fi
  fi
  rm -f "$RUN/$d.pid"
  log "stopped $d (pid $pid)"
done

if [[ -f $RUN/created_devices ]]; then
  while read -r dev; do
    [[ -n $dev && -c $dev ]] && rm -f "$dev"
  done <"$RUN/created_devices"
  rm -f "$RUN/created_devices"
fi
if [[ -f $RUN/created_symlink ]]; then
  link=$(<"$RUN/created_symlink")
  if [[ -L $link && $(readlink "$link") == "$STATE/etc/slurm.conf" ]]; then rm -f "$link"; fi
  rm -f "$RUN/created_symlink"
fi
((status == 0)) && log "cluster of $STATE stopped"
exit "$status"
