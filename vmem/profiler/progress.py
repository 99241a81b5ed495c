"""A progress bar (rich, on stderr) over the steps of a long command: training
steps, a calibration's measurements, a planner's dry runs (counted, where their
number is not known ahead). It shows only where stderr is a terminal and the
command lasts more than a moment (it appears after `delay_s`), never with
`--json`, and in plain colours where NO_COLOR is set."""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

DELAY_S = 0.5  # a command done sooner shows no bar at all


class StepProgress:
    def __init__(self, total: int | None, enabled: bool, delay_s: float | None = None,
                 description: str = "training") -> None:
        """`total`: the steps to come; None where not known (a count, no bar's end)."""
        delay_s = DELAY_S if delay_s is None else delay_s
        self._delay_s = delay_s
        self.enabled = enabled and sys.stderr.isatty()
        self._lock = threading.Lock()
        self._started = False
        self._timer: threading.Timer | None = None
        self._progress: Progress | None = None
        if self.enabled:
            console = Console(stderr=True, no_color="NO_COLOR" in os.environ)
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                      MofNCompleteColumn(), TimeElapsedColumn(),
                                      console=console, transient=True)
            self._task = self._progress.add_task(description, total=total)
            self._timer = threading.Timer(delay_s, self._start)
            self._timer.daemon = True

    def _start(self) -> None:
        with self._lock:
            if self._progress is not None and not self._started:
                self._progress.start()
                self._started = True

    def describe(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=text)

    def step(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)

    def skip(self, steps: int) -> None:
        """Steps that will not run (a policy that did not fit)."""
        if self._progress is not None and steps > 0:
            self._progress.advance(self._task, steps)

    def __enter__(self) -> StepProgress:
        if self._timer is not None:
            if self._delay_s <= 0:
                self._start()
            else:
                self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            if self._progress is not None and self._started:
                self._progress.stop()
            self._started = True  # a timer firing late starts nothing
