"""Secrets never reach a shareable file: Hydra's run files, the report, W&B's config."""

from __future__ import annotations

import subprocess
import sys

from omegaconf import OmegaConf

from neva_sweep.redact import MASK, redact, redact_text


def test_urls_and_secret_keys_are_masked_everything_else_kept():
    assert redact_text("postgresql://neva:p@ss:w0rd@db.example.org:5432/x") == \
        f"postgresql://neva:{MASK}@db.example.org:5432/x"
    assert redact_text("journal:///runs/a/optuna.log sqlite:////a/b.db") == \
        "journal:///runs/a/optuna.log sqlite:////a/b.db"
    assert redact_text("mysql+pymysql://user@host/db") == "mysql+pymysql://user@host/db"
    assert redact_text("HF_TOKEN=hf_abc seed=3") == f"HF_TOKEN={MASK} seed=3"
    # a secret is a word of the key, not a part of one: token counts are kept
    kept = "capability.max_new_tokens=8 tokenizer: gpt2 n_tokens: 3"
    assert redact_text(kept) == kept
    assert redact_text("accessToken: a db-password=b") == f"accessToken: {MASK} db-password={MASK}"
    assert redact({"judge": {"max_new_tokens": 48}}) == {"judge": {"max_new_tokens": 48}}
    cfg = {"search": {"storage": "postgresql://u:pw@h/db", "seed": 0},
           "logger": {"api_key": "k", "project": "neva"}, "token": None}
    assert redact(cfg) == {"search": {"storage": f"postgresql://u:{MASK}@h/db", "seed": 0},
                           "logger": {"api_key": MASK, "project": "neva"}, "token": None}


def test_a_password_on_the_command_line_stays_out_of_the_run_directory(tmp_path):
    run = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "neva_sweep", "model=tiny_llama", "logger=none",
         "search.storage=postgresql://neva:hunter2@127.0.0.1:1/db", "+wandb_api_key=abc123",
         f"hydra.run.dir={run}"], capture_output=True, text=True, cwd=tmp_path)
    # no PostgreSQL driver here: one line naming the key, after Hydra wrote the run files
    assert out.returncode == 2 and "search.storage" in out.stderr
    assert "hunter2" not in out.stderr + out.stdout
    written = {p.name: p.read_text() for p in run.rglob("*") if p.is_file()}
    assert {"config.yaml", "hydra.yaml", "overrides.yaml"} <= set(written)
    for name, text in written.items():
        assert "hunter2" not in text and "abc123" not in text, name
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    assert cfg.search.storage == f"postgresql://neva:{MASK}@127.0.0.1:1/db"
    assert cfg.wandb_api_key == MASK
    # what a run needs to be reproduced stays: reply lengths are not secrets
    assert isinstance(cfg.judge.max_new_tokens, int)
    assert isinstance(cfg.capability.max_new_tokens, int)
