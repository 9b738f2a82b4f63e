"""Short jobs made of child processes run one after another: installing the engine's packages,
downloading a checkpoint.

A :class:`CommandJob` runs its :class:`Step` s through the panel's runner
(:class:`~.runner.SubprocessRunner`, polled by the panel's timer), so Slicer's window stays responsive: each
output line reaches ``on_line(kind, text)`` as it comes (``kind`` ``"log"`` for the log panel,
``"status"`` for the status line), and at the end ``on_finished(job)`` is called once with
``state`` ``done`` or ``failed``.  A step that fails stops the job; ``error`` is then one
sentence naming the step and the reason its output gave (never a traceback).  Nothing here
imports Qt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .runner import SubprocessRunner


def failure_reason(returncode: int, lines: list) -> "str | None":
    """Why a child process failed, from its output: its first ``ERROR:``/``error:`` line (pip's
    and the engine's way to say it), else its last line, else its exit status; None when it
    succeeded."""
    if returncode == 0:
        return None
    for line in lines:
        text = line.strip()
        if text.lower().startswith("error"):
            reason = text.split(":", 1)[1].strip() if ":" in text[:7] else text
            return reason or text
    shown = [line.strip() for line in lines if line.strip()]
    return shown[-1] if shown else f"it exited with status {returncode}"


def show_as_log(line: str):
    """Every line goes to the log as it is."""
    return "log", line


@dataclass
class Step:
    """One child process of a job: ``label`` names it in messages ("installing scipy>=1.9")."""

    label: str
    args: list
    env: "dict | None" = None
    #: (returncode, output lines) -> reason it failed, or None
    failure: Callable[[int, list], "str | None"] = failure_reason
    #: output line -> (kind, text) for ``on_line``, or None to leave the line out
    show: Callable[[str], "tuple | None"] = show_as_log
    lines: list = field(default_factory=list)


class CommandJob:
    """Run ``steps`` one after another, each with a new runner from ``runner_factory``."""

    def __init__(self, steps, runner_factory=SubprocessRunner, what: str = "the job"):
        self.steps = list(steps)
        self.runner_factory = runner_factory
        self.what = what
        self.state = "idle"
        self.error: "str | None" = None
        self.index = -1
        self.runner = None
        self.runners: list = []  # every step's runner, kept until the job is dropped
        self.on_line: "Callable[[str, str], None] | None" = None
        self.on_finished: "Callable[[CommandJob], None] | None" = None

    def is_active(self) -> bool:
        return self.state == "running"

    @property
    def step(self) -> "Step | None":
        return self.steps[self.index] if 0 <= self.index < len(self.steps) else None

    def start(self) -> None:
        if self.is_active():
            raise RuntimeError(f"{self.what} is already running")
        self.state, self.error, self.index = "running", None, -1
        self._next()

    def poll(self) -> None:
        if self.is_active() and self.runner is not None:
            self.runner.poll()

    def wait(self, timeout_s: float) -> bool:
        """Deliver output until the job ends (tests and the self-test); True when it ended."""
        import time

        deadline = time.monotonic() + timeout_s
        while self.is_active() and time.monotonic() < deadline:
            self.poll()
            time.sleep(0.02)
        return not self.is_active()

    def stop(self) -> None:
        """End the running step; the job then fails, naming it."""
        if self.is_active() and self.runner is not None:
            self.runner.kill()

    # ---------------------------------------------------------------- internals
    def _say(self, kind: str, text: str) -> None:
        if self.on_line:
            self.on_line(kind, text)

    def _next(self) -> None:
        self.index += 1
        step = self.step
        if step is None:
            self._end("done")
            return
        self._say("status", f"{self.what}: step {self.index + 1} of {len(self.steps)}, {step.label}")
        self._say("log", f"{step.label}: {' '.join(str(a) for a in step.args)}")
        self.runner = self.runner_factory()
        self.runners.append(self.runner)
        self.runner.on_line = self._line
        self.runner.on_finished = self._ended
        try:
            self.runner.start(step.args, env=step.env)
        except OSError as exc:
            self._fail(f"{step.label} failed: could not start {step.args[0]} ({exc})")

    def _line(self, line: str) -> None:
        text = line.rstrip("\r\n")
        self.step.lines.append(text)
        shown = self.step.show(text)
        if shown is not None:
            self._say(*shown)

    def _ended(self, returncode: int) -> None:
        step = self.step
        reason = step.failure(returncode, step.lines)
        if reason is not None:
            self._fail(f"{step.label} failed: {reason}")
            return
        self._next()

    def _fail(self, message: str) -> None:
        self.error = message
        self._say("log", f"error: {message}")
        self._end("failed")

    def _end(self, state: str) -> None:
        self.state = state
        self.runner = None
        if self.on_finished:
            self.on_finished(self)
