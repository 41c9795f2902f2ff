#!/usr/bin/env bash
# Start a real single-node Slurm cluster on this machine (for CI and the integration tests).
#
#   .ci/slurm/start.sh [STATE_DIR]        # STATE_DIR defaults to $SLURM_STATE_DIR, else /tmp/pp-slurm
#
# Daemons, in order: munged (as user munge), mariadbd, slurmdbd, slurmctld, `slurmd -N localhost`.
# Every config, pid, log, spool and database file lives under STATE_DIR, except munge's socket,
# which stays at its default /run/munge/munge.socket.2 so that every munge client finds it.
# The node "localhost" (partition "debug", account "ml", cluster "localcluster") offers
# CPUs = nproc, RealMemory = total memory minus a reserve for the login side (snakemake itself),
# and PP_SLURM_NGPUS fake GPUs of type PP_SLURM_GPU_TYPE as GRES (/dev/fakegpuN, char 195:N).
#
# Idempotent: if the cluster of this STATE_DIR is already up, it says so and exits 0. An existing
# STATE_DIR is reused (accounting DB and job IDs persist). If any step fails, the daemons started so
# far are stopped again (.ci/slurm/stop.sh) and the tail of the relevant log is printed.
#
# Environment knobs (all optional):
#   SLURM_STATE_DIR        state dir if no argument is given              [/tmp/pp-slurm]
#   PP_SLURM_CPUS          CPUs of the node (may exceed nproc: jobs then oversubscribe) [nproc]
#   PP_SLURM_MEM_RESERVE_MB memory kept back from Slurm for the login side [max(2048, 25% of RAM)]
#   PP_SLURM_NGPUS         number of fake GPUs                             [2]
#   PP_SLURM_GPU_TYPE      GRES type of the fake GPUs                      [a100]
#   PP_SLURM_PORT_BASE     slurmctld port; slurmd/slurmdbd/MariaDB use +1/+2/+3 [6817]
#   PP_SLURM_START_TIMEOUT seconds to wait for each daemon and for the node to be idle [60]
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${1:-${SLURM_STATE_DIR:-/tmp/pp-slurm}}
STATE=$(realpath -m "$STATE")
CPUS=${PP_SLURM_CPUS:-$(nproc)}
NGPUS=${PP_SLURM_NGPUS:-2}
GPU_TYPE=${PP_SLURM_GPU_TYPE:-a100}
PORT_BASE=${PP_SLURM_PORT_BASE:-6817}
TIMEOUT=${PP_SLURM_START_TIMEOUT:-60}
CTLD_PORT=$PORT_BASE
SLURMD_PORT=$((PORT_BASE + 1))
DBD_PORT=$((PORT_BASE + 2))
DB_PORT=$((PORT_BASE + 3))
MUNGE_SOCKET_DIR=/run/munge

log() { echo "start.sh: $*"; }
die() { echo "start.sh: error: $*" >&2; exit 1; }

# ---------------------------------------------------------------- preconditions
[[ $(id -u) -eq 0 ]] || die "must run as root (daemons, mknod); current uid $(id -u)"
for b in munged mariadbd mariadb-install-db mariadb slurmdbd slurmctld slurmd sinfo sacctmgr; do
  command -v "$b" >/dev/null || die "'$b' not found; install the packages with .ci/install_slurm.sh"
done
[[ $CPUS =~ ^[1-9][0-9]*$ ]] || die "PP_SLURM_CPUS must be a positive integer, got '$CPUS'"
[[ $NGPUS =~ ^[1-9][0-9]*$ ]] || die "PP_SLURM_NGPUS must be a positive integer, got '$NGPUS'"
[[ $GPU_TYPE =~ ^[A-Za-z0-9_.]+$ ]] || die "PP_SLURM_GPU_TYPE must match [A-Za-z0-9_.]+, got '$GPU_TYPE'"
[[ $PORT_BASE =~ ^[0-9]+$ ]] || die "PP_SLURM_PORT_BASE must be an integer, got '$PORT_BASE'"
[[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "PP_SLURM_START_TIMEOUT must be a positive integer, got '$TIMEOUT'"
[[ -f /etc/munge/munge.key ]] || die "/etc/munge/munge.key missing (the munge package creates it)"

export SLURM_CONF=$STATE/etc/slurm.conf
RUN=$STATE/run
LOGDIR=$STATE/log

pid_alive() {  # pid_alive PIDFILE -> 0 if the pid file names a live process
  local pid
  [[ -s $1 ]] || return 1
  pid=$(<"$1")
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)
alive=()
for d in "${DAEMONS[@]}"; do pid_alive "$RUN/$d.pid" && alive+=("$d"); done
if [[ ${#alive[@]} -eq ${#DAEMONS[@]} ]]; then
  log "cluster of $STATE is already running"
  sinfo
  exit 0
elif [[ ${#alive[@]} -gt 0 ]]; then
  die "only some daemons of $STATE are running (${alive[*]}); run .ci/slurm/stop.sh $STATE first"
fi

# Another cluster (other state dir, or a system Slurm) on the same ports?
for p in "$CTLD_PORT" "$SLURMD_PORT" "$DBD_PORT" "$DB_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    die "TCP port $p is in use: is another Slurm cluster running? Stop it, or set PP_SLURM_PORT_BASE"
  fi
done
if [[ -S $MUNGE_SOCKET_DIR/munge.socket.2 ]] && munge -n </dev/null >/dev/null 2>&1; then
  die "a munged not started by this script already serves $MUNGE_SOCKET_DIR/munge.socket.2; stop it first"
fi

# ---------------------------------------------------------------- on failure: clean up
fail_log=""
cleanup_on_failure=0
on_exit() {
  local rc=$?
  ((rc != 0 && cleanup_on_failure)) || return 0
  echo "start.sh: FAILED (exit $rc)" >&2
  if [[ -n $fail_log && -f $fail_log ]]; then
    echo "---- last lines of $fail_log ----" >&2
    tail -n 30 "$fail_log" >&2
    echo "----" >&2
  fi
  echo "start.sh: stopping the daemons started so far" >&2
  "$HERE/stop.sh" "$STATE" >&2 || true
}
trap on_exit EXIT
cleanup_on_failure=1

wait_for() {  # wait_for DESCRIPTION COMMAND...: poll up to $TIMEOUT s
  local what=$1; shift
  local i
  for ((i = 0; i < TIMEOUT * 2; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "start.sh: error: timed out after ${TIMEOUT}s waiting for $what" >&2
  return 1
}

# ---------------------------------------------------------------- state dir and configs
mkdir -p "$STATE"/{etc,run,log,spool/slurmctld,spool/slurmd,munge,mysql}
chmod 0755 "$STATE" "$STATE/run"
chown munge:munge "$STATE/munge"
chmod 0700 "$STATE/munge"
# munged runs as user munge: it must be able to reach $STATE/munge.
if ! su -s /bin/sh munge -c "test -w '$STATE/munge'"; then
  die "user munge cannot write $STATE/munge (a parent folder of $STATE is not traversable); \
choose a state dir below a world-traversable folder, e.g. /tmp/pp-slurm"
fi

total_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
reserve_mb=${PP_SLURM_MEM_RESERVE_MB:-$(( total_mb / 4 > 2048 ? total_mb / 4 : 2048 ))}
[[ $reserve_mb =~ ^[0-9]+$ ]] || die "PP_SLURM_MEM_RESERVE_MB must be an integer, got '$reserve_mb'"
mem_mb=$((total_mb - reserve_mb))
((mem_mb >= 1000)) || die "only ${total_mb} MB of memory, ${reserve_mb} MB reserved: less than 1000 MB left for Slurm"

# Fake GPU devices.
gpu_files=()
: > "$RUN/created_devices"
for ((i = 0; i < NGPUS; i++)); do
  dev=/dev/fakegpu$i
  if [[ -e $dev ]]; then
    [[ -c $dev && $(stat -c '%t:%T' "$dev") == "c3:$(printf '%x' "$i")" ]] \
      || die "$dev exists but is not the character device 195:$i; remove it"
  else
    mknod "$dev" c 195 "$i"
    echo "$dev" >> "$RUN/created_devices"
  fi
  gpu_files+=("$dev")
done
if ((NGPUS == 1)); then gpu_spec=/dev/fakegpu0; else gpu_spec="/dev/fakegpu[0-$((NGPUS - 1))]"; fi

render() {  # render TEMPLATE OUT
  sed -e "s|@STATE@|$STATE|g" -e "s|@CPUS@|$CPUS|g" -e "s|@MEM_MB@|$mem_mb|g" \
      -e "s|@NGPUS@|$NGPUS|g" -e "s|@GPU_TYPE@|$GPU_TYPE|g" -e "s|@GPU_FILES@|$gpu_spec|g" \
      -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" \
      -e "s|@DBD_PORT@|$DBD_PORT|g" "$1" > "$2"
  if grep -n '@[A-Z_]*@' "$2"; then die "unfilled placeholder in $2 (from $1)"; fi
}
render "$HERE/slurm.conf.template" "$STATE/etc/slurm.conf"
render "$HERE/gres.conf.template" "$STATE/etc/gres.conf"

DB_PASS_FILE=$STATE/etc/db_password
[[ -s $DB_PASS_FILE ]] || (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$DB_PASS_FILE")
DB_PASS=$(<"$DB_PASS_FILE")
(umask 077; cat > "$STATE/etc/slurmdbd.conf" <<EOF
# Generated by .ci/slurm/start.sh. slurmdbd finds this file next to \$SLURM_CONF.
AuthType=auth/munge
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOGDIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
)

# ---------------------------------------------------------------- munged
mkdir -p "$MUNGE_SOCKET_DIR"
chown munge:munge "$MUNGE_SOCKET_DIR"
chmod 0755 "$MUNGE_SOCKET_DIR"
fail_log=$STATE/munge/munged.log
su -s /bin/sh munge -c "/usr/sbin/munged --pid-file='$STATE/munge/munged.pid' \
  --log-file='$STATE/munge/munged.log' --seed-file='$STATE/munge/munged.seed'"
wait_for "munged" munge -n
# Keep all pid files in one place for stop.sh (munged can only write into its own 0700 folder).
wait_for "munged pid file" test -s "$STATE/munge/munged.pid"
cp "$STATE/munge/munged.pid" "$RUN/munged.pid"
log "munged up (pid $(<"$RUN/munged.pid"))"

# ---------------------------------------------------------------- MariaDB
fail_log=$LOGDIR/mariadb.log
DB_SOCKET=$RUN/mysqld.sock
if [[ ! -d $STATE/mysql/mysql ]]; then
  mariadb-install-db --no-defaults --user=root --datadir="$STATE/mysql" --skip-test-db \
    --auth-root-authentication-method=socket >"$LOGDIR/mariadb-install.log" 2>&1 \
    || { fail_log=$LOGDIR/mariadb-install.log; false; }
fi
setsid /usr/sbin/mariadbd --no-defaults --user=root --datadir="$STATE/mysql" \
  --socket="$DB_SOCKET" --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
  --pid-file="$RUN/mariadbd.pid" --log-error="$LOGDIR/mariadb.log" \
  --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 &
wait_for "MariaDB" mariadb-admin --no-defaults --socket="$DB_SOCKET" -u root ping
wait_for "MariaDB pid file" test -s "$RUN/mariadbd.pid"
mariadb --no-defaults --socket="$DB_SOCKET" -u root <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL PRIVILEGES ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF
log "MariaDB up (pid $(<"$RUN/mariadbd.pid"), 127.0.0.1:$DB_PORT)"

# ---------------------------------------------------------------- slurmdbd + accounting
fail_log=$LOGDIR/slurmdbd.log
# sacctmgr prompts (and, on EOF, loops forever) for some queries: always -i, no stdin, a timeout.
sam() { timeout 30 sacctmgr -i "$@" </dev/null; }
slurmdbd
wait_for "slurmdbd" sam -n list cluster
wait_for "slurmdbd pid file" test -s "$RUN/slurmdbd.pid"
if ! sam -n -P list cluster format=cluster | grep -x localcluster >/dev/null; then
  sam add cluster localcluster >/dev/null
fi
if ! sam -n -P list account format=account | grep -x ml >/dev/null; then
  sam add account ml Cluster=localcluster Description="CI account" Organization=ci >/dev/null
fi
if ! sam -n -P list assoc format=cluster,account,user | grep -x 'localcluster|ml|root' >/dev/null; then
  sam add user root Account=ml DefaultAccount=ml Cluster=localcluster >/dev/null
fi
sam -n -P list assoc format=cluster,account,user | grep -x 'localcluster|ml|root' >/dev/null \
  || { echo "start.sh: error: association root/ml missing after sacctmgr add user" >&2; false; }
log "slurmdbd up (pid $(<"$RUN/slurmdbd.pid")), cluster localcluster, account ml"

# ---------------------------------------------------------------- slurmctld + slurmd
fail_log=$LOGDIR/slurmctld.log
slurmctld
wait_for "slurmctld" scontrol ping
fail_log=$LOGDIR/slurmd.log
slurmd -N localhost
wait_for "slurmd pid file" test -s "$RUN/slurmd.pid"

node_idle() { [[ $(sinfo -h -n localhost -o '%t') == idle ]]; }
if ! wait_for "node localhost to be idle" node_idle; then
  sinfo -R >&2 || true
  scontrol show node localhost >&2 || true
  false
fi
cleanup_on_failure=0

# Convenience for interactive shells: /etc/slurm/slurm.conf -> our config, if nothing is there.
if [[ ! -e /etc/slurm/slurm.conf && ! -L /etc/slurm/slurm.conf ]]; then
  mkdir -p /etc/slurm
  ln -s "$SLURM_CONF" /etc/slurm/slurm.conf
  echo "/etc/slurm/slurm.conf" > "$RUN/created_symlink"
fi

log "cluster up: $CPUS CPUs, ${mem_mb} MB, ${NGPUS}x gpu:$GPU_TYPE (fake), state in $STATE"
sinfo -o '%P %a %D %t %c %m %G'
cat <<EOF

Use it with:
  export SLURM_CONF=$SLURM_CONF
  sbatch -A ml -p debug --gpus=$GPU_TYPE:1 --wrap 'echo \$CUDA_VISIBLE_DEVICES'
  snakemake --profile <profile with slurm_partition=debug, slurm_account=ml> ...
Logs: $LOGDIR    Stop with: $HERE/stop.sh $STATE
EOF
