"""Secrets never reach a shareable file.

A storage URL with a password (``search.storage=postgresql://user:pw@host/db``) or a key
whose name says it holds a secret would otherwise be copied into the run directory's Hydra files
(``.hydra/config.yaml``, ``hydra.yaml``, ``overrides.yaml``), from there into the report
(config block, "command to reproduce"), and into the config W&B receives. The live
process keeps the real values; every copy written for people is redacted to ``REDACTED``.

A key says it holds a secret when one of the words of its last part (split at ``_``,
``-`` and camelCase) is ``password``, ``passwd``, ``secret``, ``token`` or ``apikey``,
or two of them read ``api key``: ``HF_TOKEN``, ``db_password``, ``wandb_api_key``,
``accessToken``, but not ``max_new_tokens`` or ``tokenizer`` (whose values a run must
keep to be reproduced).

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
SECRET_WORDS = frozenset({"password", "passwords", "passwd", "secret", "secrets", "token",
                          "apikey"})
# scheme://user:PASSWORD@host: the password is everything between the user's colon and
# the last @ before the host (a password may itself contain @ or :)
_URL = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"]*:)(?P<pw>[^\s'\"]*)"
                  r"(?P<at>@[^\s@/'\"]+)")
# key: value or key=value (YAML, overrides, dotted keys) whose key holds a secret word;
# masked when is_secret_key agrees (a word, not a part of one: max_new_tokens is kept)
_KEY = re.compile(r"(?P<key>[\w.\-]*(?:pass|secret|token|api[_\-]?key)[\w.\-]*)"
                  r"(?P<sep>\s*[:=]\s*)(?P<val>(?!REDACTED)[^\s,}\]'\"]+)", re.IGNORECASE)
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")  # snake, kebab and camelCase words


def redact_text(text: str) -> str:
    """``text`` with URL passwords and the values of secret-sounding keys masked.

    >>> redact_text("search.storage=postgresql://neva:s3cr@t@db:5432/x")
    'search.storage=postgresql://neva:REDACTED@db:5432/x'
    >>> redact_text("wandb_api_key: abc123\\nseed: 0")
    'wandb_api_key: REDACTED\\nseed: 0'
    >>> redact_text("sqlite:////runs/a/optuna.db")
    'sqlite:////runs/a/optuna.db'
    >>> redact_text("capability.max_new_tokens=8 judge.max_new_tokens: 48")
    'capability.max_new_tokens=8 judge.max_new_tokens: 48'
    """
    text = _URL.sub(lambda m: f"{m['head']}{MASK}{m['at']}" if m["pw"] else m[0], text)
    return _KEY.sub(lambda m: f"{m['key']}{m['sep']}{MASK}" if is_secret_key(m["key"])
                    else m[0], text)


def is_secret_key(key: str) -> bool:
    """Whether a (dotted) key names a secret, from the words of its last part.

    >>> [is_secret_key(k) for k in ("HF_TOKEN", "logger.wandb_api_key", "accessToken",
    ...                              "db-password", "max_new_tokens", "tokenizer", "n_tokens")]
    [True, True, True, True, False, False, False]
    """
    words = [w.lower() for w in _WORD.findall(key.rsplit(".", 1)[-1])]
    return bool(SECRET_WORDS.intersection(words)) or any(
        a == "api" and b == "key" for a, b in zip(words, words[1:]))


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
