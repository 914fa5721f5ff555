"""Secrets never reach a shareable file.

A storage URL with a password (``search.storage=postgresql://user:pw@host/db``) or a key
whose name says it holds a secret (``password``, ``token``, ``secret``, ``api_key``,
``apikey``) would otherwise be copied into the run directory's Hydra files
(``.hydra/config.yaml``, ``hydra.yaml``, ``overrides.yaml``), from there into the report
(config block, "command to reproduce"), and into the config W&B receives. The live
process keeps the real values; every copy written for people is redacted to ``REDACTED``.

A password can also stay off the command line altogether: ``search.storage`` accepts
``${oc.env:NEVA_SWEEP_STORAGE}`` (or the database's own environment variables, e.g.
``PGPASSWORD`` for PostgreSQL, with a URL that carries no password).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .files import write_text_atomic

MASK = "REDACTED"  # a plain YAML scalar (a leading * would read as an alias)
SECRET_WORDS = ("password", "passwd", "token", "secret", "api_key", "apikey")
# scheme://user:PASSWORD@host: the password is everything between the user's colon and
# the last @ before the host (a password may itself contain @ or :)
_URL = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"]*:)(?P<pw>[^\s'\"]*)"
                  r"(?P<at>@[^\s@/'\"]+)")
# key: value or key=value for a secret-sounding key (YAML, overrides, dotted keys)
_KEY = re.compile(r"(?P<key>[\w.\-]*(?:" + "|".join(SECRET_WORDS) + r")[\w.\-]*)"
                  r"(?P<sep>\s*[:=]\s*)(?P<val>(?!REDACTED)[^\s,}\]'\"]+)", re.IGNORECASE)


def redact_text(text: str) -> str:
    """``text`` with URL passwords and the values of secret-sounding keys masked.

    >>> redact_text("search.storage=postgresql://neva:s3cr@t@db:5432/x")
    'search.storage=postgresql://neva:REDACTED@db:5432/x'
    >>> redact_text("wandb_api_key: abc123\\nseed: 0")
    'wandb_api_key: REDACTED\\nseed: 0'
    >>> redact_text("sqlite:////runs/a/optuna.db")
    'sqlite:////runs/a/optuna.db'
    """
    text = _URL.sub(lambda m: f"{m['head']}{MASK}{m['at']}" if m["pw"] else m[0], text)
    return _KEY.sub(lambda m: f"{m['key']}{m['sep']}{MASK}", text)


def is_secret_key(key: str) -> bool:
    return any(w in key.lower() for w in SECRET_WORDS)


def redact(obj: Any) -> Any:
    """A copy of a JSON-like config with secrets masked (keys by name, strings by URL).

    >>> redact({"search": {"storage": "mysql://u:pw@h/db"}, "api_key": "k", "n": 3})
    {'search': {'storage': 'mysql://u:REDACTED@h/db'}, 'api_key': 'REDACTED', 'n': 3}
    """
    if isinstance(obj, dict):
        return {k: (MASK if is_secret_key(str(k)) and v not in (None, "") else redact(v))
                for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(redact(v) for v in obj)
    if isinstance(obj, str):
        return redact_text(obj)
    return obj


def redact_files(paths: Iterable[str | Path]) -> list[Path]:
    """Rewrite each existing file with its secrets masked (atomically, only when something
    changes); returns the files rewritten."""
    out = []
    for p in map(Path, paths):
        if not p.is_file():
            continue
        text = p.read_text(encoding="utf-8")
        clean = redact_text(text)
        if clean != text:
            write_text_atomic(p, clean)
            out.append(p)
    return out


def redact_hydra_dir(output_dir: str | Path, subdir: str | None = ".hydra") -> list[Path]:
    """Mask the secrets of the Hydra files Hydra wrote for this run (call at job start)."""
    if subdir is None:
        return []
    d = Path(output_dir) / subdir
    return redact_files(d / name for name in ("config.yaml", "hydra.yaml", "overrides.yaml"))
