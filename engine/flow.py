"""Hand-over between the folder pipeline's threads: bounded queues that give up on stop, a memory budget,
and a lower scheduling priority for I/O threads that run beside a CPU model.
"""

from __future__ import annotations

import logging
import os
import queue
import threading

log = logging.getLogger(__name__)


class Stopping(Exception):
    """The run is stopping: a thread leaves its loop."""


def put(q: queue.Queue, item: object, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise Stopping
        try:
            q.put(item, timeout=0.2)
            return
        except queue.Full:
            continue


def get(q: queue.Queue, stop: threading.Event) -> object:
    while True:
        if stop.is_set():
            raise Stopping
        try:
            return q.get(timeout=0.2)
        except queue.Empty:
            continue


class Budget:
    """Caps the bytes of photos in flight, so a folder of huge scans cannot exhaust memory.

    A photo larger than the whole budget still goes through, alone.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.waiting = 0
        self._cond = threading.Condition()

    def acquire(self, n: int, stop: threading.Event) -> None:
        with self._cond:
            self.waiting += 1
            try:
                while self.used and self.used + n > self.limit:
                    if stop.is_set():
                        raise Stopping
                    self._cond.wait(0.2)
            finally:
                self.waiting -= 1
            self.used += n

    def release(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()

    def starved(self) -> bool:
        """A reader waits for memory: a partial batch must go now (it cannot grow until writes finish)."""
        return self.waiting > 0


def lower_priority(nice: int) -> None:
    """Raise this thread's nice value by ``nice`` (Linux: per thread). Best effort, never raises.

    With the model on the CPU, decode/encode threads that yield to the inference
    threads keep inference at full speed and fill its idle gaps instead of
    stealing a core in the middle of a parallel operator.
    """
    if nice <= 0 or not hasattr(os, "setpriority") or not hasattr(threading, "get_native_id"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as e:
        log.debug("could not lower the priority of %s (%s)", threading.current_thread().name, e)
