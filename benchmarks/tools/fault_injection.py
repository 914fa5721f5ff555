"""Fault-injection campaign against real sweep drivers (tiny model, local Ray, SQLite).

Each round starts ``python -m neva_sweep task=sweep ...`` as a real subprocess on a fresh
run directory, waits (reading the run's Optuna storage) until the first trial is COMPLETE,
waits a random further time and injects one fault:

- ``SIGINT`` / ``SIGTERM`` / ``SIGKILL`` sent to the driver process (only the driver, not
  its Ray processes);
- ``second_driver``: the same command started on the same run directory while the first
  runs; it must exit non-zero within seconds, naming the first driver (its pid).

Then the same command is run again until every study has its ``search.n_trials`` COMPLETE
trials (at most ``--max-resumes`` times). Per round it records the exit codes, the
COMPLETE trials read from the storage just before the fault, when the faulted driver had
exited and after the resume, the trials lost (COMPLETE before the fault but missing, no
longer COMPLETE, or with other params or values after), the duplicates (more COMPLETE
trials in a study than n_trials, or two COMPLETE trials of a study with identical params
and values), RUNNING trials left, how long the second driver took to exit, whether
trials.csv agrees with the storage, and Ray processes of a killed driver left behind.
Rounds cycle through the fault kinds; all share one ``cache_dir``, so the statistics are
computed once.

    OMP_NUM_THREADS=1 python benchmarks/tools/fault_injection.py --rounds 8 --seed 0 \
        --json fault_injection.json

The harness imports only Optuna and psutil (not neva_sweep), so it stays light beside the
drivers it watches.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import optuna
import psutil

ROOT = Path(__file__).resolve().parents[2]  # the repository root
KINDS = ("SIGINT", "SIGTERM", "SIGKILL", "second_driver")
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}
# A small sweep with the tests' small judge/capability settings (SWEEP_FAST in tests/helpers.py).
SWEEP = ["task=sweep", "model=tiny_llama", "sweep.values=[benevolence,power]",
         "sweep.methods=[neva]", "search.n_startup_trials=2", "sweep.capability.mc_limit=8",
         "sweep.judge.scenarios_limit=4", "sweep.judge.null_edits=2",
         "sweep.capability.neutral_limit=4", "sweep.capability.fluency_queries=0",
         "judge.n_boot=50", "logger=none", "progress=false",
         "cluster.replicas_per_model=2", "cluster.num_cpus_per_actor=1"]
N_STUDIES = 2  # values x methods above
POLL_S = 0.1


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the driver ---------------------------------------------------------------------------
def driver_cmd(run: Path, cache: Path, n_trials: int) -> list[str]:
    return [sys.executable, "-m", "neva_sweep", *SWEEP, f"cache_dir={cache}",
            f"hydra.run.dir={run}", f"search.n_trials={n_trials}"]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1", "HYDRA_FULL_ERROR": "0"}


def launch(cmd: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env(),
                                stdin=subprocess.DEVNULL)


def wait_rc(proc: subprocess.Popen, timeout_s: float) -> tuple[int, bool]:
    """The exit code, and whether the process had to be killed after ``timeout_s``."""
    try:
        return proc.wait(timeout=timeout_s), False
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(), True


def descendants(pid: int) -> list[tuple[int, float]]:
    """(pid, create_time) of every live descendant of ``pid``."""
    try:
        return [(c.pid, c.create_time()) for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def still_alive(procs: list[tuple[int, float]]) -> list[psutil.Process]:
    out = []
    for pid, created in procs:
        try:
            p = psutil.Process(pid)
            if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def leftovers(procs: list[tuple[int, float]], grace_s: float) -> list[psutil.Process]:
    """Descendants of an ended driver still running after ``grace_s``."""
    deadline = time.monotonic() + grace_s
    left = still_alive(procs)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = still_alive(procs)
    return left


def names(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            out.append(f"{p.pid}:{p.name()}")
        except psutil.Error:
            pass
    return out


def kill_all(procs: list[psutil.Process]) -> None:
    """Kill each by its pid (processes this campaign started)."""
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass


# -- the storage --------------------------------------------------------------------------
def open_rdb(run: Path) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(f"sqlite:///{run / 'optuna.db'}",
                                      engine_kwargs={"connect_args": {"timeout": 60}})


def snapshot(storage: optuna.storages.RDBStorage) -> dict[str, list[dict]]:
    """Every study's trials: number, state, values, params, alignment/nlr attributes, error."""
    for attempt in range(20):
        try:
            out = {}
            for s in storage.get_all_studies():
                out[s.study_name] = [
                    {"number": t.number, "state": t.state.name,
                     "values": list(t.values) if t.values is not None else None,
                     "params": dict(sorted(t.params.items())),
                     "alignment": t.user_attrs.get("alignment"),
                     "nlr": t.user_attrs.get("nlr"), "error": t.user_attrs.get("error")}
                    for t in storage.get_all_trials(s._study_id, deepcopy=False)]
            return out
        except Exception:  # "database is locked" while a driver writes: read again
            if attempt == 19:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


def count(snap: dict[str, list[dict]], state: str) -> int:
    return sum(t["state"] == state for ts in snap.values() for t in ts)


def complete_map(snap: dict[str, list[dict]]) -> dict[tuple[str, int], tuple]:
    return {(name, t["number"]): (json.dumps(t["params"], sort_keys=True), tuple(t["values"]))
            for name, ts in snap.items() for t in ts if t["state"] == "COMPLETE"}


def all_done(snap: dict[str, list[dict]], n_trials: int) -> bool:
    return len(snap) == N_STUDIES and all(
        sum(t["state"] == "COMPLETE" for t in ts) >= n_trials for ts in snap.values())


def lost_trials(before: dict, after: dict) -> list[dict]:
    b, a = complete_map(before), complete_map(after)
    out = []
    for key, sig in sorted(b.items()):
        if key not in a:
            state = next((t["state"] for t in after.get(key[0], []) if t["number"] == key[1]),
                         "missing")
            out.append({"study": key[0], "trial": key[1], "now": state})
        elif a[key] != sig:
            out.append({"study": key[0], "trial": key[1], "now": "changed params/values"})
    return out


def duplicates(snap: dict, n_trials: int) -> dict:
    over = {name: n - n_trials for name, ts in snap.items()
            if (n := sum(t["state"] == "COMPLETE" for t in ts)) > n_trials}
    same = []
    for name, ts in snap.items():
        groups: dict[tuple, list[int]] = {}
        for t in ts:
            if t["state"] == "COMPLETE":
                sig = (json.dumps(t["params"], sort_keys=True), tuple(t["values"]))
                groups.setdefault(sig, []).append(t["number"])
        same += [{"study": name, "trials": nums} for nums in groups.values() if len(nums) > 1]
    return {"over_n_trials": over, "identical": same,
            "count": sum(over.values()) + sum(len(g["trials"]) - 1 for g in same)}


def csv_agrees(run: Path, snap: dict) -> tuple[bool, str]:
    """trials.csv has exactly the storage's trials, states and (COMPLETE) alignment/nlr."""
    path = run / "trials.csv"
    if not path.is_file():
        return False, "no trials.csv"
    with path.open() as f:
        rows = {(r["study"], int(r["trial"])): r for r in csv.DictReader(f)}
    stored = {(name, t["number"]): t for name, ts in snap.items() for t in ts}
    if set(rows) != set(stored):
        return False, (f"trials differ: only in csv {sorted(set(rows) - set(stored))}, only in "
                       f"storage {sorted(set(stored) - set(rows))}")
    for key, t in stored.items():
        r = rows[key]
        if r["state"] != t["state"]:
            return False, f"{key}: csv state {r['state']}, storage {t['state']}"
        if t["state"] == "COMPLETE":
            for m in ("alignment", "nlr"):
                if not math.isclose(float(r[m]), t[m], rel_tol=1e-9, abs_tol=1e-12):
                    return False, f"{key}: csv {m} {r[m]}, storage {t[m]}"
    return True, f"{len(rows)} rows"


# -- a round ------------------------------------------------------------------------------
def wait_until(cond, proc: subprocess.Popen, timeout_s: float) -> bool:
    """Poll ``cond`` until true (True), the driver exits or the time is up (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        if proc.poll() is not None:
            return bool(cond())
        time.sleep(POLL_S)
    return False


def tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def run_round(i: int, kind: str, args, cache: Path, work: Path, rng: random.Random) -> dict:
    run = work / f"round{i:02d}_{kind}"
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    k = args.trials_second if kind == "second_driver" else args.trials
    cmd = driver_cmd(run, cache, k)
    rec: dict = {"round": i, "fault": kind, "n_trials": k, "run_dir": str(run),
                 "exercised": False, "problems": [], "notes": []}
    log1 = logs / f"round{i:02d}_driver.log"
    t0 = time.monotonic()
    first = launch(cmd, log1)
    rec["driver_pid"] = first.pid

    # The storage is opened once the driver has created its studies (its "sweep:" line),
    # so this process never races it creating the schema.
    if not wait_until(lambda: "sweep: " in tail(log1, 10**6), first, args.start_timeout):
        rc, killed = wait_rc(first, 1)
        rec["problems"].append(f"driver never opened its studies (rc {rc}): {tail(log1)}")
        return rec
    storage = open_rdb(run)
    state = {"snap": {}}

    def first_complete() -> bool:
        state["snap"] = snapshot(storage)
        return count(state["snap"], "COMPLETE") > 0

    if not wait_until(first_complete, first, args.start_timeout):
        rc, _ = wait_rc(first, 1)
        rec["problems"].append(f"no COMPLETE trial before the driver ended (rc {rc})")
        return rec
    rec["first_complete_s"] = round(time.monotonic() - t0, 2)
    delay = rng.uniform(0, args.max_delay)
    rec["delay_s"] = round(delay, 3)
    end = time.monotonic() + delay
    while time.monotonic() < end and first.poll() is None:
        time.sleep(0.02)
    children = descendants(first.pid)
    before = snapshot(storage)
    rec["complete_before"] = count(before, "COMPLETE")
    rec["running_at_fault"] = count(before, "RUNNING")
    if first.poll() is not None:
        rec["problems"].append(f"the driver finished (rc {first.returncode}) before the fault")
        rec["rc_first"] = first.returncode
        after = before
        rec["rc_resumes"] = []
    else:
        if kind in SIGNALS:
            t_sig = time.monotonic()
            os.kill(first.pid, SIGNALS[kind])
            rc1, hung = wait_rc(first, args.stop_timeout)
            rec["stop_s"] = round(time.monotonic() - t_sig, 2)
            rec["rc_first"], rec["exercised"] = rc1, True
            if hung:
                rec["problems"].append(f"driver still running {args.stop_timeout} s after "
                                       f"{kind}: killed")
        else:
            log2 = logs / f"round{i:02d}_second.log"
            t2 = time.monotonic()
            second = launch(cmd, log2)
            rc2, hung = wait_rc(second, args.stop_timeout)
            rec["second_exit_s"] = round(time.monotonic() - t2, 2)
            rec["rc_second"] = rc2
            first_alive = first.poll() is None
            rec["first_alive_when_second_exited"] = first_alive
            text = tail(log2, 10**6)
            rec["second_message"] = next((line for line in text.splitlines()
                                          if line.startswith("error:")), text[-300:])
            rec["second_named_first"] = (f"pid {first.pid}," in text
                                         and "holds the lock" in text)
            rec["exercised"] = first_alive
            if not first_alive:
                rec["problems"].append("the first driver had ended before the second exited: "
                                       "the refusal was not exercised")
            if hung:
                rec["problems"].append("second driver still running: killed")
            if rc2 == 0 or not rec["second_named_first"]:
                if first_alive:
                    rec["problems"].append(f"second driver: rc {rc2}, message "
                                           f"{rec['second_message']!r}")
            t_second_end = time.monotonic()
            rc1, hung1 = wait_rc(first, args.start_timeout)
            rec["rc_first"] = rc1
            rec["first_ran_on_s"] = round(time.monotonic() - t_second_end, 2)
            if hung1:
                rec["problems"].append("first driver did not finish: killed")
        t_end = time.monotonic()
        at_exit = snapshot(storage)
        rec["complete_at_exit"] = count(at_exit, "COMPLETE")
        rec["running_at_exit"] = count(at_exit, "RUNNING")
        rec["lock_left_at_exit"] = (run / "optuna.db.driver.lock").exists()
        # Ray processes of the faulted driver still there after the grace time are left
        # running through the resume, to see whether they go by themselves.
        left = leftovers(children, args.leftover_grace)
        rec["leftover_processes"] = names(left)
        if left:
            rec["notes"].append(f"{len(left)} process(es) of the faulted driver still running "
                                f"{args.leftover_grace:.0f} s after it ended: "
                                f"{', '.join(names(left))}")

        # Resume with the same command until the studies are complete.
        rec["rc_resumes"] = []
        after = at_exit
        while not all_done(after, k) and len(rec["rc_resumes"]) < args.max_resumes:
            j = len(rec["rc_resumes"])
            logr = logs / f"round{i:02d}_resume{j}.log"
            p = launch(cmd, logr)
            kids: list[tuple[int, float]] = []
            while p.poll() is None:  # its Ray processes, to check none outlive it
                kids = list(dict.fromkeys(kids + descendants(p.pid)))
                try:
                    p.wait(timeout=1)
                except subprocess.TimeoutExpired:
                    pass
                if time.monotonic() - t0 > args.start_timeout * 4:
                    p.kill()
                    p.wait()
                    rec["problems"].append("resume driver timed out: killed")
            rec["rc_resumes"].append(p.returncode)
            if p.returncode != 0:
                rec["problems"].append(f"resume {j} exited {p.returncode}: {tail(logr, 400)}")
            rleft = leftovers(kids, args.leftover_grace)
            if rleft:
                rec.setdefault("leftover_after_resume", []).extend(names(rleft))
                rec["notes"].append(f"resume {j}: {len(rleft)} process(es) still running "
                                    f"{args.leftover_grace:.0f} s after it ended (killed)")
                kill_all(rleft)
            after = snapshot(storage)
            text = tail(logr, 10**6)
            if "taking over" in text:
                rec["lock_taken_over"] = True
            for line in text.splitlines():
                if "left RUNNING by a stopped driver" in line:
                    rec["stale_marked_fail_msg"] = line.split(" - ", 1)[-1]
        if left:
            still = still_alive([(p.pid, p.create_time()) for p in left
                                 if p.is_running()])
            rec["leftover_after_resumes"] = names(still)
            rec["notes"].append(f"{len(still)} of them still running after the resume(s), "
                                f"{time.monotonic() - t_end:.0f} s after the driver ended"
                                + (" (killed)" if still else ""))
            kill_all(still)
    storage.engine.dispose()

    rec["complete_after"] = count(after, "COMPLETE")
    rec["complete_per_study"] = {n: sum(t["state"] == "COMPLETE" for t in ts)
                                 for n, ts in after.items()}
    rec["fail_after"] = count(after, "FAIL")
    rec["fail_errors"] = dict(Counter((t["error"] or "")[:60] for ts in after.values()
                                      for t in ts if t["state"] == "FAIL"))
    rec["running_left"] = count(after, "RUNNING")
    rec["lost"] = lost_trials(before, after)
    rec["duplicates"] = duplicates(after, k)
    rec["studies_complete"] = all_done(after, k)
    rec["csv_agrees"], rec["csv_detail"] = csv_agrees(run, after)
    rec["lock_left_at_end"] = (run / "optuna.db.driver.lock").exists()
    rec["wall_s"] = round(time.monotonic() - t0, 1)
    for cond, msg in ((rec["lost"], f"lost trials: {rec['lost']}"),
                      (rec["duplicates"]["count"], f"duplicates: {rec['duplicates']}"),
                      (rec["running_left"], f"{rec['running_left']} RUNNING left"),
                      (not rec["studies_complete"], "studies not complete after the resumes"),
                      (not rec["csv_agrees"], f"trials.csv: {rec['csv_detail']}"),
                      (rec["lock_left_at_end"], "lock file left after the last driver")):
        if cond:
            rec["problems"].append(msg)
    return rec


def baseline_exit_s(cache: Path, work: Path) -> dict:
    """How long the CLI takes to reject a config error (sweep.values=[kindness]): the
    start-up cost (imports, Hydra, preflight) a refused second driver also pays."""
    run = work / "baseline"
    log = work / "logs" / "baseline.log"
    log.parent.mkdir(exist_ok=True)
    cmd = driver_cmd(run, cache, 1) + ["sweep.values=[kindness]"]
    t = time.monotonic()
    rc, _ = wait_rc(launch(cmd, log), 300)
    return {"rc": rc, "exit_s": round(time.monotonic() - t, 2),
            "message": next((line for line in tail(log).splitlines()
                             if line.startswith("error:")), "")}


# -- report -------------------------------------------------------------------------------
def fmt_rcs(r: dict) -> str:
    parts = [str(r.get("rc_first", "-"))]
    if "rc_second" in r:
        parts.append(f"2nd {r['rc_second']}")
    if r.get("rc_resumes"):
        parts.append("resume " + ",".join(map(str, r["rc_resumes"])))
    return "; ".join(parts)


def table(rounds: list[dict]) -> str:
    head = ("round", "fault", "k", "delay s", "exit codes", "COMPLETE before",
            "at exit", "after", "RUNNING at fault", "lost", "dup", "RUNNING left",
            "2nd exit s", "stop s", "csv ok", "leftover procs")
    rows = [head]
    for r in rounds:
        rows.append((
            str(r["round"]), r["fault"], str(r["n_trials"]), str(r.get("delay_s", "-")),
            fmt_rcs(r), str(r.get("complete_before", "-")), str(r.get("complete_at_exit", "-")),
            str(r.get("complete_after", "-")), str(r.get("running_at_fault", "-")),
            str(len(r.get("lost", []))), str(r.get("duplicates", {}).get("count", "-")),
            str(r.get("running_left", "-")), str(r.get("second_exit_s", "-")),
            str(r.get("stop_s", "-")), "yes" if r.get("csv_agrees") else "NO",
            str(len(r.get("leftover_processes", [])))))
    return markdown(rows)


def summary(rounds: list[dict]) -> list[dict]:
    out = []
    for kind in KINDS:
        rs = [r for r in rounds if r["fault"] == kind]
        if not rs:
            continue
        sec = [r["second_exit_s"] for r in rs if "second_exit_s" in r]
        out.append({
            "fault": kind, "rounds": len(rs), "exercised": sum(r["exercised"] for r in rs),
            "exit_codes": sorted({fmt_rcs(r) for r in rs}),
            "complete_before": [r.get("complete_before") for r in rs],
            "complete_after": [r.get("complete_after") for r in rs],
            "target": [N_STUDIES * r["n_trials"] for r in rs],
            "lost": sum(len(r.get("lost", [])) for r in rs),
            "duplicated": sum(r.get("duplicates", {}).get("count", 0) for r in rs),
            "running_left": sum(r.get("running_left", 0) for r in rs),
            "second_exit_s": [min(sec), max(sec)] if sec else None,
            "csv_agrees": all(r.get("csv_agrees") for r in rs),
            "problems": sum(len(r["problems"]) for r in rs)})
    return out


def summary_table(summ: list[dict]) -> str:
    rows = [("fault", "rounds (exercised)", "exit codes", "COMPLETE before -> after (target)",
             "lost", "duplicated", "RUNNING left", "2nd-driver exit s", "csv agrees")]
    for s in summ:
        ba = ", ".join(f"{b}->{a} ({t})" for b, a, t in
                       zip(s["complete_before"], s["complete_after"], s["target"]))
        sec = "-" if not s["second_exit_s"] else "{:.1f}-{:.1f}".format(*s["second_exit_s"])
        rows.append((s["fault"], f"{s['rounds']} ({s['exercised']})",
                     " / ".join(s["exit_codes"]), ba, str(s["lost"]), str(s["duplicated"]),
                     str(s["running_left"]), sec, "yes" if s["csv_agrees"] else "NO"))
    return markdown(rows)


def markdown(rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=8, help="rounds, cycling through the faults")
    ap.add_argument("--faults", default=",".join(KINDS),
                    help=f"the fault kinds to cycle through (default {','.join(KINDS)})")
    ap.add_argument("--seed", type=int, default=0, help="seeds the fault times")
    ap.add_argument("--json", type=Path, default=None, help="write the records here")
    ap.add_argument("--trials", type=int, default=6,
                    help="search.n_trials per study in signal rounds (2 studies)")
    ap.add_argument("--trials-second", type=int, default=20,
                    help="search.n_trials in second-driver rounds: the first driver must "
                    "outlive the second one's start-up")
    ap.add_argument("--max-delay", type=float, default=2.0,
                    help="the fault comes uniformly 0..this many s after the first COMPLETE")
    ap.add_argument("--max-resumes", type=int, default=3)
    ap.add_argument("--start-timeout", type=float, default=300.0)
    ap.add_argument("--stop-timeout", type=float, default=120.0,
                    help="how long a signalled (or second) driver may take to exit")
    ap.add_argument("--leftover-grace", type=float, default=10.0,
                    help="how long a stopped driver's Ray processes may take to go")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep run directories and logs here (default: a temp dir)")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip timing the CLI's rejection of a config error")
    args = ap.parse_args(argv)
    kinds = [k.strip() for k in args.faults.split(",") if k.strip()]
    if not kinds or set(kinds) - set(KINDS):
        ap.error(f"--faults: choose from {', '.join(KINDS)}")

    rng = random.Random(args.seed)
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="neva_faults_")
        work = Path(tmp.name)
    else:
        work = args.workdir.resolve()
        work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"  # shared by every round: statistics computed once
    (work / "logs").mkdir(exist_ok=True)
    t0 = time.monotonic()
    result: dict = {"command": " ".join(["python", "benchmarks/tools/fault_injection.py",
                                         *(argv if argv is not None else sys.argv[1:])]),
                    "sweep": SWEEP, "args": {k: str(v) for k, v in vars(args).items()},
                    "host_cpus": os.cpu_count(), "rounds": []}
    try:
        if not args.no_baseline:
            result["baseline_config_error"] = baseline_exit_s(cache, work)
            say(f"baseline: a config error exits {result['baseline_config_error']['rc']} "
                f"after {result['baseline_config_error']['exit_s']} s")
        for i in range(args.rounds):
            kind = kinds[i % len(kinds)]
            say(f"round {i}: {kind}")
            rec = run_round(i, kind, args, cache, work, rng)
            result["rounds"].append(rec)
            say(f"round {i}: {kind}: rc {fmt_rcs(rec)}, COMPLETE "
                f"{rec.get('complete_before')} -> {rec.get('complete_after')}, lost "
                f"{len(rec.get('lost', []))}, dup {rec.get('duplicates', {}).get('count')}, "
                f"RUNNING left {rec.get('running_left')}, {rec.get('wall_s')} s"
                + (f"; problems: {rec['problems']}" if rec["problems"] else "")
                + (f"; notes: {rec['notes']}" if rec["notes"] else ""))
            if args.json:  # partial results survive an interrupted campaign
                args.json.write_text(json.dumps(result, indent=2))
    finally:
        result["wall_s"] = round(time.monotonic() - t0, 1)
        result["summary"] = summary(result["rounds"])
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        if tmp is not None:
            tmp.cleanup()
    print(table(result["rounds"]))
    print()
    print(summary_table(result["summary"]))
    problems = [(r["round"], p) for r in result["rounds"] for p in r["problems"]]
    print(f"\n{len(result['rounds'])} rounds in {result['wall_s']:.0f} s; "
          f"{len(problems)} problem(s)")
    for i, p in problems:
        print(f"  round {i}: {p}")
    for r in result["rounds"]:
        for n in r["notes"]:
            print(f"  round {r['round']} (note): {n}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
