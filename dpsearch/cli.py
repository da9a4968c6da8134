"""The `dpsearch` command. Thin: the parser; each verb is a function in commands.py."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dpsearch import commands as cmd
from dpsearch import privacy_commands, sweep_commands
from dpsearch.config import DEFAULT_Q, ConfigError, FinetuneConfig, SampleConfig, batch_from_rate
from dpsearch.errors import DataError, ModelError
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
    p.add_argument("--delta", type=_float("--delta"), default=None, help="δ (default: 1/(N ln N), two significant digits)")
    p.add_argument("--layers", default=DEFAULT_FT.layers, help="attention modules a-b to train (1-based, inclusive) or 'all'")
    p.add_argument("--method", choices=["attention", "lora"], default=DEFAULT_FT.method,
                   help="train the modules' weights (attention) or rank-r LoRA adapters on their projections (lora)")
    p.add_argument("--rank", type=int, default=DEFAULT_FT.rank, help="LoRA rank r (with --method lora)")
    p.add_argument("--clip", type=_float("--clip"), default=DEFAULT_FT.clip, help="per-sample clip norm C")
    b = p.add_mutually_exclusive_group()
    b.add_argument("--batch", type=int, default=None,
                   help=f"expected logical batch size B (q = 1/⌈N/B⌉); default: the rate q = 1/{1 / DEFAULT_Q:g}, "
                        f"e.g. B = {batch_from_rate(DEFAULT_Q, 60000)} on MNIST's 60,000 records")
    b.add_argument("--q", type=_float("--q"), default=None,
                   help="instead of --batch: the Poisson sampling rate q in (0, 1]; B = ⌈N/m⌉ with m = round(1/q), which runs "
                        "rate 1/m (m steps per epoch) for N ≥ m(m−1) and a larger rate on smaller N (printed at the start)")
    p.add_argument("--epochs", type=int, default=DEFAULT_FT.epochs)
    p.add_argument("--lr", type=_float("--lr"), default=DEFAULT_FT.lr)
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default=DEFAULT_FT.lr_schedule,
                   help="cosine: the learning rate decays from --lr to 0 over the run's steps (no privacy cost)")
    p.add_argument("--multiplicity", type=int, default=DEFAULT_FT.multiplicity, metavar="K",
                   help="noise multiplicity: (timestep, noise) draws per image per step, averaged before clipping "
                        "(same privacy, K× the compute; docs/utility.md)")
    p.add_argument("--ema", type=_float("--ema"), default=DEFAULT_FT.ema, metavar="DECAY",
                   help="sample from an EMA of the DP weights with this decay cap, e.g. 0.999 (post-processing, free)")
    p.add_argument("--warmup", type=_float("--warmup"), default=DEFAULT_FT.warmup, metavar="SHARE",
                   help="before DP-SGD, release the class means under DP with this share of the budget (e.g. 0.05) and "
                        "warm the model up on them; the ε of the run includes it (docs/utility.md)")
    p.add_argument("--warmup-steps", type=int, default=DEFAULT_FT.warmup_steps,
                   help="training steps on the augmented DP class means (post-processing: no privacy cost)")
    p.add_argument("--physical-batch", type=int, default=DEFAULT_FT.physical_batch,
                   help="memory-bound micro-batch, in rows (images × K)")
    p.add_argument("--accountant", choices=["prv", "rdp"], default=DEFAULT_FT.accountant)
    p.add_argument("--secure-rng", action="store_true",
                   help="draw Poisson sampling and noise from the OS CSPRNG (slower; bench/secure_rng.py measures it)")
    p.add_argument("--clipping", choices=["auto", "bookkeeping", "hooks"], default=DEFAULT_FT.clipping,
                   help="per-sample clipping path: book-keeping (one backward pass) or Opacus' hooks; auto = "
                        "book-keeping wherever it applies (docs/performance.md)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default=DEFAULT_FT.precision,
                   help="bf16: forward and backward under bfloat16 autocast, per-sample norms and clipping in float32 "
                        "(book-keeping only; docs/performance.md)")
    p.add_argument("--n-private", type=int, default=None, help="use a random subset of N private images")
    p.add_argument("--private", default="mnist", help="private dataset: mnist, folder:PATH, torchvision:NAME")
    _add_model_input_args(p)


def _add_model_input_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", default=None,
                   help="Stable Diffusion models: the prompt of each class, with {label} for its name "
                        "(default '{label}'), e.g. 'a photo of a {label}'")
    p.add_argument("--resolution", type=int, default=None,
                   help="Stable Diffusion models: train and sample at this size (default: the UNet's native size)")


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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dpsearch", description="DP fine-tuning of latent diffusion models")
    sub = ap.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("pretrain", help="train autoencoder + LDM on public data (cached; the default config's model ships with "
                                            "the package, --overwrite retrains it here), report the public-only baseline")
    p.add_argument("--config", help="YAML PretrainConfig (default: the embedded one)")
    p.add_argument("--out", type=Path, default=None, help="model directory (default: cache under DPSEARCH_HOME)")
    p.add_argument("--no-baseline", action="store_true")
    _add_sample_args(p)
    _common(p)
    p.set_defaults(fn=cmd.cmd_pretrain)

    p = sub.add_parser("layers", help="print the numbered attention modules of a model")
    p.add_argument("model", help="model directory or hub id")
    p.add_argument("--range", default=None, help="show the trainable fraction of this a-b range")
    p.set_defaults(fn=cmd.cmd_layers)

    p = sub.add_parser("finetune", help="DP fine-tune attention layers a-b of a pretrained model")
    p.add_argument("--model", required=True, help="pretrained model: a dpsearch model or a Stable Diffusion-format "
                   "pipeline, directory or hub id")
    p.add_argument("--out", required=True)
    _add_finetune_args(p)
    _common(p)
    p.set_defaults(fn=cmd.cmd_finetune)

    p = sub.add_parser("sample", help="sample a class-balanced synthetic dataset with a PNG grid")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    _add_sample_args(p)
    _common(p)
    p.set_defaults(fn=cmd.cmd_sample)

    p = sub.add_parser("evaluate", help="downstream CNN on synthetic data; oracle accuracy and FID on real test")
    p.add_argument("synthetic", help="synthetic.npz or a directory holding it")
    p.add_argument("--test", default="mnist", help="dataset whose test split is the oracle")
    p.add_argument("--fid-extractor", choices=["auto", "inception", "public-cnn"], default="auto")
    _common(p)
    p.set_defaults(fn=cmd.cmd_evaluate)

    p = sub.add_parser("run", help="one full trial: pretrain (cached) → DP fine-tune → sample → evaluate")
    p.add_argument("--model", default=None, help="pretrained model: a dpsearch model or a Stable Diffusion-format "
                   "pipeline, directory or hub id (default: the shipped / cached default)")
    p.add_argument("--config", help="YAML PretrainConfig for the pretraining step")
    p.add_argument("--out", default=None, help="trial directory (default: runs/trial-…)")
    _add_finetune_args(p, non_private=True)
    _add_sample_args(p)
    _common(p)
    p.set_defaults(fn=cmd.cmd_run)

    p = sub.add_parser("release", help="sample a trial's model into a released data set (npz, Hugging Face parquet, "
                                       "grid, data card; PNG files with --pngs)")
    p.add_argument("trial", help="a finished trial directory (what `dpsearch run` wrote)")
    p.add_argument("--out", required=True, help="release directory")
    p.add_argument("--n", type=int, default=60000, help="images in the release, balanced over classes (default 60000)")
    p.add_argument("--test", default="mnist", help="dataset whose real test split gives the oracle scores; 'none' to skip")
    p.add_argument("--steps", type=int, default=DEFAULT_SAMPLE.steps)
    p.add_argument("--scheduler", choices=["ddim", "dpm++"], default=DEFAULT_SAMPLE.scheduler)
    p.add_argument("--guidance", type=_float("--guidance"), default=DEFAULT_SAMPLE.guidance)
    p.add_argument("--pngs", action="store_true",
                   help="also write png/<class>/<index>.png, one file per image (the npz and data/*.parquet hold "
                        "the same images)")
    _common(p)
    p.set_defaults(fn=cmd.cmd_release)

    p = sub.add_parser("sweep", help="Ray Tune + Optuna search over layer range, C, B, lr, epochs whose released "
                                     "model is (ε, δ)-DP for the whole search")
    p.add_argument("--eps", "--eps-total", dest="eps", type=_float("--eps"), default=None,
                   help="the released model's ε for the whole search, as `dpsearch run --eps` is the model's ε "
                        "(default: the space's eps); --eps-total is the old name")
    p.add_argument("--eps-per-trial", type=_float("--eps-per-trial"), default=None,
                   help="instead of --eps: every trial (E, δ)-DP on all the data; the released model's ε is then "
                        "larger (`dpsearch privacy report` gives it)")
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
    p.add_argument("--plan", action="store_true",
                   help="load the space, data and model, print the design (parts, their ε and δ, the released "
                        "guarantee, trials) and exit without training")
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
    p.add_argument("--model", default=None, help="pretrained model: a dpsearch model or a Stable Diffusion-format "
                   "pipeline, directory or hub id (default: the space's, else the embedded one)")
    _add_model_input_args(p)
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPUs each trial requests (default: 1/concurrency of one GPU when the cluster has or can "
                        "autoscale GPU nodes, else 0)")
    p.add_argument("--private-selection", choices=["geometric", "logarithmic", "poisson"], default=None,
                   help="draw the number of trials K at random (mean --mean-trials) and release only the best "
                        "(Papernot & Steinke); needs --sampler random")
    p.add_argument("--mean-trials", type=_float("--mean-trials"), default=None, help="μ, the mean of K")
    p.add_argument("--design", choices=["slices", "composed"], default=None,
                   help="with --eps: 'slices' (default) splits the records into disjoint tuning / validation / final "
                        "slices and trains the selected configuration once more on the final slice at the whole total; "
                        "'composed' runs everything on all the data and composes the parts to the total")
    p.add_argument("--no-release", action="store_true",
                   help="stop after the trials: no final model, no released synthetic data set")
    p.add_argument("--warm-start", action="store_true",
                   help="with disjoint slices: start the final run from the selected trial's DP weights instead of "
                        "the pretrained model (no privacy cost: they are the tuning slice's DP output)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=sweep_commands.cmd_sweep)

    p = sub.add_parser("privacy", help="privacy calculators and a sweep's privacy report")
    psub = p.add_subparsers(dest="what", required=True)
    for what, helptext in (("sigma", "σ that makes a DP-SGD run (ε, δ)-DP"), ("eps", "ε of a DP-SGD run with noise σ")):
        q = psub.add_parser(what, help=helptext)
        if what == "sigma":
            q.add_argument("--eps", type=_float("--eps"), required=True)
            q.add_argument("--warmup", type=_float("--warmup"), default=None, metavar="SHARE",
                           help="plan a class-mean warm-up with this share of the budget too (as `run --warmup`)")
        else:
            q.add_argument("--sigma", type=_float("--sigma"), required=True)
            q.add_argument("--warmup-sigma", type=_float("--warmup-sigma"), default=None, metavar="SIGMA_W",
                           help="compose a class-mean warm-up release of this noise multiplier before the steps")
        q.add_argument("--delta", type=_float("--delta"), default=None, help="default: 1/(N ln N), two significant digits")
        q.add_argument("--batch", type=int, required=True, help="expected (Poisson) batch size B")
        q.add_argument("--n", type=int, required=True, help="private set size N")
        q.add_argument("--epochs", type=int, required=True)
        q.add_argument("--accountant", choices=["prv", "rdp"], default="prv")
        q.set_defaults(fn=privacy_commands.cmd_privacy_calc)
    q = psub.add_parser("report", help="per-trial and released-model (ε, δ) of a sweep")
    q.add_argument("sweep", help="sweep name (under --storage) or its directory")
    q.add_argument("--storage", default=None, help="where sweeps live (default: the embedded S3 if running, else "
                                                   "DPSEARCH_HOME/sweeps)")
    q.add_argument("--json", action="store_true", help="print JSON instead of text")
    q.add_argument("--tracking-store", action="store_true",
                   help="private selection: print the tracking store's part (per-trial rows, K, its composition figure) "
                        "instead of the release's; keep it apart from the released figure")
    q.set_defaults(fn=privacy_commands.cmd_privacy_report)

    p = sub.add_parser("services", help="the embedded S3 (SeaweedFS) and MLflow servers on 127.0.0.1")
    p.add_argument("action", choices=["up", "status", "down"])
    p.add_argument("--dir", type=Path, default=None, help="where their data lives (default ~/.dpsearch/services)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default loopback only)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a --host that is not loopback (the servers hold every sweep's artifacts)")
    p.add_argument("--s3-port", type=int, default=None, help="default: DPSEARCH_S3_PORT or 8333")
    p.add_argument("--mlflow-port", type=int, default=None, help="default: DPSEARCH_MLFLOW_PORT or 5000")
    p.set_defaults(fn=cmd.cmd_services)

    p = sub.add_parser("pull", help="download a sweep's release (final model, synthetic data set, data card, privacy "
                                    "report) by sweep name, or a trial's checkpoint by URI or MLflow run id")
    p.add_argument("what", help="a sweep's name (under --storage) or directory, a checkpoint URI (s3://… or a path) or "
                                "the MLflow run id of a trial")
    p.add_argument("--storage", default=None, help="where sweeps live (default: the embedded S3 if running, else "
                                                   "DPSEARCH_HOME/sweeps)")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(fn=sweep_commands.cmd_pull)

    p = sub.add_parser("report", help="write a self-contained HTML report of a sweep (plots, trials, privacy)")
    p.add_argument("sweep", help="sweep name (under --storage) or its directory / s3:// URI")
    p.add_argument("--storage", default=None, help="where sweeps live (default: the embedded S3 if running, "
                                                   "else DPSEARCH_HOME/sweeps)")
    p.add_argument("--out", default=None, help="HTML file to write (default: ./SWEEP-report.html)")
    p.set_defaults(fn=sweep_commands.cmd_report)

    p = sub.add_parser("ui", help="print (or open) the MLflow UI's URL, or a sweep's trials in it")
    p.add_argument("sweep", nargs="?", default=None, help="a sweep's name: print its runs and its trials side by side")
    p.add_argument("--open", action="store_true", help="open it in a browser")
    p.add_argument("--dir", type=Path, default=None)
    p.set_defaults(fn=sweep_commands.cmd_ui)
    return ap


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for h in logging.getLogger().handlers:  # dp-accounting logs every RDP order it skips: noise, not news
        h.addFilter(lambda r: "dp_accounting" not in r.pathname)
    # boto's "Found credentials in environment variables" at INFO: where it looked, not news (errors still show)
    for name in ("botocore", "boto3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, DataError, ModelError, OutputExists) as e:
        print(f"dpsearch {args.verb}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
