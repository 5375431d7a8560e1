#!/usr/bin/env bash
# A one-node Slurm cluster on localhost, for trying the sbatch scripts on a laptop and for CI.
#
#   sudo bash slurm/local-cluster.sh start    # install (apt-get, Debian/Ubuntu) and start; idempotent
#   sudo bash slurm/local-cluster.sh status   # daemons and sinfo
#   sudo bash slurm/local-cluster.sh stop     # stop the daemons this script started
#
# Runs as root without systemd: munge, MariaDB + slurmdbd (job accounting: sacct and submitit
# read job states from it), slurmctld and slurmd, all with state and logs under $IMD_SLURM_STATE.
# Environment:
#   IMD_SLURM_STATE  state/log directory            (default /tmp/imd-slurm)
#   IMD_SLURM_DBD    1 = accounting via slurmdbd     (default 1; 0 = no sacct, no submitit states)
#   IMD_SLURM_WAIT   seconds to wait for each daemon (default 60)
#   IMD_SLURM_CLEAN  1 = `stop` also deletes the state directory (default 0)
# If a Slurm controller already answers, `start` leaves it as it is.
set -euo pipefail
S=${IMD_SLURM_STATE:-/tmp/imd-slurm}
DBD=${IMD_SLURM_DBD:-1}
WAIT=${IMD_SLURM_WAIT:-60}
NODE=$(hostname -s)
DB_SOCK=/run/mysqld/mysqld.sock

die() { echo "local-cluster: $*" >&2; exit 1; }
alive_pidfile() { [ -s "$1" ] && ps -o stat= -p "$(cat "$1")" 2>/dev/null | grep -qv Z; }
wait_for() {  # wait_for NAME COMMAND...: poll until COMMAND succeeds or WAIT seconds pass
  local name=$1; shift
  local deadline=$((SECONDS + WAIT))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      echo "local-cluster: $name did not come up within ${WAIT}s; last log lines:" >&2
      tail -n 20 "$S"/log/*.log >&2 || true
      exit 1
    fi
    sleep 0.2
  done
}
controller_up() { command -v scontrol >/dev/null && scontrol ping 2>/dev/null | grep -q UP; }
node_idle() { [ "$(sinfo -h -n "$NODE" -o %T 2>/dev/null)" = idle ]; }
munge_ok() { munge -n | unmunge; }
db_ok() { mariadb-admin --socket="$DB_SOCK" ping; }
dbd_ok() { sacctmgr -n list cluster; }

install_packages() {
  local pkgs="slurmctld slurmd slurm-client munge"
  [ "$DBD" = 1 ] && pkgs="$pkgs slurmdbd mariadb-server"
  # shellcheck disable=SC2086
  dpkg -s $pkgs >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null || die "packages missing ($pkgs) and no apt-get: install Slurm by hand"
  echo "local-cluster: installing $pkgs"
  apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
}

write_slurm_conf() {
  local hw accounting
  # slurmd -C prints this machine's CPUs/sockets/cores/threads/memory as a NodeName line.
  hw=$(slurmd -C | head -n1 | sed 's/^NodeName=[^ ]* //')
  if [ "$DBD" = 1 ]; then
    accounting="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux"
  else
    accounting="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
  fi
  mkdir -p /etc/slurm
  cat >/etc/slurm/slurm.conf <<CONF
# Written by slurm/local-cluster.sh: one node on localhost.
ClusterName=local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits out the credential lifetime (default 120 s) before it may start again.
AuthInfo=cred_expire=20
CredType=cred/munge
StateSaveLocation=$S/ctld
SlurmdSpoolDir=$S/d
SlurmctldPidFile=$S/slurmctld.pid
SlurmdPidFile=$S/slurmd.pid
SlurmctldLogFile=$S/log/slurmctld.log
SlurmdLogFile=$S/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
$accounting
JobCompType=jobcomp/none
# CR_CPU: a task needs one logical CPU, so two CPU ranks fit on a 2-thread laptop core.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=30
Waittime=0
NodeName=$NODE NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

start_munge() {
  mkdir -p /run/munge /etc/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  fi
  chown munge:munge /etc/munge/munge.key /run/munge
  chmod 400 /etc/munge/munge.key
  munge_ok >/dev/null 2>&1 || runuser -u munge -- /usr/sbin/munged
  wait_for munged munge_ok
}

start_accounting() {
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  if [ ! -d "$S/mysql/mysql" ]; then
    mariadb-install-db --user=mysql --datadir="$S/mysql" --skip-test-db >"$S/log/mariadb-install.log" 2>&1
  fi
  if ! alive_pidfile "$S/mysql/mysqld.pid"; then
    mariadbd --user=mysql --datadir="$S/mysql" --socket="$DB_SOCK" --skip-networking \
      --pid-file="$S/mysql/mysqld.pid" --log-error="$S/log/mariadb.log" >/dev/null 2>&1 &
  fi
  wait_for mariadb db_ok
  mariadb --socket="$DB_SOCK" -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  cat >/etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
LogFile=$S/log/slurmdbd.log
PidFile=$S/slurmdbd.pid
CONF
  chmod 600 /etc/slurm/slurmdbd.conf
  alive_pidfile "$S/slurmdbd.pid" || slurmdbd
  wait_for slurmdbd dbd_ok
}

cmd_start() {
  [ "$(id -u)" = 0 ] || die "start needs root (it installs packages and runs the daemons)"
  install_packages
  if controller_up; then
    echo "local-cluster: a Slurm controller already answers; leaving it as it is"
    sinfo
    return 0
  fi
  mkdir -p "$S"/ctld "$S"/d "$S"/log
  write_slurm_conf
  start_munge
  [ "$DBD" = 1 ] && start_accounting
  alive_pidfile "$S/slurmctld.pid" || slurmctld
  wait_for slurmctld controller_up
  alive_pidfile "$S/slurmd.pid" || slurmd -N "$NODE"
  wait_for "node $NODE idle" node_idle
  sinfo
}

cmd_stop() {
  local pf pid i
  for pf in "$S/slurmd.pid" "$S/slurmctld.pid" "$S/slurmdbd.pid" "$S/mysql/mysqld.pid" /run/munge/munged.pid; do
    [ -s "$pf" ] || continue
    pid=$(cat "$pf")
    if ps -o stat= -p "$pid" 2>/dev/null | grep -qv Z; then
      kill "$pid"
      for i in $(seq 100); do ps -o stat= -p "$pid" 2>/dev/null | grep -qv Z || break; sleep 0.1; done
      ps -o stat= -p "$pid" 2>/dev/null | grep -qv Z && kill -9 "$pid"
    fi
    rm -f "$pf"
  done
  [ "${IMD_SLURM_CLEAN:-0}" = 1 ] && rm -rf "$S"
  echo "local-cluster: stopped"
}

cmd_status() {
  local pf name
  for name in slurmd slurmctld slurmdbd mysql/mysqld; do
    pf="$S/$name.pid"
    if alive_pidfile "$pf"; then echo "$name: running (pid $(cat "$pf"))"; else echo "$name: not running"; fi
  done
  if controller_up; then sinfo; else echo "controller: not answering"; return 1; fi
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
