"""What this process may use of the machine."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """CPU cores this process may run on: the affinity mask (a Slurm allocation, taskset), not the
    node's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_seconds() -> float:
    """User + system CPU time of this process (all its threads: DALI's, a prefetch thread's) and of
    every process below it: those still running (DataLoader workers, read through psutil) and those
    ended and waited for. Each child counts once, while it runs and after it is reaped alike, so the
    difference over a stretch of wall time, divided by it, is the number of cores kept busy (1.0 = one)."""
    import resource

    import psutil

    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime
    for child in psutil.Process().children(recursive=True):
        try:
            t = child.cpu_times()
        except psutil.Error:  # ended meanwhile: counted once it is reaped
            continue
        total += t.user + t.system
    return total


class TreeMemory:
    """Peak resident memory (RSS) of a process and every process below it, sampled in a thread.

        with TreeMemory(proc.pid) as mem:
            proc.wait()
        mem.peak_total, mem.peaks  # bytes; {pid: (depth below the root, peak bytes)}

    Sampling /proc through psutil sees a process pool's workers, which `/usr/bin/time` (the
    root's own maximum, or at most one waited-for child's) does not. A peak shorter than the
    interval can be missed; the default 20 ms is far below a clip's decode time.
    """

    def __init__(self, pid: int, interval_s: float = 0.02):
        import psutil

        self.root = psutil.Process(pid)
        self.interval_s = interval_s
        self.peaks: dict[int, tuple[int, int]] = {}
        self.peak_total = 0
        self._stop = None
        self._thread = None

    def _depths(self) -> dict:
        import psutil

        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return {}
        parent = {}
        for p in procs[1:]:
            try:
                parent[p.pid] = p.ppid()
            except psutil.Error:
                continue
        out = {self.root: 0}
        for p in procs[1:]:
            d, pid = 0, p.pid
            while pid in parent and d < 64:
                d, pid = d + 1, parent[pid]
            if pid == self.root.pid:
                out[p] = d
        return out

    def sample(self) -> None:
        import psutil

        total = 0
        for p, d in self._depths().items():
            try:
                rss = p.memory_info().rss
            except psutil.Error:
                continue
            total += rss
            self.peaks[p.pid] = (d, max(rss, self.peaks.get(p.pid, (d, 0))[1]))
        self.peak_total = max(self.peak_total, total)

    def __enter__(self) -> TreeMemory:
        import threading

        self._stop = threading.Event()

        def loop():
            while not self._stop.is_set():
                self.sample()
                self._stop.wait(self.interval_s)

        self._thread = threading.Thread(target=loop, name="tree-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def peak_at_depth(self, depth: int) -> int:
        """Largest peak among processes `depth` levels below the root (0 = the root itself)."""
        return max((peak for d, peak in self.peaks.values() if d == depth), default=0)
