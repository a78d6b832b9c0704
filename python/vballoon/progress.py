"""Progress bars for the long commands, on stderr, off when stderr is not a terminal.

The native benchmarks run with the GIL released on a worker thread while the main thread polls
their shared counters (`BenchProgress.snapshot()`, `Guest.progress()`) and redraws the bar.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

if TYPE_CHECKING:
    from vballoon import BenchProgress, Guest

T = TypeVar("T")

POLL_SECS = 0.1


def enabled(quiet: bool = False) -> bool:
    """Whether to draw progress: not asked to be quiet and stderr is a terminal."""
    return not quiet and sys.stderr.isatty()


def run_in_thread(
    work: Callable[[], T], poll: Callable[[], None] | None = None, name: str = "vballoon-work"
) -> T:
    """Runs `work` on a thread, calling `poll` every POLL_SECS meanwhile; returns its result.

    An exception in `work` is raised again here, on the caller's thread.
    """
    out: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            out.append(work())
        except BaseException as e:  # re-raised on the caller's thread
            failure.append(e)

    worker = threading.Thread(target=run, name=name, daemon=True)
    worker.start()
    while worker.is_alive():
        if poll is not None:
            poll()
        worker.join(POLL_SECS)
    if failure:
        raise failure[0]
    return out[0]


class Bars:
    """A rich Progress on stderr that does nothing when disabled."""

    def __init__(self, on: bool) -> None:
        self.on = on
        self._progress: Progress | None = None

    def __enter__(self) -> Bars:
        if self.on:
            self._progress = Progress(
                TextColumn("{task.description:<36}"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%  {task.fields[detail]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None

    def add(self, description: str, total: float = 1.0) -> TaskID | None:
        """A new bar (None when disabled)."""
        if self._progress is None:
            return None
        return self._progress.add_task(description, total=total, detail="")

    def update(self, task: TaskID | None, **fields: Any) -> None:
        """Moves a bar: `completed`, `total`, `description`, `detail`."""
        if self._progress is not None and task is not None:
            self._progress.update(task, **fields)


def _bench_poll(
    bars: Bars, steps: TaskID | None, inner: TaskID | None, probe: BenchProgress
) -> None:
    s = probe.snapshot()
    bars.update(
        steps,
        description=s.label[:36],
        completed=s.steps_done,
        total=max(s.steps_total, 1),
        detail=f"{s.steps_done}/{s.steps_total} steps",
    )
    if s.populate_total:
        done, total = s.populate_done, s.populate_total
        bars.update(
            inner,
            description="populate guest RAM",
            completed=done,
            total=total,
            detail=f"{done / 2**30:.2f} of {total / 2**30:.2f} GiB",
            visible=True,
        )
    elif s.pages_total:
        bars.update(
            inner,
            description=f"migration round {s.round}",
            completed=s.pages_done,
            total=s.pages_total,
            detail=f"{s.bytes_sent / 1e6:,.0f} MB sent",
            visible=True,
        )
    else:
        bars.update(inner, visible=False)


def run_bench(work: Callable[[BenchProgress], T], quiet: bool = False) -> T:
    """Runs `work(progress)` (a native bench given `progress=`), drawing its progress."""
    from vballoon import _native

    probe = _native.BenchProgress()
    with Bars(enabled(quiet)) as bars:
        if not bars.on:
            return work(probe)
        steps = bars.add("starting")
        inner = bars.add("")
        bars.update(inner, visible=False)
        return run_in_thread(
            lambda: work(probe), lambda: _bench_poll(bars, steps, inner, probe), "vballoon-bench"
        )


def run_migration(guest: Guest, work: Callable[[], T], quiet: bool = False) -> T:
    """Runs `work()` (a `guest.migrate(...)`), drawing the round, pages done and bytes sent."""

    def poll() -> None:
        p = guest.progress()
        stage = "stop-and-copy" if p.stop_and_copy else "pre-copy"
        bars.update(
            task,
            description=f"round {p.round} ({stage})",
            completed=p.pages_done / (p.pages_total or 1),
            detail=f"{p.bytes_sent / 1e6:,.0f} MB sent",
        )

    with Bars(enabled(quiet)) as bars:
        if not bars.on:
            return work()
        task = bars.add("migrate")
        return run_in_thread(work, poll, "vballoon-migrate")


@contextmanager
def steps(description: str, total: int, quiet: bool = False) -> Iterator[Callable[[str], None]]:
    """A bar over `total` steps of Python-level work; yields `advance(label)`."""
    with Bars(enabled(quiet)) as bars:
        task = bars.add(description, total=total)

        def advance(label: str) -> None:
            bars.update(task, advance=1, detail=label)

        yield advance


@contextmanager
def status(text: str, quiet: bool = False) -> Iterator[None]:
    """A spinner with `text` on stderr while a native call without counters runs."""
    if not enabled(quiet):
        yield
        return
    with Console(stderr=True).status(text):
        yield
