"""The `dpsearch` command. Thin: parse, validate, call one pipeline function per verb."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from dpsearch.config import (ConfigError, EvaluateConfig, FinetuneConfig, PretrainConfig, SampleConfig, default_delta,
                             load_yaml, validate)
from dpsearch.data import DataError, ImageSet
from dpsearch.models.ldm import ModelError
from dpsearch.outputs import OutputExists

DEFAULT_FT = FinetuneConfig(eps=5.0)
DEFAULT_SAMPLE = SampleConfig()


def _float(name):
    def conv(s):
        try:
            return float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {s!r}") from None
    return conv


def _add_finetune_args(p: argparse.ArgumentParser, non_private: bool = False) -> None:
    if non_private:
        g = p.add_mutually_exclusive_group(required=True)
        g.add_argument("--eps", type=_float("--eps"), help="target ε of this DP fine-tune")
        g.add_argument("--non-private", action="store_true",
                       help="a reference run without clipping or noise (NOT DP): what DP costs at the same settings")
    else:
        p.add_argument("--eps", type=_float("--eps"), required=True, help="target ε of this DP fine-tune")
    p.add_argument("--delta", type=_float("--delta"), default=None, help="δ (default: 1/N rounded down to a power of 10, < 1/N)")
    p.add_argument("--layers", default=DEFAULT_FT.layers, help="attention modules a-b to train (1-based, inclusive) or 'all'")
    p.add_argument("--clip", type=_float("--clip"), default=DEFAULT_FT.clip, help="per-sample clip norm C")
    p.add_argument("--batch", type=int, default=DEFAULT_FT.batch, help="expected logical batch size B (q = B/N)")
    p.add_argument("--epochs", type=int, default=DEFAULT_FT.epochs)
    p.add_argument("--lr", type=_float("--lr"), default=DEFAULT_FT.lr)
    p.add_argument("--physical-batch", type=int, default=DEFAULT_FT.physical_batch, help="memory-bound micro-batch")
    p.add_argument("--accountant", choices=["prv", "rdp"], default=DEFAULT_FT.accountant)
    p.add_argument("--secure-rng", action="store_true",
                   help="draw Poisson sampling and noise from the OS CSPRNG (slower; bench/secure_rng.py measures it)")
    p.add_argument("--n-private", type=int, default=None, help="use a random subset of N private images")
    p.add_argument("--private", default="mnist", help="private dataset: mnist, folder:PATH, torchvision:NAME")


def _add_sample_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--per-class", type=int, default=DEFAULT_SAMPLE.per_class)
    p.add_argument("--steps", "--ddim-steps", dest="steps", type=int, default=DEFAULT_SAMPLE.steps,
                   help="denoising steps of the sampler (--ddim-steps is the old name)")
    p.add_argument("--scheduler", choices=["ddim", "dpm++"], default=DEFAULT_SAMPLE.scheduler,
                   help="sampling scheduler (bench/sampling.py compares them)")
    p.add_argument("--guidance", type=_float("--guidance"), default=DEFAULT_SAMPLE.guidance)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:i]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _ft_config(a) -> FinetuneConfig:
    return validate(FinetuneConfig, eps=a.eps, delta=a.delta, layers=a.layers, clip=a.clip, batch=a.batch,
                    epochs=a.epochs, lr=a.lr, physical_batch=a.physical_batch, accountant=a.accountant,
                    n_private=a.n_private, seed=a.seed, secure_rng=a.secure_rng,
                    non_private=getattr(a, "non_private", False))


def _sample_config(a) -> SampleConfig:
    return validate(SampleConfig, per_class=a.per_class, steps=a.steps, scheduler=a.scheduler,
                    guidance=a.guidance, seed=a.seed)


def _pretrain_config(a) -> PretrainConfig:
    return load_yaml(Path(a.config), PretrainConfig) if getattr(a, "config", None) else PretrainConfig()


def _private(spec: str, n: int | None, seed: int) -> tuple[ImageSet, ImageSet | None]:
    from dpsearch.data import load_dataset

    train, test = load_dataset(spec)
    return train.subset(n, seed=seed), test


def cmd_pretrain(a) -> int:
    from dpsearch.baseline import public_baseline
    from dpsearch.device import pick_device
    from dpsearch.pretrain import pretrain

    t = time.time()
    path = pretrain(_pretrain_config(a), out=a.out, overwrite=a.overwrite, device=a.device)
    print(f"pretrained model: {path} ({time.time() - t:.0f}s)")
    if not a.no_baseline:
        res = public_baseline(path, _sample_config(a), EvaluateConfig(seed=a.seed), device=str(pick_device(a.device)),
                              progress=not a.quiet)
        print(f"public-only baseline: oracle accuracy {100 * res['oracle/accuracy']:.2f}% on real MNIST test "
              f"(not DP; a CNN trained on {res['n_synthetic']} samples of the pretrained model), "
              f"oracle FID {res['oracle/fid']:.2f} [{res['fid_extractor']}]")
    return 0


def cmd_layers(a) -> int:
    from dpsearch.models import layer_table, load_ldm

    model = load_ldm(a.model)
    print(layer_table(model.unet, model.embedder, a.range))
    return 0


def cmd_finetune(a) -> int:
    from dpsearch.device import pick_device
    from dpsearch.outputs import atomic_dir, check_output
    from dpsearch.pipeline import run_pipeline, write_outputs
    from dpsearch.privacy.dpsgd import plan_privacy

    cfg = _ft_config(a)
    check_output(Path(a.out), a.overwrite)
    private, _ = _private(a.private, cfg.n_private, a.seed)
    plan_privacy(cfg, len(private))
    out = run_pipeline(a.model, private, cfg, device=str(pick_device(a.device)), progress=not a.quiet)
    with atomic_dir(Path(a.out), a.overwrite) as tmp:
        write_outputs(tmp, out, {"privacy": out.privacy})
    print(f"(ε = {out.privacy['eps']:.3f}, δ = {out.privacy['delta']:g})-DP by {out.privacy['accountant'].upper()}, "
          f"σ = {out.privacy['sigma']:.4f}, q = {out.privacy['q']:.5f}, steps = {out.privacy['steps']}, "
          f"layers {out.privacy['layers']}")
    print(f"model ({a.out}/model) and privacy.json written to {a.out}")
    return 0


def cmd_sample(a) -> int:
    from dpsearch.device import pick_device
    from dpsearch.models import load_ldm
    from dpsearch.outputs import atomic_dir
    from dpsearch.sample import sample, save_grid

    cfg = _sample_config(a)
    out = Path(a.out)
    model = load_ldm(a.model, pick_device(a.device))
    with atomic_dir(out, a.overwrite) as tmp:
        synth = sample(model, cfg, progress=not a.quiet)
        synth.save(tmp / "synthetic.npz")
        save_grid(synth, tmp / "samples.png")
    print(f"{len(synth)} synthetic images {synth.class_counts()} per class → {out}/synthetic.npz, grid {out}/samples.png")
    return 0


def cmd_evaluate(a) -> int:
    from dpsearch.data import load_dataset
    from dpsearch.evaluate import evaluate

    path = Path(a.synthetic)
    synth = ImageSet.load(path / "synthetic.npz" if path.is_dir() else path)
    _, test = load_dataset(a.test)
    res = evaluate(synth, test, EvaluateConfig(seed=a.seed, fid_extractor=a.fid_extractor), progress=not a.quiet)
    print(json.dumps(res, indent=2))
    return 0


def cmd_run(a) -> int:
    """One full trial: pretrain (cached) → DP fine-tune → sample → evaluate, outside any sweep."""
    from dpsearch.device import pick_device
    from dpsearch.pretrain import pretrain
    from dpsearch.trial import run_trial

    ft = _ft_config(a)
    budget = "nonprivate" if ft.non_private else f"eps{a.eps:g}"
    out = Path(a.out or f"runs/trial-{budget}-layers{ft.layers}-{time.strftime('%Y%m%d-%H%M%S')}")
    from dpsearch.outputs import check_output

    check_output(out, a.overwrite)
    private, test = _private(a.private, ft.n_private, a.seed)
    ft.check_against_data(len(private))
    t = time.time()
    model = a.model or pretrain(_pretrain_config(a), device=a.device)
    summary = run_trial(model, private, test, ft, _sample_config(a), EvaluateConfig(seed=a.seed), out, a.overwrite,
                        str(pick_device(a.device)), progress=not a.quiet)
    p, m = summary["privacy"], summary["metrics"]
    if not p.get("dp", True):
        print(f"privacy: NONE. {p['statement']}")
    else:
        print(f"privacy: (ε = {p['eps']:.3f}, δ = {p['delta']:g}) by {p['accountant'].upper()} "
              f"[PLD check {p['eps_pld_check']:.3f}], σ = {p['sigma']:.4f}, q = {p['q']:.5f}, steps = {p['steps']}, "
              f"layers {p['layers']} ({100 * p['trainable_fraction']:.1f}% of UNet trainable); noise and sampling "
              f"from fresh OS entropy ({p['randomness']})")
    if "oracle/accuracy" in m:
        print(f"oracle accuracy (real test split, not DP): {100 * m['oracle/accuracy']:.2f}%; "
              f"oracle FID {m['oracle/fid']:.2f} [{m['fid_extractor']}]")
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in summary["seconds"].items()) + f"; total {time.time() - t:.0f}")
    print(f"trial written to {out}")
    return 0


def cmd_sweep(a) -> int:
    from dpsearch.search import SweepOptions, format_summary, run_sweep

    opts = SweepOptions(eps=a.eps, space=a.space, trials=a.trials, concurrency=a.concurrency, sampler=a.sampler,
                        scheduler=a.scheduler, address=a.address, name=a.name, seed=a.seed, val_eps=a.val_eps,
                        storage=a.storage, model=a.model, gpus_per_trial=a.gpus_per_trial,
                        tracking=a.tracking, private_selection=a.private_selection, eps_total=a.eps_total, mean_trials=a.mean_trials, progress=not a.quiet)
    if a.retry_errored and not a.resume:
        raise ConfigError("--retry-errored only applies with --resume NAME")
    res = run_sweep(opts, resume=a.resume, retry_errored=a.retry_errored)
    print(format_summary(res))
    return 0 if res.best else 1


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dpsearch", description="DP fine-tuning of latent diffusion models")
    sub = ap.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("pretrain", help="train autoencoder + LDM on public data (cached), report the public-only baseline")
    p.add_argument("--config", help="YAML PretrainConfig (default: the embedded one)")
    p.add_argument("--out", type=Path, default=None, help="model directory (default: cache under DPSEARCH_HOME)")
    p.add_argument("--no-baseline", action="store_true")
    _add_sample_args(p)
    _common(p)
    p.set_defaults(fn=cmd_pretrain)

    p = sub.add_parser("layers", help="print the numbered attention modules of a model")
    p.add_argument("model", help="model directory or hub id")
    p.add_argument("--range", default=None, help="show the trainable fraction of this a-b range")
    p.set_defaults(fn=cmd_layers)

    p = sub.add_parser("finetune", help="DP fine-tune attention layers a-b of a pretrained model")
    p.add_argument("--model", required=True, help="pretrained model directory or hub id")
    p.add_argument("--out", required=True)
    _add_finetune_args(p)
    _common(p)
    p.set_defaults(fn=cmd_finetune)

    p = sub.add_parser("sample", help="sample a class-balanced synthetic dataset with a PNG grid")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    _add_sample_args(p)
    _common(p)
    p.set_defaults(fn=cmd_sample)

    p = sub.add_parser("evaluate", help="downstream CNN on synthetic data; oracle accuracy and FID on real test")
    p.add_argument("synthetic", help="synthetic.npz or a directory holding it")
    p.add_argument("--test", default="mnist", help="dataset whose test split is the oracle")
    p.add_argument("--fid-extractor", choices=["auto", "inception", "public-cnn"], default="auto")
    _common(p)
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("run", help="one full trial: pretrain (cached) → DP fine-tune → sample → evaluate")
    p.add_argument("--model", default=None, help="pretrained model (default: pretrain or reuse the cached default)")
    p.add_argument("--config", help="YAML PretrainConfig for the pretraining step")
    p.add_argument("--out", default=None, help="trial directory (default: runs/trial-…)")
    _add_finetune_args(p, non_private=True)
    _add_sample_args(p)
    _common(p)
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("sweep", help="Ray Tune + Optuna sweep over layer range, C, B, lr, epochs under one fixed ε")
    p.add_argument("--eps", type=_float("--eps"), default=None, help="ε of every trial (default: the space's)")
    p.add_argument("--space", default="mnist", help="search space YAML or the name of one in search_spaces/")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=None,
                   help="trials at once, each with CPUs / concurrency threads (default: one per GPU, else one per "
                        "CPU core, at most --trials)")
    p.add_argument("--sampler", choices=["tpe", "random"], default="tpe")
    p.add_argument("--scheduler", choices=["none", "asha"], default="none",
                   help="asha stops trials on the diffusion loss on the DP synthetic validation set")
    p.add_argument("--address", default=None, help="an existing Ray cluster, e.g. auto")
    p.add_argument("--name", default=None, help="sweep name (default: SPACE-epsE-TIMESTAMP)")
    p.add_argument("--resume", default=None, metavar="NAME", help="continue the sweep NAME from its storage")
    p.add_argument("--retry-errored", action="store_true",
                   help="with --resume: also continue errored trials from their last verified checkpoint (the same "
                        "DP run goes on; nothing after that checkpoint was released)")
    p.add_argument("--val-eps", type=_float("--val-eps"), default=None,
                   help="ε of the validation generator (default: the sweep's ε)")
    p.add_argument("--storage", default=None,
                   help="where sweeps live: a directory or s3://bucket/prefix (endpoint from AWS_ENDPOINT_URL or the AWS "
                        "config); default: the embedded S3 server")
    p.add_argument("--tracking", default=None,
                   help="MLflow URI (default: MLFLOW_TRACKING_URI, else the embedded server); 'none' to log nothing")
    p.add_argument("--model", default=None, help="pretrained model (default: the space's, else the embedded one)")
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPUs each trial requests (default: 1/concurrency of one GPU when the cluster has or can "
                        "autoscale GPU nodes, else 0)")
    p.add_argument("--private-selection", choices=["geometric", "logarithmic", "poisson"], default=None,
                   help="draw the number of trials K at random (mean --mean-trials) and release only the best "
                        "(Papernot & Steinke); needs --sampler random")
    p.add_argument("--mean-trials", type=_float("--mean-trials"), default=None, help="μ, the mean of K")
    p.add_argument("--eps-total", type=_float("--eps-total"), default=None,
                   help="the released model's ε for the whole search; dpsearch solves the per-trial ε from it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_sweep)

    p = sub.add_parser("privacy", help="privacy calculators and a sweep's privacy report")
    psub = p.add_subparsers(dest="what", required=True)
    for what, helptext in (("sigma", "σ that makes a DP-SGD run (ε, δ)-DP"), ("eps", "ε of a DP-SGD run with noise σ")):
        q = psub.add_parser(what, help=helptext)
        if what == "sigma":
            q.add_argument("--eps", type=_float("--eps"), required=True)
        else:
            q.add_argument("--sigma", type=_float("--sigma"), required=True)
        q.add_argument("--delta", type=_float("--delta"), default=None, help="default: 1/N rounded down to a power of ten, strictly below 1/N")
        q.add_argument("--batch", type=int, required=True, help="expected (Poisson) batch size B")
        q.add_argument("--n", type=int, required=True, help="private set size N")
        q.add_argument("--epochs", type=int, required=True)
        q.add_argument("--accountant", choices=["prv", "rdp"], default="prv")
        q.set_defaults(fn=cmd_privacy_calc)
    q = psub.add_parser("report", help="per-trial and released-model (ε, δ) of a sweep")
    q.add_argument("sweep", help="sweep name (under --storage) or its directory")
    q.add_argument("--storage", default=None, help="where sweeps live (default: DPSEARCH_HOME/sweeps)")
    q.add_argument("--json", action="store_true", help="print JSON instead of text")
    q.set_defaults(fn=cmd_privacy_report)

    p = sub.add_parser("services", help="the embedded S3 (SeaweedFS) and MLflow servers on 127.0.0.1")
    p.add_argument("action", choices=["up", "status", "down"])
    p.add_argument("--dir", type=Path, default=None, help="where their data lives (default ~/.dpsearch/services)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default loopback only)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a --host that is not loopback (the servers hold every sweep's artifacts)")
    p.add_argument("--s3-port", type=int, default=None, help="default: DPSEARCH_S3_PORT or 8333")
    p.add_argument("--mlflow-port", type=int, default=None, help="default: DPSEARCH_MLFLOW_PORT or 5000")
    p.set_defaults(fn=cmd_services)

    p = sub.add_parser("pull", help="download a trial's checkpoint (model, privacy.json, samples) by URI or MLflow run id")
    p.add_argument("what", help="checkpoint URI (s3://… or a path) or the MLflow run id of a trial")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(fn=cmd_pull)

    p = sub.add_parser("report", help="write a self-contained HTML report of a sweep (plots, trials, privacy)")
    p.add_argument("sweep", help="sweep name (under --storage) or its directory / s3:// URI")
    p.add_argument("--storage", default=None, help="where sweeps live (default: the embedded S3 if running, "
                                                   "else DPSEARCH_HOME/sweeps)")
    p.add_argument("--out", default=None, help="HTML file to write (default: ./SWEEP-report.html)")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("ui", help="print (or open) the MLflow UI's URL")
    p.add_argument("--open", action="store_true", help="open it in a browser")
    p.add_argument("--dir", type=Path, default=None)
    p.set_defaults(fn=cmd_ui)
    return ap


def _default_storage() -> str:
    """The embedded S3 when its services run (their client settings applied), else the local sweeps dir."""
    import os

    from dpsearch import services
    from dpsearch.paths import home

    s = services.load()
    if s is not None and services.healthy(s)["s3"]:
        for k, v in s.client_env().items():
            os.environ.setdefault(k, v)
        return s.storage
    return str(home() / "sweeps")


def cmd_pull(a) -> int:
    """Downloads a trial's checkpoint (model in diffusers format, privacy.json, samples) to a local dir."""
    from dpsearch.storage import Store, is_remote

    src = a.what
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
    from dpsearch.outputs import check_output

    out = Path(a.out)
    check_output(out, a.overwrite)
    parent, leaf = src.rstrip("/").rsplit("/", 1)
    Store(parent).download_dir(leaf, out)
    from dpsearch.checkpoints import verify_local

    verify_local(out)  # size and SHA-256 of every file against the checkpoint's manifest
    print(f"pulled {src} to {out}")
    return 0


def cmd_services(a) -> int:
    from dpsearch import services

    if a.action == "up":
        t = time.time()
        s, started = services.up(a.dir, a.host, a.s3_port, a.mlflow_port, allow_remote=a.allow_remote)
        print(("started in %.1f s" % (time.time() - t)) if started else "already running")
        print(services.describe(s))
    elif a.action == "status":
        s = services.load(a.dir)
        print(services.describe(s))
        return 0 if s is not None and all(services.healthy(s).values()) else 1
    else:
        print("stopped" if services.down(a.dir) else "nothing was running")
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
    print(uri)
    if a.open:
        import webbrowser

        webbrowser.open(uri)
    return 0


def cmd_privacy_calc(a) -> int:
    from dpsearch.privacy import calibrate_sigma, epsilon_for, pld_epsilon, poisson_plan

    if a.n < 1 or a.batch < 1 or a.epochs < 1:
        raise ConfigError("--n, --batch and --epochs must be ≥ 1")
    if a.batch > a.n:
        raise ConfigError(f"batch size {a.batch} is larger than N = {a.n}; use --batch ≤ {a.n}")
    delta = a.delta if a.delta is not None else default_delta(a.n)
    if not (0 < delta < 1.0 / a.n):
        raise ConfigError(f"δ = {delta:g} must be in (0, 1/N = {1.0 / a.n:.3g}); e.g. {default_delta(a.n):g}")
    q, steps = poisson_plan(a.n, a.batch, a.epochs)
    if a.what == "sigma":
        if not a.eps > 0:
            raise ConfigError(f"ε must be a positive finite number, got {a.eps}")
        sigma = calibrate_sigma(a.eps, delta, q, steps, a.accountant)
    else:
        if not a.sigma > 0:
            raise ConfigError(f"σ must be > 0, got {a.sigma}")
        sigma = a.sigma
    eps = epsilon_for(sigma, q, steps, delta, a.accountant)
    print(f"σ = {sigma:.4f}: (ε = {eps:.3f}, δ = {delta:g})-DP by the {a.accountant.upper()} accountant "
          f"[dp-accounting PLD: ε = {pld_epsilon(sigma, q, steps, delta):.3f}]; Poisson q = {q:.5f}, steps = {steps} "
          f"(N = {a.n}, B = {a.batch}, {a.epochs} epochs)")
    return 0


def _sweep_path(sweep: str, storage: str | None) -> str:
    """A sweep given by directory or URI is used as is; a bare name is looked up under the storage."""
    from dpsearch.storage import Store, is_remote

    if is_remote(sweep) or (Path(sweep) / "dpsearch").is_dir():
        return sweep
    return Store(storage or _default_storage()).uri(sweep)


def cmd_report(a) -> int:
    from dpsearch.html_report import build_report

    path = _sweep_path(a.sweep, a.storage)
    out = Path(a.out) if a.out else Path(f"{Path(a.sweep.rstrip('/')).name}-report.html")
    build_report(path, out)
    print(f"wrote {out.resolve()} (open it in a browser)")
    return 0


def cmd_privacy_report(a) -> int:
    import json

    from dpsearch.privacy.report import format_report, sweep_report

    rep = sweep_report(_sweep_path(a.sweep, a.storage))
    print(json.dumps(rep, indent=2) if a.json else format_report(rep))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for h in logging.getLogger().handlers:  # dp-accounting logs every RDP order it skips: noise, not news
        h.addFilter(lambda r: "dp_accounting" not in r.pathname)
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, DataError, ModelError, OutputExists) as e:
        print(f"dpsearch {args.verb}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
