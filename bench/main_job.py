"""Wall time of the main job on a fresh clone with an empty cache, split into its phases.

    python bench/main_job.py --rev REV --label before|after [--keep]

Clones this repository at REV into a temporary directory and runs `bash scripts/main.sh` there exactly as a
user would, with a fresh `.venv`, an empty DPSEARCH_HOME (no pretrained model, no MNIST, no FID extractor),
its own embedded S3 + MLflow servers (their own directory and free ports, stopped afterwards). pip's own
download cache is the machine's: on a fresh machine the install also downloads ≈ 7 GB, which is not timed here.

Every output line (tqdm redraws split on carriage returns) is stamped with the seconds since the start; the
phases are the spans between marker lines that every version of the job prints. Run it on an otherwise idle
machine. Prints a table and writes bench/results/main_job-LABEL.json (the timestamped log: TMPDIR/main_job-LABEL.log).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"

# (phase, regex of the line that starts it), in the order the job runs them; a phase ends where the next
# one that occurs begins. Matched against each line; the first match of each marker counts.
MARKERS = [
    ("setup (venv + pip install)", r"^\[setup\] (creating|installing)"),
    ("start: data, services, probes", r"^\[setup\] ok"),
    ("calibrating ε (the trials' share of the total)", r"solving the per-trial ε"),
    ("public pretraining (AE + LDM)", r"rendering printed digits|pretrain autoencoder|installed the shipped pretrained"),
    ("start: data, services, probes ", r"pretrained model saved to|reusing pretrained model|^\S*\s*design: "),
    ("DP validation generator", r"making the DP synthetic validation set"),
    ("Ray start", r"running \d+ trials at once"),
    ("trials", r"dp_trial pid=|Trial dp_trial_\w+ started"),
    ("final stage (free choice + release)", r"final stage:"),
    ("summary and exit", r"^privacy report of sweep"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Lists every object of the sweeps' storage with its modification time (epoch seconds), run with the clone's venv
# while the job's embedded S3 still runs. What it reads is what the docs call "not covered" (the storage's own
# timestamps, readable by whoever can read the sweep's storage): fine for a benchmark on MNIST.
_LIST = """
import json, sys, boto3
c = json.load(open(sys.argv[1]))
s3 = boto3.client("s3", endpoint_url=sys.argv[2], aws_access_key_id=c["key"], aws_secret_access_key=c["secret"],
                  region_name="us-east-1")
out = []
for page in s3.get_paginator("list_objects_v2").paginate(Bucket="dpsearch", Prefix="sweeps/"):
    out += [[o["Key"], o["LastModified"].timestamp()] for o in page.get("Contents", [])]
print(json.dumps(out))
"""


def storage_timeline(repo: Path, work: Path, port: str, t0: float) -> list[dict]:
    """The final stage's split from the sweep storage's own timestamps (the job prints the stage as one span):
    the last trial object, the final run's model (final/trained/), the first release file (after the free choice
    and the release's sampling) and final/result.json (after the release's upload). Seconds from the job's start."""
    r = subprocess.run([str(repo / ".venv" / "bin" / "python"), "-c", _LIST, str(work / "services" / "credentials.json"),
                        f"http://127.0.0.1:{port}"], capture_output=True, text=True)
    if r.returncode:
        print(f"storage timeline not read: {r.stderr.strip()[-300:]}")
        return []
    objs = [(k, t - t0) for k, t in json.loads(r.stdout)]

    def when(pred, agg):
        ts = [t for k, t in objs if pred(k)]
        return agg(ts) if ts else None
    trial_end = when(lambda k: "/dp_trial_" in k, max)
    trained = when(lambda k: "/final/trained/" in k, max)
    release = when(lambda k: "/final/release/" in k, min)
    result = when(lambda k: k.endswith("/final/result.json"), max)
    marks = [("last trial object written", trial_end), ("final run's model stored", trained),
             ("first release file (free choice and release sampling done)", release), ("final/result.json", result)]
    return [{"event": e, "seconds": round(t, 1)} for e, t in marks if t is not None]


def run(rev: str, work: Path, extra: list[str]) -> tuple[list[tuple[float, str]], int, float, list[dict]]:
    repo = work / "repo"
    subprocess.run(["git", "clone", "-q", str(REPO), str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", rev], check=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DPSEARCH_", "MLFLOW_", "AWS_", "RAY_", "VIRTUAL_ENV", "PYTHONPATH"))}
    env.update(DPSEARCH_HOME=str(work / "home"), DPSEARCH_SERVICES_DIR=str(work / "services"),
               DPSEARCH_S3_PORT=str(free_port()), DPSEARCH_MLFLOW_PORT=str(free_port()), PYTHONUNBUFFERED="1")
    lines: list[tuple[float, str]] = []
    t0 = time.time()
    with open(work / "main.log", "w") as log:
        p = subprocess.Popen(["bash", "scripts/main.sh", *extra], cwd=repo, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
        buf = b""
        while True:
            chunk = p.stdout.read1(65536)
            if not chunk:
                break
            buf += chunk
            *parts, buf = re.split(rb"\r\n|\r|\n", buf)
            for part in parts:
                text = part.decode(errors="replace")
                t = time.time() - t0
                lines.append((t, text))
                log.write(f"{t:8.1f} {text}\n")
        rc = p.wait()
        if buf:
            lines.append((time.time() - t0, buf.decode(errors="replace")))
    total = time.time() - t0
    timeline = storage_timeline(repo, work, env["DPSEARCH_S3_PORT"], t0)
    # The job leaves its embedded servers running (as for a user); this benchmark stops its own.
    subprocess.run([str(repo / ".venv" / "bin" / "dpsearch"), "services", "down", "--dir", str(work / "services")],
                   env=env, capture_output=True)
    return lines, rc, total, timeline


def phases(lines: list[tuple[float, str]], total: float) -> list[dict]:
    starts = []
    for name, pattern in MARKERS:
        hit = next((t for t, text in lines if re.search(pattern, text)), None)
        if hit is not None:
            starts.append((hit, name.strip()))
    starts.sort()
    out: list[dict] = []
    first = starts[0][0] if starts else total
    if first > 0:
        out.append({"phase": "clone and start", "seconds": first})
    for i, (t, name) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else total
        out.append({"phase": name, "seconds": end - t})
    merged: dict[str, float] = {}
    for row in out:  # the two "start" spans are one phase
        merged[row["phase"]] = merged.get(row["phase"], 0.0) + row["seconds"]
    return [{"phase": k, "seconds": v} for k, v in merged.items()]


def table(rows: list[dict], total: float, rc: int) -> None:
    print(f"\n{'phase':<48} {'seconds':>8} {'min':>6} {'share':>6}")
    for r in rows:
        print(f"{r['phase']:<48} {r['seconds']:8.0f} {r['seconds'] / 60:6.1f} {r['seconds'] / total:6.0%}")
    print(f"{'whole job (exit code %d)' % rc:<48} {total:8.0f} {total / 60:6.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default="HEAD", help="git revision of this repository to run")
    ap.add_argument("--label", required=True, help="name of the result, e.g. before / after")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a new temporary directory")
    ap.add_argument("--keep", action="store_true", help="keep the clone, venv and caches afterwards")
    ap.add_argument("--from-log", type=Path, default=None, help="recompute the phases of a kept log (TMPDIR/main_job-LABEL.log)")
    a, extra = ap.parse_known_args()
    if a.from_log:
        stamped = [(float(t), text) for t, _, text in (ln.rstrip("\n").strip().partition(" ") for ln in open(a.from_log))
                   if t.replace(".", "", 1).isdigit()]
        res = json.loads((RESULTS / f"main_job-{a.label}.json").read_text())
        res["phases"] = phases(stamped, res["seconds"])
        (RESULTS / f"main_job-{a.label}.json").write_text(json.dumps(res, indent=2))
        table(res["phases"], res["seconds"], res["exit_code"])
        return
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", a.rev], check=True, capture_output=True,
                         text=True).stdout.strip()
    work = a.workdir or Path(tempfile.mkdtemp(prefix=f"main-job-{a.label}-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"main job at {rev[:10]} in {work} (log: {work / 'main.log'})", flush=True)
    lines, rc, total, timeline = run(rev, work, extra)
    rows = phases(lines, total)
    table(rows, total, rc)
    for ev in timeline:
        print(f"  t = {ev['seconds'] / 60:5.1f} min: {ev['event']}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"main_job-{a.label}.json"
    out.write_text(json.dumps({"rev": rev, "label": a.label, "exit_code": rc, "seconds": total, "phases": rows,
                               "storage_timeline": timeline, "args": extra, "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M"),
                               "log_tail": [text for _, text in lines[-40:]]}, indent=2))
    kept = Path(tempfile.gettempdir()) / f"main_job-{a.label}.log"  # timestamped log, kept outside the repo
    shutil.copy(work / "main.log", kept)
    print(f"wrote {out}; log {kept}")
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(rc)


if __name__ == "__main__":
    main()
