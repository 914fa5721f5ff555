"""The sweep's W&B logger with the real client in offline mode: per-study step metrics,
native scatter plots per value, the trials table and the report artifact."""

from __future__ import annotations

import json

from omegaconf import OmegaConf

from neva_sweep.sweep.logging import WandbLogger
from neva_sweep.sweep.plan import StudyKey
from neva_sweep.sweep.scheduler import Outcome


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
    assert b"scatter/power/alignment_vs_kl" in log and b"scatter/power/alignment_vs_nlr" in log
    assert b"index.html" in log  # the report artifact's manifest
