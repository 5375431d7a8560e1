"""Rank detection for every way a run can be launched, and process-group set-up.

Launchers and what they leave in the environment:

- torchrun / the deepspeed launcher: RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
  (the deepspeed launcher also passes ``--local_rank N``).
- srun (a Slurm job step): SLURM_PROCID, SLURM_LOCALID, SLURM_STEP_NUM_TASKS (or SLURM_NTASKS),
  SLURM_JOB_NODELIST; the master is the first host of the node list, at the address Slurm
  itself uses for it (NodeAddr: node names need not resolve, and on real clusters often resolve
  to another interface), the port is derived from the job id so that every rank computes the
  same one.
- plain ``python``: one rank; a free local port is picked.

DeepSpeed reads these variables (without them it tries MPI discovery and asks for mpi4py), so
``detect()`` returns them and ``setup()`` writes them into ``os.environ`` before initializing.

Across hosts, gloo binds each rank to the address its hostname resolves to, and to loopback
when the name does not resolve, which peers on other hosts cannot reach. ``setup()`` therefore
names the interface that routes to the master (GLOO_SOCKET_IFNAME) unless the user has. Every
collective waits at most ``timeout_s`` (the config's run.collective_timeout_s): a lost peer
raises on the survivors instead of hanging them; ``is_comm_failure`` tells such errors apart.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

# Slurm job ids map into this port range; far from the 29500 default torchrun uses.
_SLURM_PORT_BASE, _SLURM_PORT_SPAN = 15000, 20000


@dataclass
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int
    launcher: str  # "env" (torchrun, deepspeed), "slurm", "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def env(self) -> dict[str, str]:
        return {"RANK": str(self.rank), "LOCAL_RANK": str(self.local_rank),
                "WORLD_SIZE": str(self.world_size), "MASTER_ADDR": self.master_addr,
                "MASTER_PORT": str(self.master_port)}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_slurm_host(nodelist: str) -> str:
    """First hostname of a Slurm node list ("node[01-04],gpu7" -> "node01")."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                             text=True, timeout=30, check=True).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    # Without scontrol: expand the first entry's first range by hand.
    first = nodelist.split(",")[0]
    if "[" in first:
        prefix, rest = first.split("[", 1)
        return prefix + rest.split(",")[0].split("-")[0].rstrip("]")
    return first


def slurm_node_addr(node: str) -> str:
    """The address Slurm reaches `node` at (`scontrol show node`'s NodeAddr); the name without scontrol."""
    try:
        out = subprocess.run(["scontrol", "show", "node", "-o", node], capture_output=True, text=True,
                             timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return node
    for field in out.split():
        if field.startswith("NodeAddr="):
            return field.split("=", 1)[1] or node
    return node


def detect(local_rank_arg: int | None = None, environ: dict[str, str] | None = None) -> DistInfo:
    """Work out this process's rank from the launcher's environment (see the module docstring)."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", local_rank_arg if local_rank_arg is not None else 0))
        return DistInfo(rank, local, world, env.get("MASTER_ADDR", "127.0.0.1"),
                        int(env.get("MASTER_PORT", 29500)), "env")
    # SLURM_STEP_ID is set inside an srun step only; a plain python in the batch script itself
    # also sees SLURM_PROCID=0 and SLURM_NTASKS=N, but is one process, not N ranks.
    if "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
        world = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1)
        job_id = int(env.get("SLURM_JOB_ID", "0"))
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
        addr = env.get("MASTER_ADDR") or (slurm_node_addr(first_slurm_host(nodelist)) if world > 1 else "127.0.0.1")
        port = int(env.get("MASTER_PORT") or _SLURM_PORT_BASE + job_id % _SLURM_PORT_SPAN)
        return DistInfo(int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0)), world, addr, port, "slurm")
    if local_rank_arg is not None and local_rank_arg > 0:
        raise RuntimeError(f"--local_rank={local_rank_arg} given but RANK/WORLD_SIZE are not set; "
                           "launch through torchrun, deepspeed or srun")
    return DistInfo(0, 0, 1, "127.0.0.1", free_port(), "single")


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def pick_device(info: DistInfo) -> torch.device:
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        torch.cuda.set_device(info.local_rank % n)
        return torch.device("cuda", info.local_rank % n)
    return torch.device("cpu")


_saved_env: dict[str, str | None] = {}


def extensions_dir() -> Path:
    """Where DeepSpeed's JIT-compiled ops are cached: one directory per Python environment.

    DeepSpeed builds its ops (on the CPU: the shared-memory comm op) on first use, 20-40 s. Two
    virtual environments sharing one directory rebuild it each time the other one ran last
    (32-35 s per start here instead of 6.5 s), so the directory is keyed by sys.prefix."""
    key = hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]
    name = Path(sys.prefix).name.lstrip(".") or "env"  # ".venv" -> "venv": no hidden directory
    return Path.home() / ".cache" / "imd_hpc" / "torch_extensions" / f"{name}-{key}"


def path_with_own_ninja(path: str) -> str:
    """PATH with this environment's bin directory first when that directory holds ninja.

    torch builds DeepSpeed's ops with the first `ninja` on PATH: an activated environment finds its
    own (DeepSpeed's dependency), `.venv/bin/python ...` without activation finds the system's.
    Two ninja versions hash the build commands differently, so each start rebuilt the op the other
    had built (30-36 s, paid by every job of a sweep's first round). One ninja, one build."""
    bindir = str(Path(sys.executable).parent)
    if not (Path(bindir) / "ninja").is_file():
        return path
    return os.pathsep.join([bindir] + [p for p in path.split(os.pathsep) if p and p != bindir])


def interface_towards(host: str) -> str | None:
    """Name of the local network interface that traffic to `host` leaves through, or None.

    A connected UDP socket sends nothing but makes the kernel pick the route and the source
    address; the interface holding that address is the one gloo must bind to."""
    import psutil  # a DeepSpeed dependency

    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(host, 9, proto=socket.IPPROTO_UDP)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(sockaddr[:2])
            local = ipaddress.ip_address(s.getsockname()[0].split("%")[0])
    except (OSError, ValueError):
        return None
    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == str(local) for a in addrs):
            return name
    return None


def setup(info: DistInfo, device: torch.device, timeout_s: float = 1800.0) -> bool:
    """Export the rank variables and initialize the process group through DeepSpeed.

    `timeout_s` bounds every collective (and the rendezvous). Returns True when this call
    created the process group (the caller then tears it down).
    """
    exported = info.env()
    exported["PATH"] = path_with_own_ninja(os.environ.get("PATH", ""))
    backend = backend_for(device)
    if backend == "gloo" and info.world_size > 1 and "GLOO_SOCKET_IFNAME" not in os.environ:
        iface = interface_towards(info.master_addr)
        if iface:
            exported["GLOO_SOCKET_IFNAME"] = iface
    if info.launcher == "single":  # our own values: teardown puts the environment back
        _saved_env.update({k: os.environ.get(k) for k in exported})
    os.environ.update(exported)
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(extensions_dir()))
    import deepspeed
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        return False
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False,
                               distributed_port=info.master_port, verbose=False,
                               timeout=timedelta(seconds=timeout_s))
    return True


def bound_all_groups(timeout_s: float) -> None:
    """Give every process group this rank belongs to the collective timeout.

    init_process_group's timeout covers the world group only: DeepSpeed runs its gradient
    reductions on its own clone of it (torch.distributed.new_group without a timeout, so torch's
    30-minute default), where a rank whose peer was cut off waited past any timeout set here.
    Call it after deepspeed.initialize, which creates those groups."""
    import torch.distributed as tdist
    from torch.distributed import distributed_c10d as c10d

    if not tdist.is_initialized():
        return
    set_timeout = getattr(tdist, "set_timeout", None) or c10d._set_pg_timeout  # public from torch 2.10
    for group in list(c10d._world.pg_map):
        set_timeout(timedelta(seconds=timeout_s), group)


def is_comm_failure(exc: BaseException) -> bool:
    """A collective or the rendezvous failed: a peer died, was cut off, or exceeded the timeout.

    torch raises DistError (and its backend/network/store subclasses) for NCCL and the store;
    gloo raises a plain RuntimeError that names its transport ("gloo/transport/tcp/pair.cc:
    Connection closed by peer", "... Timed out waiting 20000ms for recv operation")."""
    import torch.distributed as tdist

    dist_error = getattr(tdist, "DistError", None)
    if dist_error is not None and isinstance(exc, dist_error):
        return True
    return isinstance(exc, RuntimeError) and "gloo/transport" in str(exc)


def hosts_of_ranks() -> list[str]:
    """Every rank's hostname, in rank order (one all-gather)."""
    return all_gather_objects(socket.gethostname())


def teardown(created: bool) -> None:
    import torch.distributed as tdist

    if created and tdist.is_initialized():
        import deepspeed.comm as dscomm

        dscomm.destroy_process_group()
    for k, v in _saved_env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    _saved_env.clear()


def barrier() -> None:
    import torch.distributed as tdist

    if tdist.is_initialized() and tdist.get_world_size() > 1:
        tdist.barrier()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if `flag` is True on any rank (one all-reduce)."""
    import torch.distributed as tdist

    if not (tdist.is_initialized() and tdist.get_world_size() > 1):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_gather_objects(obj):
    import torch.distributed as tdist

    if not (tdist.is_initialized() and tdist.get_world_size() > 1):
        return [obj]
    out = [None] * tdist.get_world_size()
    tdist.all_gather_object(out, obj)
    return out
