"""The verbs on a whole sweep: run one, pull its release or a trial's model, open it in MLflow, write its HTML
report (commands.py holds the single-run verbs and the sweep's storage lookup)."""

from __future__ import annotations

from pathlib import Path

from dpsearch.commands import _default_storage, sweep_path
from dpsearch.config import ConfigError


def cmd_sweep(a) -> int:
    from dpsearch.search import SweepOptions, format_summary, run_sweep

    opts = SweepOptions(eps=a.eps_per_trial, eps_total=a.eps, space=a.space, trials=a.trials, concurrency=a.concurrency, sampler=a.sampler,
                        scheduler=a.scheduler, address=a.address, name=a.name, seed=a.seed, val_eps=a.val_eps,
                        storage=a.storage, model=a.model, prompt=a.prompt, resolution=a.resolution,
                        gpus_per_trial=a.gpus_per_trial,
                        tracking=a.tracking, private_selection=a.private_selection, mean_trials=a.mean_trials, progress=not a.quiet,
                        design=a.design, release=not a.no_release, warm_start=a.warm_start, plan_only=a.plan)
    if a.plan and a.resume:
        raise ConfigError("--plan shows a new sweep's design; a sweep being resumed keeps its own (`dpsearch privacy "
                          "report NAME` shows it)")
    if a.warm_start and a.resume:
        raise ConfigError("--warm-start is part of how a sweep was started; a resumed sweep keeps its own (start a new "
                          "sweep with --warm-start)")
    if a.retry_errored and not a.resume:
        raise ConfigError("--retry-errored only applies with --resume NAME")
    res = run_sweep(opts, resume=a.resume, retry_errored=a.retry_errored)
    if "plan" in res.extra:
        print(res.extra["plan"])
        return 0
    print(format_summary(res))
    return 0 if res.best else 1


def cmd_pull(a) -> int:
    """A sweep's release (by name or directory), or a trial's checkpoint (by URI or MLflow run id), to a local dir,
    verified against its SHA-256 manifest."""
    from dpsearch.outputs import check_output
    from dpsearch.storage import Store, is_remote
    from dpsearch.sweep_store import is_sweep, pull_release

    src = a.what
    if "/" not in src.rstrip("/") or (Path(src) / "dpsearch").is_dir():  # a sweep by name or directory
        where = sweep_path(src, a.storage)
        if is_sweep(where):
            out = Path(a.out)
            check_output(out, a.overwrite)
            rep = pull_release(where, out)
            g = rep["released"]
            print(f"pulled the release of sweep {src} to {out}: model/, release/ (synthetic.npz, data/*.parquet, DATA_CARD.md, "
                  f"card.json, grid.png), PRIVACY_REPORT.txt; every file checked against its SHA-256 manifest")
            print(f"privacy: (ε = {g['eps']:.3f}, δ = {g['delta']:g}) for the whole search")
            return 0
    if not is_remote(src) and not Path(src).exists():
        # an MLflow run id: its `checkpoint` tag says where the trial's checkpoint is
        import os

        from mlflow import MlflowClient

        _default_storage()
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            raise ConfigError(f"{src} is neither a checkpoint URI/path nor resolvable: set MLFLOW_TRACKING_URI or run "
                              f"`dpsearch services up`")
        try:
            src = MlflowClient(uri).get_run(src).data.tags["checkpoint"]
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"cannot find the checkpoint of MLflow run {a.what} on {uri}: {e}") from None
    out = Path(a.out)
    check_output(out, a.overwrite)
    parent, leaf = src.rstrip("/").rsplit("/", 1)
    Store(parent).download_dir(leaf, out)
    from dpsearch.checkpoints import verify_local

    verify_local(out)  # size and SHA-256 of every file against the checkpoint's manifest
    print(f"pulled {src} to {out}")
    return 0


def cmd_ui(a) -> int:
    import os

    from dpsearch import services

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        s = services.load(a.dir)
        if s is None or not services.healthy(s)["mlflow"]:
            raise ConfigError("no MLflow server: set MLFLOW_TRACKING_URI or run `dpsearch services up`")
        uri = s.mlflow_uri
    target = uri
    if a.sweep:
        from dpsearch.tracking import sweep_addresses

        where = sweep_addresses(uri, a.sweep)
        print(f"sweep {a.sweep}: its trials with the columns that matter {where['runs']}\n  objective and oracle accuracy "
              f"against the searched parameters (parallel coordinates): {where['trials_compared']}")
        target = where["trials_compared"]
    else:
        print(uri)
    if a.open:
        import webbrowser

        webbrowser.open(target)
    return 0


def cmd_report(a) -> int:
    from dpsearch.html_report import build_report

    path = sweep_path(a.sweep, a.storage)
    out = Path(a.out) if a.out else Path(f"{Path(a.sweep.rstrip('/')).name}-report.html")
    build_report(path, out)
    print(f"wrote {out.resolve()} (open it in a browser)")
    return 0
