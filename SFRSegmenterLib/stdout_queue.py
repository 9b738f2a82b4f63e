"""Stdout that never blocks the work: ``--progress json`` lines written by one thread.

A reader of ``sfr --progress json`` (the Slicer module, a script) that stops reading fills the
pipe; a plain ``write`` then blocks the run for ever.  :func:`install` makes stdout, when it is a
real file descriptor, a bounded queue emptied by a daemon writer thread:

* every line keeps its order (``print`` goes through the same queue as the events);
* while the reader lags, a ``progress`` event replaces the queued one of the same stage just
  before it (the newest wins), and once :data:`MAX_QUEUED` lines wait, the oldest progress
  event (else the oldest line) is dropped: memory stays bounded, the work goes on;
* at exit the queue is drained while the reader reads, and abandoned after
  :data:`DRAIN_STALL_S` seconds without a byte read (the run's own files are already complete).

An in-memory stdout (a test's capture) is written directly, as before.
"""

from __future__ import annotations

import atexit
import collections
import os
import sys
import threading
import time

#: Lines waiting for a slow reader at most.
MAX_QUEUED = 2000
#: At exit, give up on a reader that has not read for this many seconds.
DRAIN_STALL_S = 10.0

_WRITER: "_Writer | None" = None


class _Writer:
    """The queue and its writer thread on one file descriptor."""

    def __init__(self, fd: int):
        self.fd = fd
        self.queue: collections.deque = collections.deque()
        self.cond = threading.Condition()
        self.busy = False  # a line taken from the queue is being written
        self.closed = False  # the reader went away (EPIPE): lines are discarded
        self.written = 0
        self.dropped = 0
        threading.Thread(target=self._run, name="sfr-stdout", daemon=True).start()

    def put(self, data: bytes, kind: "str | None" = None, stage=None) -> None:
        with self.cond:
            if self.closed:
                return
            last = self.queue[-1] if self.queue else None
            if kind == "progress" and last is not None and last[1] == "progress" and last[2] == stage:
                self.queue[-1] = (data, kind, stage)  # coalesced: the newest progress of the stage
                self.dropped += 1
            else:
                if len(self.queue) >= MAX_QUEUED:
                    self._evict()
                self.queue.append((data, kind, stage))
            self.cond.notify_all()

    def _evict(self) -> None:
        for i, item in enumerate(self.queue):
            if item[1] == "progress":
                del self.queue[i]
                break
        else:
            self.queue.popleft()
        self.dropped += 1

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.queue:
                    self.busy = False
                    self.cond.notify_all()
                    self.cond.wait()
                data = self.queue.popleft()[0]
                self.busy = True
            try:
                view = memoryview(data)
                while view:
                    n = os.write(self.fd, view)  # blocks this thread only
                    view = view[n:]
                    with self.cond:
                        self.written += n
            except OSError:  # the reader closed the pipe: nothing more to deliver
                with self.cond:
                    self.closed, self.busy = True, False
                    self.queue.clear()
                    self.cond.notify_all()
                return

    def drain(self, stall: float = DRAIN_STALL_S) -> None:
        """Wait until everything is written, or the reader has not read for ``stall`` seconds."""
        with self.cond:
            seen, since = self.written, time.monotonic()
            while (self.queue or self.busy) and not self.closed:
                self.cond.wait(0.1)
                if self.written != seen:
                    seen, since = self.written, time.monotonic()
                elif time.monotonic() - since > stall:
                    return


class _QueuedStdout:
    """``sys.stdout`` in json mode: text written through the queue, in order with the events."""

    def __init__(self, writer: _Writer, original):
        self._writer = writer
        self._original = original
        self.encoding = getattr(original, "encoding", None) or "utf-8"
        self.errors = "replace"

    def write(self, text: str) -> int:
        self._writer.put(text.encode(self.encoding, "replace"))
        return len(text)

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._writer.fd


def install() -> None:
    """Put stdout behind the queue when it is a real file descriptor (once per process)."""
    global _WRITER
    if _WRITER is not None or isinstance(sys.stdout, _QueuedStdout):
        return
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # an in-memory stream (io.UnsupportedOperation)
        return
    sys.stdout.flush()
    _WRITER = _Writer(fd)
    sys.stdout = _QueuedStdout(_WRITER, sys.stdout)
    atexit.register(_WRITER.drain)


def write_event(line: str, kind: str, stage=None) -> None:
    """One JSON line on stdout: queued when installed, else written directly."""
    if _WRITER is not None and isinstance(sys.stdout, _QueuedStdout):
        _WRITER.put(line.encode("utf-8"), kind, stage)
    else:
        sys.stdout.write(line)
        sys.stdout.flush()
