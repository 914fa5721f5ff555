"""The sweep's W&B logger with the real client in offline mode: per-study step metrics,
native scatter plots per value, the trials table and the report artifact."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from neva_sweep.config import ConfigError
from neva_sweep.registry import Registry
from neva_sweep.sweep.plan import StudyKey, check_logger
from neva_sweep.sweep.scheduler import Outcome
from neva_sweep.sweep.tracking import WandbLogger


def test_offline_run_holds_step_metrics_scatters_and_the_report(tmp_path):
    cfg = OmegaConf.create({"project": "p", "entity": None, "group": None, "mode": "offline"})
    logger = WandbLogger(cfg, tmp_path, {"task": "sweep"})
    key = StudyKey("tiny", "power", "neva")
    rows = []
    for i in range(3):
        metrics = {"alignment": 0.1 * i, "nlr": 0.5 + i, "kl": 0.01 * i}
        logger.log_trial(Outcome(key, i, "COMPLETE", {"magnitude": 2.0}, metrics, None, "w#0"))
        rows.append({"model": "tiny", "value": "power", "method": "neva",
                     "study": "tiny/power/neva", "trial": i, "state": "COMPLETE", **metrics})
    # a trial pruned over budget at rung 0 carries its costs only; a failed one nothing
    logger.log_trial(Outcome(key, 3, "PRUNED", {"magnitude": 9.0}, {"kl": 0.4},
                             "kl 0.4 over the budget search.max_kl=0.1", "w#0"))
    logger.log_trial(Outcome(key, 4, "FAIL", {"magnitude": 9.0}, None, "oom", "w#0"))
    assert logger.counts == {"COMPLETE": 3, "PRUNED": 1, "FAIL": 1}
    report = tmp_path / "report"
    report.mkdir()
    (report / "index.html").write_text("<html>report</html>")
    logger.finish(rows, {"report": report / "index.html"}, 0)
    logger.wandb.teardown()  # flush the service's transaction log before reading it

    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    (scatter,) = (run_dir / "files/media/table/scatter/power").glob("alignment_vs_*.table.json")
    table = json.loads(scatter.read_text())
    assert table["columns"] == ["model", "method", "trial", "alignment", "nlr", "kl"]
    assert [r[2] for r in table["data"]] == [0, 1, 2]
    log = next(run_dir.glob("run-*.wandb")).read_bytes()  # protobuf records: strings verbatim
    assert b"tiny/power/neva/trial" in log  # the study's step metric (define_metric)
    assert b"trials/pruned" in log and b"trials/failed" in log
    assert b"scatter/power/alignment_vs_kl" in log and b"scatter/power/alignment_vs_nlr" in log
    assert b"index.html" in log  # the report artifact's manifest


def test_name_tags_and_wandb_mode_from_the_environment(tmp_path, monkeypatch):
    cfg = OmegaConf.create({"project": "p", "entity": None, "group": "g", "mode": "online",
                            "name": "my-run", "tags": ["ablation", "135m"], "kind": "wandb"})
    monkeypatch.setenv("WANDB_MODE", "offline")  # W&B's convention wins over logger.mode
    logger = WandbLogger(cfg, tmp_path, {"task": "sweep"})
    assert logger.run.name == "my-run" and set(logger.run.tags) == {"ablation", "135m"}
    assert logger.run.group == "g" and logger.run.settings.mode == "offline"
    logger.finish([], {}, 0)
    logger.wandb.teardown()
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ConfigError, match=r"\$WANDB_MODE: 'sometimes'; valid choices: "):
        check_logger(cfg)


def test_online_accepts_a_login_for_a_self_hosted_server(tmp_path, monkeypatch):
    cfg = OmegaConf.create({"kind": "wandb", "mode": "online"})
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine wandb.example.org\n  login user\n  password k3y\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    check_logger(cfg)  # the login for the configured server is enough
    monkeypatch.setenv("WANDB_BASE_URL", "https://other.example.org")
    with pytest.raises(ConfigError, match="API key for other.example.org"):
        check_logger(cfg)


def test_loggers_are_a_registry_that_logger_kind_names(tmp_path, monkeypatch):
    """A registered logger is valid in logger.kind and built by make_logger; an unknown
    kind lists the registered ones."""
    from neva_sweep.sweep import tracking

    class Recorder(tracking.NullLogger):
        checked: list = []

        @staticmethod
        def check(cfg):
            Recorder.checked.append(cfg.kind)

    monkeypatch.setattr(tracking, "LOGGERS", Registry("logger"))
    for name, cls in (("wandb", WandbLogger), ("none", tracking.NullLogger),
                      ("recorder", Recorder)):
        tracking.LOGGERS.register(name, cls)
    cfg = OmegaConf.create({"kind": "recorder"})
    check_logger(cfg)
    assert Recorder.checked == ["recorder"]
    assert isinstance(tracking.make_logger(cfg, tmp_path, {}), Recorder)
    with pytest.raises(ConfigError, match=r"^logger.kind: unknown logger 'mlflow'; valid "
                                          r"choices: wandb, none, recorder \(or pick a preset"):
        check_logger(OmegaConf.create({"kind": "mlflow"}))
