"""DP step time vs non-private step time on the same model, trainable layers and batch.

    python bench/dp_step.py [--model DIR] [--layers all] [--method attention|lora] [--rank 8] [--batch 512]
                            [--physical 128] [--modes non-private,bookkeeping,hooks,functorch,ghost] [--rounds 3]

Prints a table and writes bench/results/dp_step.json. A mode's time is the median over --repeats logical
steps after one warm-up, in a fresh process (its own peak RSS); the modes run round-robin --rounds times,
and each round's ratio is taken against that round's non-private time, so drift of the machine between
rounds shows as spread rather than as a difference between modes. "bookkeeping" and "hooks" run the
product's own `privatize` (the paths `clipping` chooses between); functorch and ghost are Opacus' other
modes, for comparison. The machine must be otherwise idle (two torch jobs on 2 cores distort everything).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
import warnings
from pathlib import Path

import torch

from dpsearch.config import FinetuneConfig, PretrainConfig, parse_layers
from dpsearch.data import load_mnist
from dpsearch.device import pick_device
from dpsearch.finetune import DiffusionLoss, select_trainable
from dpsearch.models import attention_modules, load_ldm
from dpsearch.pretrain import default_model_dir

RESULTS = Path(__file__).parent / "results"


def _step_nonprivate(module, opt, x, y, physical):
    opt.zero_grad(set_to_none=True)
    for i in range(0, len(x), physical):
        module(x[i: i + physical], y[i: i + physical]).sum().div(len(x)).backward()
    opt.step()


class _PerSample(torch.nn.Module):
    """Opacus' ghost mode wraps a criterion; DiffusionLoss already returns the per-sample loss [B]."""

    reduction = "mean"

    def forward(self, loss):
        return loss if self.reduction == "none" else loss.mean()


def bench_mode(model, latents, labels, layers, batch, physical, mode, repeats, method="attention", rank=8):
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    a, b = parse_layers(layers, len(attention_modules(model.unet)))
    # the product's own choice of trainable set (LoRA adapters are injected here for method lora)
    trainable = select_trainable(model, FinetuneConfig(non_private=True, method=method, rank=rank), a, b)
    module = DiffusionLoss(model, 0.1).train()
    x, y = latents[:batch], labels[:batch]
    times = []
    if mode == "non-private":
        opt = torch.optim.Adam(trainable, lr=1e-4)
        for r in range(repeats + 1):
            _sync()
            t = time.perf_counter()
            _step_nonprivate(module, opt, x, y, physical)
            _sync()
            times.append(time.perf_counter() - t)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if mode in ("bookkeeping", "hooks"):
                from torch.utils.data import DataLoader, TensorDataset

                from dpsearch.privacy.dpsgd import privatize

                _, gsm, opt, _ = privatize(module, torch.optim.Adam(trainable, lr=1e-4),
                                           DataLoader(TensorDataset(x, y), batch_size=batch), sigma=0.7, clip=0.01,
                                           clipping=mode)
                criterion = torch.mean
            elif mode == "ghost":  # two backward passes: per-sample norms without per-sample gradients, then the clipped sum
                from opacus.grad_sample import GradSampleModuleFastGradientClipping
                from opacus.optimizers import DPOptimizerFastGradientClipping
                from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

                gsm = GradSampleModuleFastGradientClipping(module, batch_first=True, loss_reduction="mean",
                                                           max_grad_norm=0.01, use_ghost_clipping=True)
                opt = DPOptimizerFastGradientClipping(torch.optim.Adam(trainable, lr=1e-4), noise_multiplier=0.7,
                                                      max_grad_norm=0.01, expected_batch_size=batch,
                                                      loss_reduction="mean")
                criterion = DPLossFastGradientClipping(gsm, opt, _PerSample(), "mean")
            else:
                gsm = GradSampleModule(module, batch_first=True, loss_reduction="mean",
                                       force_functorch=(mode == "functorch"))
                opt = DPOptimizer(torch.optim.Adam(trainable, lr=1e-4), noise_multiplier=0.7, max_grad_norm=0.01,
                                  expected_batch_size=batch)
                criterion = torch.mean
        for r in range(repeats + 1):
            _sync()
            t = time.perf_counter()
            for i in range(0, len(x), physical):
                criterion(gsm(x[i: i + physical], y[i: i + physical])).backward()
                if i + physical < len(x):
                    opt.signal_skip_step(True)
                    opt.step()  # accumulates clipped per-sample grads, as BatchMemoryManager does
                    opt.zero_grad(set_to_none=True)  # as dp_sgd_epoch: summed_grad survives a skipped step
            opt.step()
            opt.zero_grad(set_to_none=True)
            _sync()
            times.append(time.perf_counter() - t)
        gsm._close()
    for p in trainable:
        p.grad = None
    return statistics.median(times[1:])


def _sync():
    if torch.cuda.is_available():  # CUDA kernels run asynchronously: time them, not their launch
        torch.cuda.synchronize()


def _one_mode(model_dir: str, layers: str, batch: int, physical: int, mode: str, repeats: int, method: str = "attention",
              rank: int = 8) -> tuple[float, float, int]:
    """Runs in a fresh process, so the peak memory it reports is this mode's alone: CUDA's peak allocation on a
    GPU (the device dpsearch picks), the process' peak RSS on a CPU."""
    torch.set_num_threads(_THREADS)
    device = pick_device("auto")
    model = load_ldm(model_dir, device)
    train, _ = load_mnist()
    sub = train.subset(batch)
    with torch.no_grad():
        latents = model.encode(sub.as_float().to(device))
    sec = bench_mode(model, latents, sub.labels.to(device), layers, batch, physical, mode, repeats, method, rank)
    n_trainable = sum(p.numel() for m in (model.unet, model.embedder) for p in m.parameters() if p.requires_grad)
    if device.type == "cuda":
        return sec, torch.cuda.max_memory_allocated() / 2**20, n_trainable
    return sec, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, n_trainable


_THREADS = torch.get_num_threads()


def main(argv=None):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="pretrained model dir (default: the cached default)")
    ap.add_argument("--layers", default="all")
    ap.add_argument("--method", choices=["attention", "lora"], default="attention")
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank (with --method lora)")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--physical", type=int, default=128)
    ap.add_argument("--modes", default="non-private,bookkeeping,hooks,functorch,ghost")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="round-robin repetitions of all modes (spread shown)")
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    model_dir = str(args.model or default_model_dir(PretrainConfig()))
    modes = args.modes.split(",")
    if modes[0] != "non-private":
        ap.error("--modes must start with non-private (each round's ratios are against it)")
    runs = []
    for r in range(1, args.rounds + 1):
        for mode in modes:
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                sec, peak, n_trainable = pool.submit(_one_mode, model_dir, args.layers, args.batch, args.physical, mode,
                                                     args.repeats, args.method, args.rank).result()
            base = sec if mode == "non-private" else base
            runs.append({"round": r, "mode": mode, "seconds_per_step": sec, "ratio_to_nonprivate": sec / base,
                         "peak_rss_mb": peak, "trainable_params": n_trainable})
            print(f"round {r}  {mode:>12}  {sec:7.3f} s/step  {peak:7.0f} MB peak  {sec / base:5.2f}× non-private",
                  flush=True)
    rows = []
    what = f"LoRA r={args.rank}" if args.method == "lora" else "whole attention modules"
    print(f"\nlayers {args.layers} ({what}, {runs[0]['trainable_params']:,} trainable), logical batch {args.batch}, "
          f"physical {args.physical}, {args.rounds} rounds:")
    for mode in modes:
        mine = [x for x in runs if x["mode"] == mode]
        ratios = [x["ratio_to_nonprivate"] for x in mine]
        row = {"mode": mode, "seconds_per_step": statistics.median(x["seconds_per_step"] for x in mine),
               "ratio_to_nonprivate": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
               "peak_rss_mb": statistics.median(x["peak_rss_mb"] for x in mine), "trainable_params": mine[0]["trainable_params"]}
        rows.append(row)
        print(f"{mode:>12}  {row['seconds_per_step']:7.3f} s/step  {row['peak_rss_mb']:7.0f} MB peak  "
              f"{row['ratio_to_nonprivate']:5.2f}× non-private (rounds {row['ratio_min']:.2f}–{row['ratio_max']:.2f})")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"dp_step{('-' + args.tag) if args.tag else ''}.json"
    out.write_text(json.dumps({"args": vars(args), "machine": platform.platform(), "threads": _THREADS,
                               "torch": torch.__version__, "rows": rows, "runs": runs}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
