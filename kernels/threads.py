"""Work split over threads for the NumPy kernels (NumPy releases the GIL in its loops).

The thread count is a process-wide setting: `using_threads(n)` sets it for a block
(the runtime wraps each step in it), else `VMEM_THREADS`, else the cores this process
may run on. vmem's GEMMs call BLAS on one thread (`single_threaded_blas`) and split
their products over vmem's threads themselves (`kernels.gemm`), so BLAS threads
times vmem's threads stay within the cores.

What must hold, and why results never depend on the thread count: each task writes
its own part of the output and no sum runs across tasks, so the threads only decide
where a task runs. A task's extent may follow the thread count only where the items
it spans are independent (`ranges`: samples, or the elements of an element-wise
pass); a GEMM's tiles are fixed by its shape alone, since BLAS's bits may depend on
the shape of the call. On CuPy (any array module but NumPy) every task runs in
order on the calling thread.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from vmem.errors import UsageError

THREADS_ENV = "VMEM_THREADS"
#: The most threads accepted: far past any core count this code meets.
MAX_THREADS = 1024
#: Tasks a pass over samples is cut into per thread (where samples allow).
TASKS_PER_THREAD = 4
#: The fewest elements a task of a pass works on (1 MiB of float32), where its items
#: say how many they hold. Waking a thread costs about as long as a pass over 2**16
#: elements, and two threads whose NumPy calls are short wait on each other for the
#: GIL: on 2 cores, passes of 16-256 KiB calls ran at 0.7-0.8x on two threads what
#: they ran on one, and a small CNN's training step at half. So a pass gets no more
#: tasks than it has this many elements, and one of fewer than two tasks' worth runs
#: as one task, on the calling thread. Read at each cut (tests lower it).
TASK_ELEMENTS = 1 << 18

Task = Callable[[], None]


def available_cores() -> int:
    """The cores this process may run on (its affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this platform
        return max(1, os.cpu_count() or 1)


def check_threads(threads: Any, what: str = "threads") -> int:
    """`threads` as an int in [1, MAX_THREADS], or a UsageError naming `what`."""
    if isinstance(threads, bool) or not isinstance(threads, int) or not (
            1 <= threads <= MAX_THREADS):
        raise UsageError(f"{what} must be an integer from 1 to {MAX_THREADS}, got "
                         f"{threads!r}")
    return threads


def threads_from_env() -> int | None:
    """VMEM_THREADS as a thread count, None when unset or empty."""
    text = os.environ.get(THREADS_ENV, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_THREADS:
        raise UsageError(f"{THREADS_ENV} must be an integer from 1 to {MAX_THREADS}, got "
                         f"'{text}'")
    return value


def resolve_threads(threads: int | None = None) -> int:
    """The thread count to use: `threads` when given, else VMEM_THREADS, else the
    cores available."""
    if threads is not None:
        return check_threads(threads)
    return threads_from_env() or available_cores()


class _Setting:
    """The current thread count and the pool that serves it."""

    def __init__(self) -> None:
        self.threads: int | None = None  # None: resolve_threads() on first use
        self._pool: ThreadPoolExecutor | None = None
        self._workers = 0
        self._lock = threading.Lock()

    def current(self) -> int:
        if self.threads is None:
            self.threads = resolve_threads()
        return self.threads

    def pool(self, workers: int) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None or self._workers < workers:
                if self._pool is not None:
                    self._pool.shutdown(wait=True)
                self._pool = ThreadPoolExecutor(workers, thread_name_prefix="vmem-kernel")
                self._workers = workers
            return self._pool


_SETTING = _Setting()


def current_threads() -> int:
    return _SETTING.current()


@contextlib.contextmanager
def using_threads(threads: int | None) -> Iterator[int]:
    """Run the block's kernels on `threads` threads (None: resolve_threads()); the
    previous setting comes back after."""
    count = resolve_threads(threads)
    previous = _SETTING.threads
    _SETTING.threads = count
    try:
        yield count
    finally:
        _SETTING.threads = previous


_BLAS_CONTROLLER: list[Any] = []
_BLAS_HELD = threading.local()  # .held: this thread is inside single_threaded_blas


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """A block in which BLAS runs on one thread (threadpoolctl; its threads come back
    after). Inside another such block (the runtime holds one for a whole step) it
    costs nothing: threadpoolctl's limit takes ~15 us, and a step makes hundreds of
    products. The controller is made once: making one inspects every loaded library."""
    if getattr(_BLAS_HELD, "held", False):
        yield
        return
    if not _BLAS_CONTROLLER:
        from threadpoolctl import ThreadpoolController

        _BLAS_CONTROLLER.append(ThreadpoolController())
    with _BLAS_CONTROLLER[0].limit(limits=1, user_api="blas"):
        _BLAS_HELD.held = True
        try:
            yield
        finally:
            _BLAS_HELD.held = False


def on_threads(xp: Any) -> bool:
    """Whether calls on array module `xp` split their work over threads: NumPy only."""
    return getattr(xp, "__name__", "") == "numpy"


class _Batch:
    """The tasks of one `run_tasks` call, taken in order by whichever thread comes free.

    What must hold: a task is taken and counted as running under the lock, and once
    the caller has closed the batch no thread takes one, so when `close` returns no
    task is running and none will start. A helper that wakes after the caller has
    done every task itself finds the batch closed and returns: the caller never
    waits for a helper to wake (on a VM an idle core takes ~0.1 ms to), only for
    tasks still running."""

    def __init__(self, tasks: Sequence[Task]) -> None:
        self._queue = iter(tasks)
        self._lock = threading.Condition()
        self._running = 0
        self._closed = False
        self.errors: list[BaseException] = []

    def _take(self) -> Task | None:
        with self._lock:
            if self._closed or self.errors:
                return None
            task = next(self._queue, None)
            if task is not None:
                self._running += 1
            return task

    def drain(self) -> None:
        """Run tasks until none is left or one has failed (then the others stop
        taking tasks)."""
        while (task := self._take()) is not None:
            failure = None
            try:
                task()
            except BaseException as exc:
                failure = exc
            with self._lock:
                if failure is not None:
                    self.errors.append(failure)
                self._running -= 1
                if not self._running:
                    self._lock.notify_all()

    def close(self) -> None:
        """No task starts after this; returns once none is running."""
        with self._lock:
            self._closed = True
            while self._running:
                self._lock.wait()


def run_tasks(xp: Any, tasks: Sequence[Task]) -> None:
    """Run every task once. On NumPy with more than one thread, the threads (the
    calling one among them) take tasks in order as they come free; otherwise they run
    in order here. After a failure no further task starts; the first failure is
    raised once no task is running, so nothing writes into the outputs after this
    returns."""
    threads = current_threads() if on_threads(xp) else 1
    if threads == 1 or len(tasks) <= 1:
        for task in tasks:
            task()
        return
    batch = _Batch(tasks)
    helpers = min(threads, len(tasks)) - 1
    # Each helper runs in a copy of the caller's context, so settings held in context
    # variables (np.errstate: a step's overflow is checked for, never warned about)
    # hold in the tasks too; one copy each, as a context is entered by one thread.
    pool = _SETTING.pool(helpers)
    for _ in range(helpers):
        pool.submit(contextvars.copy_context().run, batch.drain)
    batch.drain()
    batch.close()
    if batch.errors:
        raise batch.errors[0]


def split(n: int, size: int) -> list[tuple[int, int]]:
    """[0, n) as consecutive (start, stop) ranges of `size` (the last may be shorter)."""
    size = max(1, size)
    return [(start, min(n, start + size)) for start in range(0, n, size)]


def makes_tasks(elements: int) -> bool:
    """Whether a pass over `elements` elements makes two tasks or more
    (TASK_ELEMENTS each): a shorter one is better run as one plain call."""
    return elements >= 2 * TASK_ELEMENTS


def ranges(xp: Any, n: int, item_bytes: int = 0, budget_bytes: int = 0,
           min_items: int = 1, item_elements: int = 0) -> list[tuple[int, int]]:
    """[0, n) cut into ranges for a pass over n independent items (samples, or the
    elements of an element-wise pass): one range on a single thread, else about
    TASKS_PER_THREAD a thread (so a thread slowed by other work leaves its share to
    the others), each of at least `min_items`; where an item holds `item_elements`
    elements, no more ranges than the pass has TASK_ELEMENTS (a task much shorter
    than waking a thread costs more than it saves). With `item_bytes` of scratch an
    item, a range holds at most what its share of `budget_bytes` allows when every
    thread runs one (at least one item). Callers use it only where items are
    independent, so the cut changes no result."""
    threads = current_threads() if on_threads(xp) else 1
    if threads == 1:
        size = n
    else:
        count = threads * TASKS_PER_THREAD
        if item_elements > 0:
            count = min(count, n * item_elements // TASK_ELEMENTS)
        size = max(min_items, -(-n // max(1, count)))
    if item_bytes > 0:
        size = min(size, budget_bytes // (item_bytes * threads))
    return split(n, max(1, size))


def for_ranges(xp: Any, n: int, work: Callable[[int, int], None], item_bytes: int = 0,
               budget_bytes: int = 0, min_items: int = 1, item_elements: int = 0) -> None:
    """work(start, stop) for each of `ranges(xp, n, item_bytes, budget_bytes,
    min_items, item_elements)`, over the threads."""
    run_tasks(xp, [partial(work, lo, hi) for lo, hi in
                   ranges(xp, n, item_bytes, budget_bytes, min_items, item_elements)])
