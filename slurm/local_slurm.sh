#!/usr/bin/env bash
# A throwaway Slurm on this machine, for testing sbatch templates and the launcher.
#
#   slurm/local_slurm.sh up   [--nodes 1|2] [--dir DIR] [--cpus N]   start it, print the env to use
#   slurm/local_slurm.sh down [--dir DIR]                            stop what `up` started in DIR
#   eval "$(slurm/local_slurm.sh env --dir DIR)"                     point sbatch/squeue/sacct at it
#
# Everything lives under DIR (default /tmp/r1hpc-slurm): configs, state, logs, a private munge key
# and socket, a MariaDB data directory. Daemons: munged, mariadbd (loopback only), slurmdbd (so
# `sacct` works; submitit needs it to see cancelled jobs), slurmctld and one slurmd per fake node
# (Debian's multiple-slurmd build: nodes n1, n2 on 127.0.0.1 with their own ports). Ports are
# picked free at start-up, so several clusters can live on one machine. `down` stops only the
# processes whose pid files `up` wrote (and only if they still run from DIR), never anything else.
# Needs root (slurmd runs jobs as the submitting user) and Debian's packages:
#   slurmctld slurmd slurm-client slurmdbd munge mariadb-server   (scripts/install_system_deps.sh)
set -euo pipefail

cmd="${1:-}"; shift || true
DIR=/tmp/r1hpc-slurm NODES=1 CPUS=2
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) DIR="$2"; shift 2 ;;
    --nodes) NODES="$2"; shift 2 ;;
    --cpus) CPUS="$2"; shift 2 ;;
    *) echo "local_slurm: unknown option $1" >&2; exit 2 ;;
  esac
done

say() { echo "[local_slurm] $*" >&2; }
die() { echo "[local_slurm] error: $*" >&2; exit 1; }

env_lines() {
  echo "export SLURM_CONF=$DIR/etc/slurm.conf"
}

# Free TCP ports on loopback: N consecutive ones starting at the first returned port, then singles.
free_ports() {  # usage: free_ports <consecutive> <singles>
  python3 - "$1" "$2" <<'EOF'
import random, socket, sys
def free(p):
    with socket.socket() as s:
        try: s.bind(("127.0.0.1", p)); return True
        except OSError: return False
run, singles = int(sys.argv[1]), int(sys.argv[2])
rng = random.Random()
while True:
    base = rng.randrange(20000, 60000)
    if all(free(base + i) for i in range(run)): break
out = [base]
while len(out) < 1 + singles:
    p = rng.randrange(20000, 60000)
    if p not in out and not (base <= p < base + run) and free(p): out.append(p)
print(*out)
EOF
}

wait_for() {  # usage: wait_for <seconds> <what> <command...>
  local secs="$1" what="$2"; shift 2
  local end=$((SECONDS + secs))
  while [ "$SECONDS" -lt "$end" ]; do timeout 10 "$@" >/dev/null 2>&1 && return 0; sleep 0.3; done
  die "$what did not come up within ${secs}s (logs in $DIR/log)"
}

# Stop the process in a pid file if it is still one of ours (its command line or SLURM_CONF names DIR).
stop_pidfile() {
  local f="$1" pid
  [ -f "$f" ] || return 0
  pid="$(cat "$f")"
  if [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && \
     cat "/proc/$pid/cmdline" "/proc/$pid/environ" 2>/dev/null | tr '\0' '\n' | grep -qF "$DIR"; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    [ -d "/proc/$pid" ] && kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

down() {
  [ -d "$DIR/run" ] || { say "nothing to stop in $DIR"; return 0; }
  # jobs first, so no job step outlives its slurmd
  SLURM_CONF="$DIR/etc/slurm.conf" timeout 20 scancel --full --user="$(id -un)" >/dev/null 2>&1 || true
  sleep 1
  for f in "$DIR"/run/slurmd-*.pid "$DIR/run/slurmctld.pid" "$DIR/run/slurmdbd.pid" \
           "$DIR/run/mariadbd.pid" "$DIR/run/munged.pid"; do
    [ -e "$f" ] && stop_pidfile "$f"
  done
  # what the daemons started and left behind (job scripts, srun, slurmstepd) runs from DIR or
  # carries its SLURM_CONF; nothing else is touched
  local p
  for p in $(ls /proc | grep -E '^[0-9]+$'); do
    [ "$p" = $$ ] && continue
    if cat "/proc/$p/cmdline" "/proc/$p/environ" 2>/dev/null | tr '\0' '\n' | grep -qF "$DIR/"; then
      kill -9 "$p" 2>/dev/null || true
    fi
  done
  say "stopped the daemons started in $DIR"
}

up() {
  [ "$(id -u)" = 0 ] || die "needs root (slurmd starts jobs as the submitting user)"
  for b in munged mariadbd mariadb-install-db slurmdbd slurmctld slurmd sbatch sacct; do
    command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || \
      die "$b not found: install slurmctld slurmd slurm-client slurmdbd munge mariadb-server"
  done
  case "$NODES" in 1|2) ;; *) die "--nodes must be 1 or 2" ;; esac
  [ -f "$DIR/run/slurmctld.pid" ] && die "$DIR already holds a running cluster (run: $0 down --dir $DIR)"
  mkdir -p "$DIR"/{etc,run,log,state,spool,munge,mysql}
  chmod 700 "$DIR/munge"
  read -r NODE_PORT CTLD_PORT DBD_PORT DB_PORT <<<"$(free_ports 2 3)"
  local host; host="$(hostname -s)"
  local cluster="r1hpc$(printf '%s' "$DIR" | cksum | cut -c1-6)"

  # munge: a private key and socket, so nothing is shared with a system munged.
  dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$DIR/munge/munge.key"
  /usr/sbin/munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
      --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/seed"
  wait_for 10 munged test -S "$DIR/munge/munge.socket"

  # MariaDB on loopback only, for slurmdbd.
  mariadb-install-db --no-defaults --datadir="$DIR/mysql" --user=root --auth-root-authentication-method=normal \
      >"$DIR/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed (see $DIR/log/mariadb-install.log)"
  setsid /usr/sbin/mariadbd --no-defaults --datadir="$DIR/mysql" --user=root --bind-address=127.0.0.1 \
      --port="$DB_PORT" --socket="$DIR/run/mysql.sock" --pid-file="$DIR/run/mariadbd.pid" \
      --log-error="$DIR/log/mariadbd.log" --skip-log-bin --innodb-buffer-pool-size=32M \
      --innodb-log-file-size=16M </dev/null >/dev/null 2>&1 &
  wait_for 60 mariadbd mariadb --no-defaults --socket="$DIR/run/mysql.sock" -uroot -e "select 1"
  mariadb --no-defaults --socket="$DIR/run/mysql.sock" -uroot -e \
    "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"

  local auth="AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=10"
  cat >"$DIR/etc/slurmdbd.conf" <<EOF
$auth
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
EOF
  chmod 600 "$DIR/etc/slurmdbd.conf"

  local nodes="n1" ports="$NODE_PORT"
  [ "$NODES" = 2 ] && nodes="n[1-2]" && ports="[$NODE_PORT-$((NODE_PORT + 1))]"
  cat >"$DIR/etc/slurm.conf" <<EOF
# Throwaway cluster written by slurm/local_slurm.sh
ClusterName=$cluster
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
$auth
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=10
MinJobAge=300
JobRequeue=1
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$DIR/munge/munge.socket
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$nodes NodeAddr=127.0.0.1 NodeHostname=$host Port=$ports CPUs=$CPUS RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  export SLURM_CONF="$DIR/etc/slurm.conf"

  /usr/sbin/slurmdbd
  wait_for 60 slurmdbd sacctmgr -i list cluster
  /usr/sbin/slurmctld
  wait_for 30 slurmctld scontrol ping
  local n
  for n in $(scontrol show hostnames "$nodes"); do
    mkdir -p "$DIR/spool/$n"
    /usr/sbin/slurmd -N "$n"
  done
  # nodes up and idle (not just registered)
  wait_for 60 "slurmd (${nodes})" bash -c "[ \"\$(sinfo -h -N -t idle -o %N | sort -u | wc -l)\" = $NODES ]"
  say "up: $NODES node(s) ${nodes}, cluster $cluster, state in $DIR"
  env_lines
}

case "$cmd" in
  up) up ;;
  down) down ;;
  env) env_lines ;;
  *) echo "usage: $0 {up|down|env} [--nodes 1|2] [--dir DIR] [--cpus N]" >&2; exit 2 ;;
esac
