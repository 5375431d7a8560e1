"""Preemption: SIGTERM / SIGUSR1 ask the training loop to checkpoint and exit.

Slurm sends SIGUSR1 `--signal=USR1@120` seconds before the time limit and SIGTERM on
preemption or `scancel`. A handler only sets a flag; the loop checks it after each optimizer
step (all ranks agree through one all-reduce), saves a checkpoint and exits with EXIT_REQUEUE.
"""

from __future__ import annotations

import signal
import threading

# EX_TEMPFAIL from sysexits.h: "temporary failure, retry later". The sbatch scripts requeue
# the job when the training step ends with this code.
EXIT_REQUEUE = 75

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionFlag:
    """Context manager that installs the handlers (main thread only) and restores the old ones."""

    def __init__(self, signals=PREEMPT_SIGNALS):
        self.signals = signals
        self.received: int | None = None
        self._old: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        self.received = signum

    @property
    def requested(self) -> bool:
        return self.received is not None

    def __enter__(self) -> PreemptionFlag:
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()
