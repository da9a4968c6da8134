"""What each `dpsearch` verb does: build its typed config, call the function that owns the work, print.

The parser lives in cli.py; nothing here parses arguments or holds a pipeline step of its own.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from dpsearch.config import DEFAULT_Q, ConfigError, EvaluateConfig, FinetuneConfig, PretrainConfig, SampleConfig, \
    load_yaml, method_label, validate

# torch, diffusers and Opacus are imported by the verbs that use them, not here: `dpsearch --help`, `services` and
# `ui` answer in a second instead of the eight that importing them takes.


def _ft_config(a) -> FinetuneConfig:
    return validate(FinetuneConfig, eps=a.eps, delta=a.delta, layers=a.layers, method=a.method, rank=a.rank,
                    clip=a.clip, batch=a.batch, q=a.q,
                    epochs=a.epochs, lr=a.lr, lr_schedule=a.lr_schedule, physical_batch=a.physical_batch, accountant=a.accountant,
                    n_private=a.n_private, seed=a.seed, secure_rng=a.secure_rng,
                    clipping=a.clipping, precision=a.precision, multiplicity=a.multiplicity, ema=a.ema,
                    warmup=a.warmup, warmup_steps=a.warmup_steps, non_private=getattr(a, "non_private", False))


def _sample_config(a) -> SampleConfig:
    return validate(SampleConfig, per_class=a.per_class, steps=a.steps, scheduler=a.scheduler,
                    guidance=a.guidance, seed=a.seed)


def _pretrain_config(a) -> PretrainConfig:
    return load_yaml(Path(a.config), PretrainConfig) if getattr(a, "config", None) else PretrainConfig()


def _inputs(a, model: str | None, cfg: FinetuneConfig):
    """(model, private share, test, cfg): the data at the model's size, an SD pipeline converted with its prompts.
    --n-private n keeps a hash-rule share of about n records (privacy/slices.py) and the plan uses n, the public
    size asked for, not the share's exact count."""
    from dpsearch.inputs import resolve_inputs
    from dpsearch.privacy.slices import hash_share, share_of, subset_salt

    got = resolve_inputs(model, a.private, a.prompt, a.resolution, device=a.device)
    keep = share_of(cfg.n_private, len(got.private))
    if keep < 1:
        cfg = cfg.model_copy(update={"n_public": cfg.n_private})
    private = hash_share(got.private, keep, subset_salt(a.seed))
    return got.model, private, got.test, _resolve_batch(cfg, len(private))


def _resolve_batch(cfg: FinetuneConfig, n: int) -> FinetuneConfig:
    """Without --batch, the rate (--q, else DEFAULT_Q) becomes B = ⌈N/m⌉ on the plan's N, said once with the rate
    that runs (1/m); everything after this (the privacy plan, the loader, privacy.json) sees the int batch."""
    if cfg.batch is None:
        from dpsearch.privacy.accounting import poisson_plan

        given = cfg.q is not None
        q, n_plan = cfg.q if given else DEFAULT_Q, cfg.n_public or n
        cfg = cfg.for_data(n)
        runs = poisson_plan(n_plan, cfg.batch, 1)[0]
        print(f"batch B = {cfg.batch}: sampling rate q = {runs:.4g} = 1/{round(1 / runs)} on N = {n_plan} "
              f"({'--q ' + format(q, '.4g') if given else 'the default'}; --batch or --q sets it)")
    return cfg


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


def sweep_path(sweep: str, storage: str | None) -> str:
    """A sweep given by directory or URI is used as is; a bare name is looked up under the storage."""
    from dpsearch.storage import Store, is_remote

    if is_remote(sweep) or (Path(sweep) / "dpsearch").is_dir():
        return sweep
    return Store(storage or _default_storage()).uri(sweep)


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
    from dpsearch.models.sd import is_sd_pipeline, load_sd_unet

    if is_sd_pipeline(a.model):  # the numbering needs only the UNet; prompts come with the data
        print(layer_table(load_sd_unet(a.model), None, a.range))
        return 0
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
    model, private, _, cfg = _inputs(a, a.model, cfg)
    plan_privacy(cfg, len(private))
    out = run_pipeline(model, private, cfg, device=str(pick_device(a.device)), progress=not a.quiet)
    with atomic_dir(Path(a.out), a.overwrite) as tmp:
        write_outputs(tmp, out, {"privacy": out.privacy})
    print(f"(ε = {out.privacy['eps']:.3f}, δ = {out.privacy['delta']:g})-DP by {out.privacy['accountant'].upper()}, "
          f"σ = {out.privacy['sigma']:.4f}, B = {out.privacy['batch']} of N = {out.privacy['n']} (q = {out.privacy['q']:.5f}), "
          f"steps = {out.privacy['steps']}, "
          f"layers {out.privacy['layers']} ({method_label(out.privacy.get('method'), out.privacy.get('lora_rank'))})")
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
    from dpsearch.data import ImageSet, load_dataset
    from dpsearch.evaluate import evaluate

    path = Path(a.synthetic)
    synth = ImageSet.load(path / "synthetic.npz" if path.is_dir() else path)
    c, size, _ = synth.image_shape
    _, test = load_dataset(a.test, size, c)
    res = evaluate(synth, test, EvaluateConfig(seed=a.seed, fid_extractor=a.fid_extractor), progress=not a.quiet)
    print(json.dumps(res, indent=2))
    return 0


def cmd_release(a) -> int:
    """A trial's model → the released synthetic data set, oracle-scored under DPImageBench's protocol."""
    from dpsearch.data import load_dataset
    from dpsearch.device import pick_device
    from dpsearch.models import load_ldm
    from dpsearch.storage import is_remote
    from dpsearch.synthetic_release import provenance
    from dpsearch.trial import read_privacy, release_trial

    meta = load_ldm(a.trial).meta
    if is_remote(str((read_privacy(Path(a.trial)).get("sweep") or {}).get("storage", ""))):
        _default_storage()  # a sweep trial's figure is in its sweep's storage: the embedded S3's settings, if it runs
    k = meta["num_classes"]
    if a.n < k or a.n % k:
        raise ConfigError(f"--n {a.n} must be a positive multiple of the {k} classes (balanced release)")
    smp = validate(SampleConfig, per_class=a.n // k, steps=a.steps, scheduler=a.scheduler, guidance=a.guidance, seed=a.seed)
    test = None if a.test == "none" else load_dataset(a.test, meta["image_size"], meta["channels"])[1]
    res = release_trial(Path(a.trial), Path(a.out), smp, test, overwrite=a.overwrite, device=str(pick_device(a.device)),
                        progress=not a.quiet, pngs=a.pngs)
    p = res["privacy"]
    print(f"released {res['n_images']} images to {res['release']} (DATA_CARD.md, synthetic.npz, data/*.parquet, "
          f"{'png/, ' if a.pngs else ''}grid.png)")
    if not p.get("dp", True):
        print("privacy: NONE (NOT DP)")
    else:
        searched = provenance(p)  # a sweep trial: the headline is its sweep's figure, never the trial's own ε
        print(f"privacy: (ε = {p['eps']:.3f}, δ = {p['delta']:.3g})"
              + (f", the figure of sweep {p['sweep']['name']} that covers this trial" if searched else ""))
        if searched:
            print(f"  covers: {p['covers']}\n  {searched}")
        for w in p.get("warnings") or []:
            print(f"  WARNING: {w}")
    if "oracle/accuracy" in res["oracle"]:
        o = res["oracle"]
        print(f"oracle accuracy (real test split, not DP; DPImageBench protocol): best {100 * o['oracle/accuracy']:.2f}%, "
              f"mean {100 * o['oracle/accuracy_mean']:.2f}%")
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
    t = time.time()
    model = a.model or (pretrain(_pretrain_config(a), device=a.device) if getattr(a, "config", None) else None)
    model, private, test, ft = _inputs(a, model, ft)
    ft.check_against_data(len(private))
    summary = run_trial(model, private, test, ft, _sample_config(a), EvaluateConfig(seed=a.seed), out, a.overwrite,
                        str(pick_device(a.device)), progress=not a.quiet)
    p, m = summary["privacy"], summary["metrics"]
    if not p.get("dp", True):
        print(f"privacy: NONE. {p['statement']}")
    else:
        print(f"privacy: (ε = {p['eps']:.3f}, δ = {p['delta']:g}) by {p['accountant'].upper()} "
              f"[PLD check {p['eps_pld_check']:.3f}], σ = {p['sigma']:.4f}, B = {p['batch']} of N = {p['n']} "
              f"(q = {p['q']:.5f}), steps = {p['steps']}, "
              f"layers {p['layers']}, {method_label(p.get('method'), p.get('lora_rank'))} "
              f"({100 * p['trainable_fraction']:.1f}% of UNet trainable); noise and sampling "
              f"from fresh OS entropy ({p['randomness']})")
    if "oracle/accuracy" in m:
        print(f"oracle accuracy (real test split, not DP): {100 * m['oracle/accuracy']:.2f}%; "
              f"oracle FID {m['oracle/fid']:.2f} [{m['fid_extractor']}]")
    print(f"time: {summary['minutes']} min for the trial (whole minutes only: docs/privacy.md, \"Timing\"); "
          f"{math.ceil((time.time() - t) / 60)} min in all")
    print(f"trial written to {out}")
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
