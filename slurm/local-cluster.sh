#!/usr/bin/env bash
# A local Slurm cluster, for trying the sbatch scripts on a laptop and for CI: one node on
# localhost, or two nodes that each live in their own network namespace on a Linux bridge, with
# their own hostname and address, so that ranks, srun and the controller really talk over TCP.
#
#   sudo bash slurm/local-cluster.sh start [--nodes 1|2]  # install (apt-get, Debian/Ubuntu) and start; idempotent
#   sudo bash slurm/local-cluster.sh status               # daemons, namespaces, links and the nodes
#   sudo bash slurm/local-cluster.sh stop                 # remove what this script started and made
#   sudo bash slurm/local-cluster.sh cut NODE             # two nodes: NODE fails (link down, its processes end)
#   sudo bash slurm/local-cluster.sh restore NODE         # NODE comes back, as after a reboot
#
# Runs as root without systemd: munge, MariaDB + slurmdbd (job accounting: sacct and submitit
# read job states from it), slurmctld and slurmd, all with state and logs under $IMD_SLURM_STATE.
#
# Two nodes (--nodes 2): a bridge imdbr0 holding $IMD_SLURM_SUBNET.1 (the controller's address),
# and per node a network namespace imdnN with a veth pair (imdvN on the bridge, eth0 inside,
# address $IMD_SLURM_SUBNET.1N) and its own hostname (a UTS namespace), where slurmd runs.
# Nothing routes out of the namespaces: traffic stays between these addresses. Node names are
# not written where the resolver looks; Slurm knows each node's address (NodeAddr), and the
# training engine takes the rendezvous address from there (imd_hpc/engine/dist.py).
# A running cluster of the other shape is switched: its partition stops starting jobs, the
# running ones finish (queued ones keep their place), then the controller restarts.
#
# Site policy (both forms): these nodes have no GPU and few CPUs, while the sbatch scripts ask a
# real cluster for 8 GPUs and 10 CPUs per task. A cli_filter/lua script next to slurm.conf
# (cli_filter.lua; sbatch, salloc and srun run it once the #SBATCH lines and the command line are
# merged) turns GPU requests into 0 and caps --cpus-per-task to what a node's CPUs allow for the
# tasks per node, and says so in one line; so `sbatch --nodes=2 --ntasks-per-node=1
# slurm/train_l.sh` runs here as written. The server-side job_submit/lua cannot do this here:
# sbatch itself refuses a GPU request ("Invalid generic resource") on a cluster without
# GresTypes=gpu before slurmctld sees it, and it exports SLURM_GPUS_PER_NODE=8 into the job, so
# srun inside the job would ask for the GPUs again.
#
# Environment:
#   IMD_SLURM_STATE       state/log directory                       (default /tmp/imd-slurm)
#   IMD_SLURM_DBD         1 = accounting via slurmdbd                (default 1; 0 = no sacct, no submitit states)
#   IMD_SLURM_WAIT        seconds to wait for each daemon            (default 60)
#   IMD_SLURM_DRAIN_WAIT  seconds to wait for running jobs before switching shape (default 1800)
#   IMD_SLURM_SUBNET      first three octets of the two-node /24     (default 10.213.7)
#   IMD_SLURM_CLEAN       1 = `stop` also deletes the state directory (default 0)
# If a Slurm controller that this script did not start already answers, `start` leaves it as it is.
set -euo pipefail
S=${IMD_SLURM_STATE:-/tmp/imd-slurm}
DBD=${IMD_SLURM_DBD:-1}
WAIT=${IMD_SLURM_WAIT:-60}
DRAIN_WAIT=${IMD_SLURM_DRAIN_WAIT:-1800}
SUBNET=${IMD_SLURM_SUBNET:-10.213.7}
HOST=$(hostname -s)
DB_SOCK=/run/mysqld/mysqld.sock
BRIDGE=imdbr0
NS_NODES=(imdn1 imdn2)  # the two-node form's node names, also its namespaces' names
POLICY=/etc/slurm/cli_filter.lua  # the site policy, next to slurm.conf

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
kill_pid() {  # TERM, up to 10 s, then KILL
  local pid=$1 i
  ps -o stat= -p "$pid" 2>/dev/null | grep -qv Z || return 0
  kill "$pid" 2>/dev/null || return 0
  for i in $(seq 100); do ps -o stat= -p "$pid" 2>/dev/null | grep -qv Z || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}
stop_pidfile() { [ -s "$1" ] && kill_pid "$(cat "$1")"; rm -f "$1"; }
controller_up() { command -v scontrol >/dev/null && scontrol ping 2>/dev/null | grep -q UP; }
node_up() { sinfo -h -n "$1" -o %T 2>/dev/null | grep -Eqx 'idle|mixed|allocated|completing'; }  # answering, in service
munge_ok() { munge -n | unmunge; }
db_ok() { mariadb-admin --socket="$DB_SOCK" ping; }
dbd_ok() { sacctmgr -n list cluster; }
shape_running() {  # node count of the cluster this script runs (a controller started before --nodes existed: 1)
  alive_pidfile "$S/slurmctld.pid" || return 1
  if [ -s "$S/nodes" ]; then cat "$S/nodes"; else echo 1; fi
}
node_names() { if [ "$1" = 2 ]; then echo "${NS_NODES[@]}"; else echo "$HOST"; fi; }
slurmd_pidfile() { if [ "$1" = "$HOST" ]; then echo "$S/slurmd.pid"; else echo "$S/slurmd-$1.pid"; fi; }
node_index() {  # imdn2 -> 2; dies on a name that is not a two-node node
  local i
  for i in "${!NS_NODES[@]}"; do [ "${NS_NODES[$i]}" = "$1" ] && { echo $((i + 1)); return; }; done
  die "no node $1 here (the two-node cluster has ${NS_NODES[*]})"
}

install_packages() {
  # slurm-wlm-basic-plugins holds cli_filter_lua.so (the site policy), linked to liblua5.1.
  local pkgs="slurmctld slurmd slurm-client munge slurm-wlm-basic-plugins liblua5.1-0"
  [ "$DBD" = 1 ] && pkgs="$pkgs slurmdbd mariadb-server"
  # shellcheck disable=SC2086
  dpkg -s $pkgs >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null || die "packages missing ($pkgs) and no apt-get: install Slurm by hand"
  echo "local-cluster: installing $pkgs"
  apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
}

# ---- the network of the two-node form --------------------------------------------------------

check_namespaces() {  # before anything is changed: can this machine make what the two-node form needs?
  local probe=imdprobe$$ err
  command -v ip >/dev/null && command -v nsenter >/dev/null && command -v unshare >/dev/null \
    || die "two nodes need ip (iproute2), nsenter and unshare (util-linux)"
  if ! err=$(ip netns add "$probe" 2>&1); then die "cannot create a network namespace here: ${err:-ip netns add failed}"; fi
  ip netns del "$probe"
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    if ! err=$(ip link add "$probe" type bridge 2>&1); then die "cannot create a bridge here: $err"; fi
    ip link del "$probe"
  fi
  # The subnet must be free: no address of it on any interface but our bridge.
  if ip -o -4 addr show | grep -v " $BRIDGE " | grep -q " inet ${SUBNET//./\\.}\."; then
    die "$SUBNET.0/24 is in use on this machine; pick another with IMD_SLURM_SUBNET"
  fi
}

net_up() {
  local i ns
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$SUBNET.1/24" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
  for i in 1 2; do
    ns=${NS_NODES[$((i - 1))]}
    [ -e "/run/netns/$ns" ] || ip netns add "$ns"
    if ! ip link show "imdv$i" >/dev/null 2>&1; then
      ip link add "imdv$i" type veth peer name eth0 netns "$ns"
      ip link set "imdv$i" master "$BRIDGE"
      ip -n "$ns" addr add "$SUBNET.1$i/24" dev eth0
    fi
    ip link set "imdv$i" up
    ip -n "$ns" link set lo up  # single-rank jobs rendezvous on 127.0.0.1 inside the node
    ip -n "$ns" link set eth0 up
  done
}

net_down() {  # end what still runs in the namespaces (slurmd, job steps), then remove links and namespaces
  local i ns pid
  for i in 1 2; do
    ns=${NS_NODES[$((i - 1))]}
    if [ -e "/run/netns/$ns" ]; then
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill_pid "$pid"; done
      ip netns del "$ns"
    fi
    ! ip link show "imdv$i" >/dev/null 2>&1 || ip link del "imdv$i"
    rm -rf "$S/d-$ns" "$S/slurmd-$ns.pid"  # the node's spool: it no longer exists
  done
  ! ip link show "$BRIDGE" >/dev/null 2>&1 || ip link del "$BRIDGE"
}

# ---- configuration ---------------------------------------------------------------------------

write_slurm_conf() {  # write_slurm_conf NODES
  local nodes=$1 hw accounting ctld_addr acct_host spool pidf logf node_lines i
  # slurmd -C prints this machine's CPUs/sockets/cores/threads/memory as a NodeName line.
  hw=$(slurmd -C | head -n1 | sed 's/^NodeName=[^ ]* //')
  if [ "$nodes" = 2 ]; then
    # Every node describes the whole machine: the two share its cores.
    ctld_addr=$SUBNET.1 acct_host=$SUBNET.1
    spool=$S/d-%n pidf=$S/slurmd-%n.pid logf=$S/log/slurmd-%n.log
    node_lines=""
    for i in 1 2; do node_lines+="NodeName=${NS_NODES[$((i - 1))]} NodeAddr=$SUBNET.1$i $hw State=UNKNOWN"$'\n'; done
  else
    ctld_addr=127.0.0.1 acct_host=localhost
    spool=$S/d pidf=$S/slurmd.pid logf=$S/log/slurmd.log
    node_lines="NodeName=$HOST NodeAddr=127.0.0.1 $hw State=UNKNOWN"$'\n'
  fi
  if [ "$DBD" = 1 ]; then
    accounting="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$acct_host
JobAcctGatherType=jobacct_gather/linux"
  else
    accounting="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
  fi
  mkdir -p /etc/slurm
  cat >/etc/slurm/slurm.conf <<CONF
# Written by slurm/local-cluster.sh: $nodes node(s).
ClusterName=local
SlurmctldHost=$HOST($ctld_addr)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits out the credential lifetime (default 120 s) before it may start again.
AuthInfo=cred_expire=20
CredType=cred/munge
StateSaveLocation=$S/ctld
SlurmdSpoolDir=$spool
SlurmctldPidFile=$S/slurmctld.pid
SlurmdPidFile=$pidf
SlurmctldLogFile=$S/log/slurmctld.log
SlurmdLogFile=$logf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
$accounting
JobCompType=jobcomp/none
# Site policy of this CPU-only cluster: cli_filter.lua, written next to this file.
CliFilterPlugins=cli_filter/lua
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
${node_lines}PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP$([ "$nodes" = 2 ] && echo " LLN=YES")
CONF
  # LLN (two nodes): each job goes to the least loaded node, so independent jobs spread out.
  write_site_policy "$(sed -n 's/.*\bCPUs=\([0-9][0-9]*\).*/\1/p' <<<"$hw")"
}

write_site_policy() {  # write_site_policy NODE_CPUS: the CPU-only cluster's cli_filter.lua
  local cpus=$1
  [ -n "$cpus" ] || die "slurmd -C printed no CPUs= field; cannot write the site policy"
  cat >"$POLICY.tmp" <<LUA
-- Site policy of the CPU-only local Slurm cluster: written by slurm/local-cluster.sh together
-- with slurm.conf (CliFilterPlugins=cli_filter/lua), removed by its stop. sbatch, salloc and srun
-- run slurm_cli_pre_submit once the #SBATCH lines and the command line are merged, before the
-- request leaves the client. The scripts keep asking a real GPU cluster for what they need;
-- here GPU requests become 0 and CPUs per task shrink until the tasks of a node fit its CPUs.
local NODE_CPUS = $cpus  -- the CPUs= of this cluster's NodeName lines (slurmd -C)
local GPU_COUNTS = {"gpus", "gpus-per-node", "gpus-per-task", "gpus-per-socket"}  -- each becomes 0
-- Amounts per GPU cannot be unset from Lua (sbatch refuses 0 and ""), and mean nothing without
-- GPUs: a job that gives one is refused with a line that says so.
local PER_GPU = {"cpus-per-gpu", "mem-per-gpu", "ntasks-per-gpu"}

local function count(spec)  -- "[type:]N" -> N ("8", "a100:8", "gpu:0"); a name alone ("gpu", "gpu:a100") -> 1
  return tonumber(string.match(spec, "([^:]*)$")) or 1
end

local function tasks_per_node(options)  -- --ntasks-per-node, else --ntasks over the fewest nodes
  local per_node = tonumber(options["ntasks-per-node"] or "")
  if per_node and per_node > 0 then return per_node end
  local tasks = tonumber(options["ntasks"] or "") or 1
  local nodes = tonumber(string.match(options["nodes"] or "", "^(%d+)") or "") or 1
  return math.max(1, math.ceil(tasks / math.max(1, nodes)))
end

function slurm_cli_setup_defaults(options, early) return slurm.SUCCESS end
function slurm_cli_post_submit(offset, job_id, step_id) return slurm.SUCCESS end

function slurm_cli_pre_submit(options, offset)
  for _, name in ipairs(PER_GPU) do
    local spec = options[name]
    local unset = spec == nil or spec == "" or (tonumber(spec) or 1) <= 0  -- unset reads "0" or "-2"
    if not unset then
      slurm.log_error("local site policy: this cluster has no GPUs; --%s=%s cannot apply (ask for CPUs or memory per task)", name, spec)
      return slurm.ERROR
    end
  end
  local changed = {}
  for _, name in ipairs(GPU_COUNTS) do
    local spec = options[name]
    if spec ~= nil and spec ~= "" and count(spec) > 0 then
      options[name] = "0"
      changed[#changed + 1] = string.format("--%s=%s -> 0", name, spec)
    end
  end
  local gres = options["gres"]
  if gres ~= nil and gres ~= "" and gres ~= "none" then
    local kept, dropped = {}, {}
    for entry in string.gmatch(gres, "[^,]+") do
      local bare = string.gsub(entry, "^gres:", "")
      if string.match(bare, "^gpu") and count(bare) > 0 then dropped[#dropped + 1] = bare else kept[#kept + 1] = bare end
    end
    if #dropped > 0 then
      options["gres"] = (#kept > 0) and table.concat(kept, ",") or "none"
      changed[#changed + 1] = string.format("--gres drops %s", table.concat(dropped, ","))
    end
  end
  local fit = math.max(1, math.floor(NODE_CPUS / tasks_per_node(options)))
  local per_task = tonumber(options["cpus-per-task"] or "") or 0
  if per_task > fit then
    options["cpus-per-task"] = tostring(fit)
    changed[#changed + 1] = string.format("--cpus-per-task=%d -> %d", per_task, fit)
  end
  if #changed > 0 then
    slurm.log_info("local site policy (no GPUs, %d CPUs a node): %s", NODE_CPUS, table.concat(changed, ", "))
  end
  return slurm.SUCCESS
end
LUA
  mv "$POLICY.tmp" "$POLICY"
}

# ---- daemons ---------------------------------------------------------------------------------

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

start_slurmd() {  # start_slurmd NODE: in the root namespace for the one-node form, else in NODE's namespaces
  local node=$1
  alive_pidfile "$(slurmd_pidfile "$node")" && return 0
  if [ "$node" = "$HOST" ]; then
    slurmd -N "$node"
  else
    mkdir -p "$S/d-$node"
    # nsenter, not `ip netns exec`: that remounts /sys, and slurmd then fails to set up its
    # cgroup plugin. unshare --uts gives the node its own hostname.
    nsenter --net="/run/netns/$node" unshare --uts sh -c "hostname $node && exec slurmd -N $node"
  fi
}

stop_slurmds() {
  local pf
  for pf in "$S/slurmd.pid" "$S"/slurmd-*.pid; do [ -e "$pf" ] && stop_pidfile "$pf"; done
  return 0
}

drain_for_switch() {  # queued jobs keep their place; running ones finish first
  local from=$1 deadline=$((SECONDS + DRAIN_WAIT)) running
  scontrol update PartitionName=debug State=DOWN
  while running=$(squeue -h -t RUNNING,COMPLETING,CONFIGURING -o %i | wc -l) && [ "$running" -gt 0 ]; do
    if [ $SECONDS -ge $deadline ]; then
      scontrol update PartitionName=debug State=UP
      die "$running job(s) still running on the $from-node cluster after ${DRAIN_WAIT}s; shape left as it was"
    fi
    echo "local-cluster: switching from $from node(s): waiting for $running running job(s) (new ones queue meanwhile)"
    sleep 5
  done
}

cmd_start() {
  local nodes=1 running node
  while [ $# -gt 0 ]; do
    case "$1" in
      --nodes) nodes=${2:-}; shift 2 || die "--nodes needs a value" ;;
      --nodes=*) nodes=${1#--nodes=}; shift ;;
      *) die "start: unknown argument $1 (start [--nodes 1|2])" ;;
    esac
  done
  [ "$nodes" = 1 ] || [ "$nodes" = 2 ] || die "--nodes must be 1 or 2"
  [ "$(id -u)" = 0 ] || die "start needs root (it installs packages and runs the daemons)"
  [ "$nodes" = 2 ] && check_namespaces
  install_packages
  running=$(shape_running || true)
  if [ -z "$running" ] && controller_up; then
    echo "local-cluster: a Slurm controller already answers; leaving it as it is"
    sinfo
    return 0
  fi
  if [ -n "$running" ] && [ "$running" != "$nodes" ]; then
    drain_for_switch "$running"
    stop_slurmds
    stop_pidfile "$S/slurmctld.pid"
    [ "$running" = 2 ] && net_down
  fi
  mkdir -p "$S"/ctld "$S"/d "$S"/log
  write_slurm_conf "$nodes"
  echo "$nodes" >"$S/nodes"
  # The bridge first: with two nodes the clients reach slurmdbd and slurmctld at its address.
  [ "$nodes" = 2 ] && net_up
  start_munge
  [ "$DBD" = 1 ] && start_accounting
  alive_pidfile "$S/slurmctld.pid" || slurmctld
  wait_for slurmctld controller_up
  # After a switch the partition comes back from the saved state as DOWN; open it again.
  scontrol update PartitionName=debug State=UP
  for node in $(node_names "$nodes"); do start_slurmd "$node"; done
  for node in $(node_names "$nodes"); do wait_for "node $node" node_up "$node"; done
  sinfo -N -o "%12N %16o %10T %5c %P"
}

cmd_stop() {
  stop_slurmds
  local pf
  if [ -e "/run/netns/${NS_NODES[0]}" ] || ip link show "$BRIDGE" >/dev/null 2>&1; then net_down; fi
  for pf in "$S/slurmctld.pid" "$S/slurmdbd.pid" "$S/mysql/mysqld.pid" /run/munge/munged.pid; do
    stop_pidfile "$pf"
  done
  rm -f "$S/nodes" "$POLICY"
  [ "${IMD_SLURM_CLEAN:-0}" = 1 ] && rm -rf "$S"
  echo "local-cluster: stopped"
}

cmd_status() {
  local pf name nodes i ns
  nodes=$(shape_running || true)
  for name in slurmctld slurmdbd mysql/mysqld; do
    pf="$S/$name.pid"
    if alive_pidfile "$pf"; then echo "$name: running (pid $(cat "$pf"))"; else echo "$name: not running"; fi
  done
  for name in $(node_names "${nodes:-1}"); do
    pf=$(slurmd_pidfile "$name")
    if alive_pidfile "$pf"; then echo "slurmd $name: running (pid $(cat "$pf"))"; else echo "slurmd $name: not running"; fi
  done
  if [ "$nodes" = 2 ]; then
    for i in 1 2; do
      ns=${NS_NODES[$((i - 1))]}
      echo "namespace $ns: $(ip -n "$ns" -br -4 addr show dev eth0 2>/dev/null || echo missing)," \
           "link imdv$i $(cat "/sys/class/net/imdv$i/operstate" 2>/dev/null || echo missing)"
    done
  fi
  if controller_up; then sinfo -N -o "%12N %16o %10T %5c %P"; else echo "controller: not answering"; return 1; fi
}

cmd_link() {  # cmd_link down|up NODE: a node that fails like a power loss, and comes back like a reboot
  local dir=$1 node=${2:-} i pid
  [ -n "$node" ] || die "usage: $0 cut|restore NODE"
  [ "$(id -u)" = 0 ] || die "only root can cut or restore a node"
  [ "$(shape_running || true)" = 2 ] || die "no two-node cluster of this script runs (start --nodes 2)"
  i=$(node_index "$node")
  if [ "$dir" = down ]; then
    # The link goes first, so nothing the dying processes send (FIN, RST) reaches a peer: the
    # others hear silence, as from a node that lost power, and only timeouts can tell them.
    ip link set "imdv$i" down
    for pid in $(ip netns pids "$node"); do kill -9 "$pid" 2>/dev/null || true; done
    rm -f "$(slurmd_pidfile "$node")"
    echo "local-cluster: $node is down (link imdv$i down, its slurmd and job processes killed)"
  else
    ip link set "imdv$i" up
    start_slurmd "$node"
    echo "local-cluster: $node is back; Slurm returns it to service once it registers (ReturnToService=2)"
  fi
}

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  cut) cmd_link down "${2:-}" ;;
  restore) cmd_link up "${2:-}" ;;
  *) echo "usage: $0 start [--nodes 1|2] | stop | status | cut NODE | restore NODE" >&2; exit 2 ;;
esac
