#!/usr/bin/env bash
# Start a throwaway one-node SLURM cluster for the tests, as root and without systemd (Debian 12):
# munge with its own key and socket, MariaDB + slurmdbd (so that `sacct` works, which the
# snakemake SLURM executor needs), slurmctld and slurmd, with cgroup v1 memory enforcement (a job
# using more than its --mem is killed: OUT_OF_MEMORY, as on a real cluster). All state lives under
# $CI_BASE; outside it only apt packages and the symlinks /etc/slurm/{slurm,cgroup}.conf are written
# (SLURM's job-step plugin drops SLURM_CONF from a job's environment, so the default path must work).
# Rerunning leaves running daemons alone. Adapted from the tested recipe in ../shared/ci/.
set -euo pipefail

CI_BASE=${CI_BASE:-/tmp/ci-services}
MYSQL_PORT=${MYSQL_PORT:-13306}
export DEBIAN_FRONTEND=noninteractive
MUNGE_DIR=$CI_BASE/munge MY_DIR=$CI_BASE/mysql SL_DIR=$CI_BASE/slurm
MUNGE_SOCK=$MUNGE_DIR/munge.socket.2

die() { echo "[slurm] ERROR: $*" >&2; exit 1; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
stop_pidfile() { alive "$1" || return 0; local p; p=$(cat "$1"); kill "$p"; for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done; kill -9 "$p" 2>/dev/null || true; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_for() { local n=$1; shift; for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done; return 1; }
[ "$(id -u)" = 0 ] || die "run as root"
mkdir -p "$CI_BASE"; chmod 755 "$CI_BASE"   # the service users must be able to traverse it

# 1. Packages.
pkgs=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[slurm] apt-get install ${missing[*]}"
  apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
  apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}" >"$CI_BASE/apt.log" 2>&1 \
    || { tail -30 "$CI_BASE/apt.log"; die "apt-get failed"; }
fi

# 2. munge, with its own key and socket.
install -d -o munge -g munge -m 755 "$MUNGE_DIR"
if ! alive "$MUNGE_DIR/munged.pid"; then
  [ -s "$MUNGE_DIR/munge.key" ] || runuser -u munge -- mungekey -c -k "$MUNGE_DIR/munge.key"
  runuser -u munge -- /usr/sbin/munged --key-file="$MUNGE_DIR/munge.key" --socket="$MUNGE_SOCK" \
    --pid-file="$MUNGE_DIR/munged.pid" --log-file="$MUNGE_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed"
fi
wait_for 50 sh -c "munge -n -S $MUNGE_SOCK | unmunge -S $MUNGE_SOCK" || die "munge does not work"

# 3. SLURM's configuration: one node (this machine, named localhost), partition debug, memory as a
# consumable resource enforced by cgroups.
mkdir -p "$SL_DIR"/{state,spool,log} /etc/slurm
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 85 / 100 ))
printf 'CgroupPlugin=cgroup/v1\nConstrainCores=yes\nConstrainRAMSpace=yes\n' >"$SL_DIR/cgroup.conf"
cat >"$SL_DIR/slurm.conf.new" <<EOF
ClusterName=ci
SlurmctldHost=localhost
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCK
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$SL_DIR/state
SlurmdSpoolDir=$SL_DIR/spool
SlurmctldPidFile=$SL_DIR/slurmctld.pid
SlurmdPidFile=$SL_DIR/slurmd.pid
SlurmctldLogFile=$SL_DIR/log/slurmctld.log
SlurmdLogFile=$SL_DIR/log/slurmd.log
MailProg=/bin/true
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup,task/affinity
JobAcctGatherType=jobacct_gather/cgroup
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
# With auth/munge this names the munge socket that slurmctld uses to reach slurmdbd.
AccountingStoragePass=$MUNGE_SOCK
JobCompType=jobcomp/none
MinJobAge=600
ReturnToService=2
SlurmdTimeout=300
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
CONF_CHANGED=0
cmp -s "$SL_DIR/slurm.conf.new" "$SL_DIR/slurm.conf" || CONF_CHANGED=1
mv "$SL_DIR/slurm.conf.new" "$SL_DIR/slurm.conf"
ln -sfn "$SL_DIR/slurm.conf" /etc/slurm/slurm.conf
ln -sfn "$SL_DIR/cgroup.conf" /etc/slurm/cgroup.conf

# 4. MariaDB and slurmdbd: accounting, so that sacct (the executor's status command) works.
install -d -o mysql -g mysql -m 755 "$MY_DIR"
if ! alive "$MY_DIR/mysqld.pid"; then
  [ -d "$MY_DIR/data/mysql" ] || mariadb-install-db --user=mysql --datadir="$MY_DIR/data" \
    --auth-root-authentication-method=socket --skip-test-db >"$MY_DIR/install.log" 2>&1
  /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$MY_DIR/data" --socket="$MY_DIR/mysqld.sock" \
    --pid-file="$MY_DIR/mysqld.pid" --port="$MYSQL_PORT" --bind-address=127.0.0.1 --log-error="$MY_DIR/error.log" \
    --innodb-buffer-pool-size=128M --innodb-flush-log-at-trx-commit=0 --skip-log-bin >/dev/null 2>&1 &
  wait_for 150 mariadb-admin --socket="$MY_DIR/mysqld.sock" ping || { tail "$MY_DIR/error.log"; die "mariadb did not start"; }
fi
mariadb --socket="$MY_DIR/mysqld.sock" -u root -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
  CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmpw';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
cat >"$SL_DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=localhost
DbdPort=6819
SlurmUser=root
PidFile=$SL_DIR/slurmdbd.pid
LogFile=$SL_DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MYSQL_PORT
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
EOF
chmod 600 "$SL_DIR/slurmdbd.conf"
alive "$SL_DIR/slurmdbd.pid" || SLURM_CONF=$SL_DIR/slurm.conf /usr/sbin/slurmdbd  # reads slurmdbd.conf beside it
wait_for 100 port_open 6819 || { tail "$SL_DIR/log/slurmdbd.log"; die "slurmdbd did not start"; }

# 5. Controller and node (the machine's hostname is not localhost: name the node explicitly).
if [ "$CONF_CHANGED" = 1 ]; then
  stop_pidfile "$SL_DIR/slurmd.pid"; stop_pidfile "$SL_DIR/slurmctld.pid"
fi
alive "$SL_DIR/slurmctld.pid" || /usr/sbin/slurmctld -i
wait_for 150 sh -c "scontrol ping | grep -q UP" || { tail "$SL_DIR/log/slurmctld.log"; die "slurmctld is not up"; }
alive "$SL_DIR/slurmd.pid" || /usr/sbin/slurmd -N localhost
wait_for 150 sh -c "sinfo -h -n localhost -o %t | grep -Eq '^(idle|mix|alloc)'" || { sinfo; tail "$SL_DIR/log/slurmd.log"; die "node not idle"; }

# 6. Ready when a batch job runs and accounting sees it.
J=$(sbatch --parsable -t 1 --mem=50 -o "$SL_DIR/ready_%j.out" --wrap 'echo ok') || die "sbatch failed"
wait_for 150 sh -c "squeue -h -j $J -t all -o %T | grep -q COMPLETED" || die "batch job $J did not complete"
wait_for 100 sh -c "sacct -n -X -j $J -o State | grep -q COMPLETED" || die "sacct does not see job $J"
echo "[slurm] ready: $(sinfo -h -o '%P %a %D %t %c cpus %m MB'), job $J $(sacct -n -X -j "$J" -o State%12 | xargs)"
