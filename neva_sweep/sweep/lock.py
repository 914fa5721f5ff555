"""One sweep driver per run: a lock on the run's storage, held for the driver's lifetime.

Two drivers on one storage would ask the same studies for trials and, worse, each would
take the other's RUNNING trials for leftovers of a crashed driver and mark them FAIL. So
a driver takes this lock before it opens the studies, and only the holder marks stale
trials (:func:`neva_sweep.sweep.studies.fail_stale_trials`).

For file storage (SQLite, Optuna's journal file) the lock is a file beside the storage
file, ``<file>.driver.lock`` (not ``<file>.lock``: that name is the journal backend's own
write lock), holding JSON ``{host, pid, started, heartbeat, token}``. It is created with
``os.link`` from a complete temporary file, so it appears atomically with its content
(also on NFS), and a daemon thread rewrites it (``os.replace``) every ``heartbeat_s``.
A second driver finding it exits at once with :class:`RunLockedError`, unless the holder
is dead: on the same host its process is gone, or on any host its heartbeat is older than
``stale_after_s`` (the clocks of the hosts must agree to well within that). A dead
holder's lock is taken over with a message on stderr.

Server databases (PostgreSQL, MySQL) get no lock: their URLs name no file to put one
beside. The driver says so on stderr; one driver per such storage is the user's job.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from .plan import ConfigError, storage_file

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0  # how often the holder refreshes its heartbeat
STALE_AFTER_S = 60.0  # a heartbeat older than this means the holder is dead
SUFFIX = ".driver.lock"
HOST = socket.gethostname()

_held: set[Path] = set()  # lock files held by this process (a pid reused in a container)


class RunLockedError(ConfigError):
    """Another live driver holds the run's storage lock."""


@dataclass(frozen=True)
class Holder:
    """The driver a lock file names."""

    host: str
    pid: int
    started: float
    heartbeat: float
    token: str

    @classmethod
    def me(cls, started: float) -> Holder:
        return cls(HOST, os.getpid(), started, time.time(), uuid.uuid4().hex)

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}"

    def dead_because(self, path: Path, stale_after_s: float) -> str | None:
        """Why this holder is dead, or None if it may be alive."""
        if self.host == HOST:
            if self.pid == os.getpid() and path not in _held:
                return "its pid is this process's, which does not hold it (an earlier process)"
            if not pid_alive(self.pid):
                return f"process {self.pid} is not running on {HOST}"
        age = time.time() - self.heartbeat
        if age > stale_after_s:
            return f"its heartbeat is {age:.0f} s old (more than {stale_after_s:.0f} s)"
        return None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError, IndexError):
        # "pid (comm) S ...": the state follows the last ')'; Z = exited, not yet reaped
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def lock_path(storage: str) -> Path | None:
    """The lock file of ``storage`` (a URL as :func:`~.plan.storage_url` returns), or None
    for storage without a file (server databases, in-memory SQLite)."""
    f = storage_file(storage)
    return None if f is None else f.with_name(f.name + SUFFIX)


def read_holder(path: Path) -> tuple[Holder | None, bytes | None]:
    """The holder a lock file names (None if unreadable) and its raw bytes (None if the
    file is gone)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, None
    try:
        d = json.loads(raw)
        return Holder(str(d["host"]), int(d["pid"]), float(d["started"]),
                      float(d["heartbeat"]), str(d.get("token", ""))), raw
    except (ValueError, KeyError, TypeError):
        return None, raw


class RunLock:
    """The lock file ``path`` held by this driver (``with RunLock(path): ...``)."""

    def __init__(self, path: Path, heartbeat_s: float = HEARTBEAT_S,
                 stale_after_s: float = STALE_AFTER_S):
        self.path = Path(path)
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self.me: Holder | None = None
        self.lost = False  # another driver took the lock over while this one held it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def held(self) -> bool:
        return self.me is not None and not self.lost

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # -- taking it ------------------------------------------------------------------------
    def acquire(self) -> RunLock:
        """Take the lock, taking a dead holder's over; raises RunLockedError if it is live."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._stop.clear()
        started = time.time()
        for _ in range(5):
            self.me = Holder.me(started)
            if self._create():
                _held.add(self.path)
                self._thread = threading.Thread(target=self._beat, daemon=True,
                                                name=f"run-lock {self.path.name}")
                self._thread.start()
                return self
            holder, raw = read_holder(self.path)
            if raw is None:  # released in between: try again
                continue
            why = "it is unreadable" if holder is None else holder.dead_because(
                self.path, self.stale_after_s)
            if why is None:
                self.me = None
                raise RunLockedError(self._locked_message(holder))
            who = "an unreadable lock" if holder is None else f"the lock of {holder.describe()}"
            log.warning("taking over %s (%s): %s", who, self.path, why)
            self._remove_stale(raw)
        self.me = None
        raise RunLockedError(f"search.storage: could not take the lock {self.path} (other "
                             "drivers are starting on this storage at the same time); start "
                             "only one")

    def _locked_message(self, holder: Holder) -> str:
        age = max(0.0, time.time() - holder.heartbeat)
        return (f"search.storage: another sweep driver ({holder.describe()}, heartbeat "
                f"{age:.0f} s ago) holds the lock {self.path}; wait for it to finish or stop "
                "it, or use another run directory or search.storage (a dead driver's lock is "
                f"taken over once its heartbeat is {self.stale_after_s:.0f} s old)")

    def _create(self) -> bool:
        """Create the lock file with our holder record; False if it exists."""
        tmp = self._write_tmp()
        try:
            os.link(tmp, self.path)  # fails if the lock exists; never a half-written lock
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def _remove_stale(self, raw: bytes) -> None:
        """Remove the lock file if it still holds ``raw`` (no other taker replaced it)."""
        grave = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.stale")
        try:
            os.rename(self.path, grave)  # atomic: of two takers, one gets the old file
        except FileNotFoundError:
            return
        if grave.read_bytes() != raw:  # a new holder's lock: put it back
            with contextlib.suppress(FileExistsError):
                os.link(grave, self.path)
        grave.unlink(missing_ok=True)

    def _write_tmp(self) -> Path:
        """Our holder record in a fresh temporary file beside the lock (removed again if the
        write fails, e.g. on a full disk: no empty temporary file is left behind)."""
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_text(json.dumps(asdict(self.me)))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    # -- holding it -----------------------------------------------------------------------
    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.refresh()
            except OSError as e:  # a shared filesystem hiccup: try again next beat
                log.warning("could not refresh the lock %s: %s", self.path, e)
            if self.lost:
                return

    def refresh(self) -> None:
        """Rewrite the heartbeat, unless another driver has taken the lock over."""
        if not self.held:
            return
        holder, _ = read_holder(self.path)
        if holder is None or holder.token != self.me.token:
            self.lost = True
            log.error("lost the lock %s to another driver (%s): this driver's heartbeat "
                      "stalled for more than %.0f s", self.path,
                      holder.describe() if holder else "none left", self.stale_after_s)
            return
        self.me = Holder(**{**asdict(self.me), "heartbeat": time.time()})
        tmp = self._write_tmp()
        try:
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)  # gone after a replace; removed if it failed

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file if it is still this driver's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.me is None:
            return
        holder, _ = read_holder(self.path)
        if holder is not None and holder.token == self.me.token:
            self.path.unlink(missing_ok=True)
        _held.discard(self.path)
        self.me = None


class NoLock:
    """Storage without a file to lock: the driver goes on alone by the user's word."""

    path = None
    held = True
    lost = False

    def __enter__(self) -> NoLock:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def release(self) -> None:
        pass


def run_lock(storage: str, **kwargs) -> RunLock | NoLock:
    """The lock of ``storage``, not yet taken (``with run_lock(url) as lock: ...``)."""
    path = lock_path(storage)
    if path is not None:
        return RunLock(path, **kwargs)
    if "://" in storage and not storage.startswith("sqlite"):
        log.warning("search.storage: no driver lock for %s storage (the lock is a file "
                    "beside SQLite or journal files); run one driver per storage",
                    storage.split("://")[0])
    return NoLock()
