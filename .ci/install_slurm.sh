#!/usr/bin/env bash
# Install the Debian packages for the single-node CI Slurm cluster (.ci/slurm/start.sh).
#
# Idempotent: packages already installed are skipped without touching apt.
# Needs root and Debian/Ubuntu apt. No daemon is started here (the packages' systemd units are
# irrelevant: containers have no systemd; start.sh runs the daemons itself).
#
# Usage: .ci/install_slurm.sh
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)

die() { echo "install_slurm.sh: error: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (apt-get install); current uid $(id -u)"
command -v apt-get >/dev/null || die "apt-get not found: this script supports Debian/Ubuntu only"

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install_slurm.sh: all packages already installed: ${PACKAGES[*]}"
  exit 0
fi

echo "install_slurm.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d exit 101 stops the packages' postinst scripts from trying to start services.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created_policy=1
fi
cleanup() { [[ $created_policy -eq 1 ]] && rm -f "$policy"; return 0; }
trap cleanup EXIT

apt-get update -qq || die "apt-get update failed"
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
  || die "apt-get install ${missing[*]} failed"

for b in slurmctld slurmd slurmdbd sbatch sacct sacctmgr munged mariadbd; do
  command -v "$b" >/dev/null || [[ -x /usr/sbin/$b ]] || die "binary $b missing after install"
done
echo "install_slurm.sh: done"
