"""Derived files that heal: atomic writes, corrupt caches moved aside, content hashes.

Caches (statistics, the evaluator's unedited side and null, the classifier head) and run
outputs are written to a temporary file in the same directory and renamed onto their
name (``os.replace`` is atomic within one filesystem), so a killed or full-disk run never
leaves half a file under the final name and concurrent readers never see one. A cache
that fails to load anyway (truncated by a copy, written by a crashed older version) is a
derived file, never worth a failed run: it is moved aside to ``<name>.corrupt`` with a
warning naming it, and recomputed.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


def no_space(path: Path, cause: OSError) -> OSError:
    """The one-line error of a write that ran out of disk space."""
    err = OSError(errno.ENOSPC, f"no space left on {path} (nothing was written there); free "
                  "disk space or point cache_dir=/hydra.run.dir= at another disk")
    err.__cause__ = cause
    return err


def out_of_space(e: BaseException, directory: Path) -> bool:
    """Whether a failed write ran out of disk space: ENOSPC anywhere in the exception chain,
    or a RuntimeError (torch.save's zip writer drops the errno) with under 1 MiB free."""
    seen: BaseException | None = e
    for _ in range(8):  # the chain is short; never loop on a cyclic one
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        seen = seen.__cause__ or seen.__context__
    if isinstance(e, RuntimeError):
        try:
            return shutil.disk_usage(directory).free < 1 << 20
        except OSError:
            return False
    return False


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A fresh temporary path beside ``path``: renamed onto ``path`` when the block succeeds,
    removed when it raises (ENOSPC becomes "no space left on <path>").

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> with atomic_path(d / "x.txt") as tmp:
    ...     _ = tmp.write_text("done")
    >>> sorted(p.name for p in d.iterdir())
    ['x.txt']
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(e, Exception) and out_of_space(e, path.parent):
            raise no_space(path, e) from e
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def quarantine(path: Path, reason: str, what: str) -> Path:
    """Move an unreadable derived file aside to ``<name>.corrupt`` (kept for inspection,
    out of the way of its recomputation) and warn naming it."""
    dest = path.with_name(path.name + ".corrupt")
    try:
        os.replace(path, dest)
    except FileNotFoundError:  # another process moved it first
        pass
    log.warning("%s: unreadable %s (%s); moved to %s and recomputing", path, what, reason,
                dest.name)
    return dest


def load_or_heal(path: Path | None, load: Callable[[Path], T], what: str) -> T | None:
    """``load(path)``; None when there is no such file or it is unreadable (then it is
    quarantined, see :func:`quarantine`), so that the caller recomputes it."""
    if path is None or not path.is_file():
        return None
    try:
        return load(path)
    except Exception as e:  # any failure to read a derived file: recompute it
        quarantine(path, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                   what)
        return None


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_tensors(path: str | Path, tensors: dict, meta: dict) -> None:
    """A safetensors file with ``meta`` as JSON under the ``neva_sweep`` metadata key,
    written atomically (never half a file under ``path``)."""
    import json

    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"neva_sweep": json.dumps(meta)})


def load_tensors(path: str | Path) -> tuple[dict, dict]:
    """(tensors, meta) of a file :func:`save_tensors` wrote."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["neva_sweep"])
    return load_file(str(path)), meta
