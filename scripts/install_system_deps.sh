#!/usr/bin/env bash
# Debian packages the tests need (sandbox isolation; a headless browser for the report page; a C++
# compiler for the csrc/ extension the install builds; a throwaway local Slurm: slurm/local_slurm.sh;
# tcmalloc, the host allocator of r1hpc's compute commands: r1hpc/launch/allocator.py).
# Installs only what is missing; needs root.
set -euo pipefail
need=()
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
[ -x /usr/sbin/slurmctld ] || need+=(slurmctld)
[ -x /usr/sbin/slurmd ] || need+=(slurmd)
[ -x /usr/sbin/slurmdbd ] || need+=(slurmdbd)
command -v sbatch >/dev/null 2>&1 || need+=(slurm-client)
[ -x /usr/sbin/munged ] || need+=(munge)
[ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v g++ >/dev/null 2>&1 || need+=(g++)
ls /usr/lib/*/libtcmalloc_minimal.so.4 >/dev/null 2>&1 || need+=(libtcmalloc-minimal4)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "[system deps] missing: ${need[*]} (install them as root; related tests will be skipped)" >&2
  exit 0
fi
echo "[system deps] apt-get install ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
