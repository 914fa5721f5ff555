"""Progress of the sweep's long phases that have no per-item bar on the driver.

Starting replicas (model loading), the statistics pass, the unedited side with the judge's
null, and the held-out pass run on the actors, whose own progress bars would interleave in
the driver's terminal. :func:`phase` logs each at INFO on the driver instead: one line when
it starts, a heartbeat while it runs (so a minute of silence means a stuck phase, not a
slow one), and its duration when it ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("neva_sweep.sweep")

HEARTBEAT_S = 30.0


@contextmanager
def phase(what: str, every: float = HEARTBEAT_S) -> Iterator[None]:
    """Log ``what`` when it starts, every ``every`` seconds while it runs, and how long it
    took (or that it failed) when it ends."""
    t0 = time.monotonic()
    log.info("%s ...", what)
    done = threading.Event()

    def beat() -> None:
        while not done.wait(every):
            log.info("%s: still running (%.0f s)", what, time.monotonic() - t0)

    def stop() -> None:  # before the last line: no heartbeat may follow it
        done.set()
        thread.join()

    thread = threading.Thread(target=beat, name="phase-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    except BaseException:
        stop()
        log.info("%s: stopped after %.1f s", what, time.monotonic() - t0)
        raise
    stop()
    log.info("%s: done in %.1f s", what, time.monotonic() - t0)
