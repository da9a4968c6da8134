"""DP step time vs non-private step time on the same model, trainable layers and batch.

    python bench/dp_step.py [--model DIR] [--layers all] [--method attention|lora] [--rank 8] [--batch 512]
                            [--physical 128] [--modes non-private,bookkeeping,hooks,functorch,ghost] [--rounds 3]
                            [--precisions fp32,bf16] [--device auto|cpu|cuda] [--arch default|sd15|sd15-tiny]
                            [--resolution 256] [--data mnist|random] [--out FILE]

Prints a table and writes bench/results/dp_step.json (or --out). A mode's time is the median over --repeats logical
steps after one warm-up, in a fresh process (its own peak RSS); the modes run round-robin --rounds times,
and each round's ratio is taken against that round's non-private time, so drift of the machine between
rounds shows as spread rather than as a difference between modes. "bookkeeping" and "hooks" run the
product's own `privatize` (the paths `clipping` chooses between); functorch and ghost are Opacus' other
modes, for comparison. The machine must be otherwise idle (two torch jobs on 2 cores distort everything).

--precisions runs every mode at each precision: "bf16" is FinetuneConfig.precision (bfloat16 autocast for the
forward and backward, book-keeping's norms and clipping in float32), so at bf16 only non-private and bookkeeping
run, and each ratio is against the non-private step of the same precision. --arch sd15 times Stable Diffusion 1.5's
UNet architecture (its config is embedded below, random weights, nothing downloaded) at --resolution px on random
latents, conditioned on a random 77-token prompt table; sd15-tiny is the same block layout at a small width, for a
CPU smoke run. --data random feeds the default model random images instead of MNIST (offline machines).
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
from dpsearch.device import autocast, pick_device
from dpsearch.finetune import DiffusionLoss, select_trainable
from dpsearch.models import attention_modules, load_ldm
from dpsearch.pretrain import default_model_dir

RESULTS = Path(__file__).parent / "results"

# Stable Diffusion 1.5's UNet (unet/config.json of the SD 1.5 release; diffusers fills the remaining defaults).
SD15_UNET = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
# The same block layout at a small width, one layer per block and a short prompt: a CPU smoke run of the code path.
SD15_TINY = {**SD15_UNET, "block_out_channels": [32, 64, 64, 64], "layers_per_block": 1, "cross_attention_dim": 64}
SD_TOKENS = {"sd15": 77, "sd15-tiny": 8}


def _step_nonprivate(module, opt, x, y, physical, precision="fp32"):
    opt.zero_grad(set_to_none=True)
    for i in range(0, len(x), physical):
        with autocast(precision, x.device):  # as finetune_non_private
            loss = module(x[i: i + physical], y[i: i + physical]).sum().div(len(x))
        loss.backward()
    opt.step()


class _PerSample(torch.nn.Module):
    """Opacus' ghost mode wraps a criterion; DiffusionLoss already returns the per-sample loss [B]."""

    reduction = "mean"

    def forward(self, loss):
        return loss if self.reduction == "none" else loss.mean()


def bench_mode(model, latents, labels, layers, batch, physical, mode, repeats, method="attention", rank=8,
               precision="fp32"):
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
            _step_nonprivate(module, opt, x, y, physical, precision)
            _sync()
            times.append(time.perf_counter() - t)
    else:
        if precision != "fp32" and mode != "bookkeeping":
            raise ValueError(f"precision {precision} runs on book-keeping only, not {mode}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if mode in ("bookkeeping", "hooks"):
                from torch.utils.data import DataLoader, TensorDataset

                from dpsearch.privacy.dpsgd import privatize

                _, gsm, opt, _ = privatize(module, torch.optim.Adam(trainable, lr=1e-4),
                                           DataLoader(TensorDataset(x, y), batch_size=batch), sigma=0.7, clip=0.01,
                                           clipping=mode, precision=precision)
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


def _sd_model(arch: str, resolution: int, device):
    """An LDM around SD 1.5's UNet architecture with random weights (built on `device`), a random prompt table for
    10 classes and SD's noise schedule; no autoencoder (the benchmark feeds latents)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from dpsearch.models import LDM
    from dpsearch.models.sd import PromptEmbedder

    config = SD15_UNET if arch == "sd15" else SD15_TINY
    if resolution % 64:
        raise SystemExit(f"--resolution {resolution}: SD's ×8 autoencoder and ×8 UNet need a multiple of 64")
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: SD 1.5's 860M weights are slow to draw on a CPU
        unet = UNet2DConditionModel.from_config({**config, "sample_size": resolution // 8})
        embedder = PromptEmbedder(num_classes=10, tokens=SD_TOKENS[arch], dim=config["cross_attention_dim"])
        embedder.table.normal_()
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, clip_sample=False)
    meta = {"image_size": resolution, "channels": 3, "num_classes": 10, "padded_size": resolution,
            "family": "stable-diffusion"}
    return LDM(torch.nn.Identity(), unet, embedder, scheduler, meta)


def _default_model() -> str:
    """The cached default model, else the copy that ships with the package (a fresh machine has no cache)."""
    from dpsearch import shipped

    cached = default_model_dir(PretrainConfig())
    return str(cached if cached.exists() or not shipped.available(cached.name) else shipped.HERE / cached.name)


def _inputs(model, arch: str, data: str, batch: int, resolution: int, device):
    """(latents, labels) of `batch` examples on device: random latents for an SD arch; MNIST or random images
    through the default model's autoencoder."""
    gen = torch.Generator().manual_seed(0)
    if arch != "default":
        size = resolution // 8
        return (torch.randn(batch, 4, size, size, generator=gen).to(device),
                torch.randint(0, 10, (batch,), generator=gen).to(device))
    if data == "random":
        m = model.meta
        images = torch.rand(batch, m["channels"], m["image_size"], m["image_size"], generator=gen) * 2 - 1
        labels = torch.randint(0, m["num_classes"], (batch,), generator=gen)
    else:
        sub = load_mnist()[0].subset(batch)
        images, labels = sub.as_float(), sub.labels
    with torch.no_grad():
        return model.encode(images.to(device)), labels.to(device)


def _one_mode(model_dir: str, layers: str, batch: int, physical: int, mode: str, repeats: int, method: str = "attention",
              rank: int = 8, precision: str = "fp32", device: str = "auto", arch: str = "default", resolution: int = 256,
              data: str = "mnist") -> tuple[float, float, int]:
    """Runs in a fresh process, so the peak memory it reports is this mode's alone: CUDA's peak allocation on a
    GPU (the device dpsearch picks), the process' peak RSS on a CPU."""
    torch.set_num_threads(_THREADS)
    device = pick_device(device)
    model = load_ldm(model_dir, device) if arch == "default" else _sd_model(arch, resolution, device)
    latents, labels = _inputs(model, arch, data, batch, resolution, device)
    sec = bench_mode(model, latents, labels, layers, batch, physical, mode, repeats, method, rank, precision)
    n_trainable = sum(p.numel() for m in (model.unet, model.embedder) for p in m.parameters() if p.requires_grad)
    if device.type == "cuda":
        return sec, torch.cuda.max_memory_allocated() / 2**20, n_trainable
    return sec, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, n_trainable


_THREADS = torch.get_num_threads()


def main(argv=None):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="pretrained model dir (default: the cached default, else the shipped "
                                                  "copy); --arch default only")
    ap.add_argument("--layers", default="all")
    ap.add_argument("--method", choices=["attention", "lora"], default="attention")
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank (with --method lora)")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--physical", type=int, default=128)
    ap.add_argument("--modes", default="non-private,bookkeeping,hooks,functorch,ghost")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="round-robin repetitions of all modes (spread shown)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--precisions", default="fp32", help="fp32 and/or bf16, comma-separated (bf16: non-private and "
                                                          "bookkeeping only)")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:i]")
    ap.add_argument("--arch", choices=["default", "sd15", "sd15-tiny"], default="default",
                    help="default: the --model directory; sd15: SD 1.5's UNet architecture, random weights")
    ap.add_argument("--resolution", type=int, default=256, help="image size for --arch sd15* (latent = size / 8)")
    ap.add_argument("--data", choices=["mnist", "random"], default="mnist", help="the default model's input images")
    ap.add_argument("--out", default=None, help="JSON path (default: bench/results/dp_step[-TAG].json)")
    args = ap.parse_args(argv)
    model_dir = str(args.model or (_default_model() if args.arch == "default" else ""))
    modes, precisions = args.modes.split(","), args.precisions.split(",")
    if modes[0] != "non-private":
        ap.error("--modes must start with non-private (each round's ratios are against it)")
    if set(precisions) - {"fp32", "bf16"}:
        ap.error(f"--precisions takes fp32 and/or bf16, got {args.precisions}")
    # bf16 is book-keeping's (FinetuneConfig.precision): Opacus' own modes run at fp32 only, after the rest
    ours = ("non-private", "bookkeeping")
    combos = [(p, m) for p in precisions for m in modes if m in ours] + \
        [("fp32", m) for m in modes if m not in ours and "fp32" in precisions]
    device = pick_device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {_THREADS} threads"
    peak_kind = "cuda_max_memory_allocated" if device.type == "cuda" else "process_peak_rss"
    out = Path(args.out) if args.out else RESULTS / f"dp_step{('-' + args.tag) if args.tag else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    runs, failed = [], []

    def write(complete: bool) -> list[dict]:  # after every mode, so a run cut short keeps what it measured
        rows = _rows(args.arch, combos, runs)
        out.write_text(json.dumps({"args": vars(args), "machine": platform.platform(), "device": where,
                                   "threads": _THREADS, "torch": torch.__version__, "peak_kind": peak_kind,
                                   "complete": complete, "rows": rows, "runs": runs, "failed": failed}, indent=2))
        return rows

    for r in range(1, args.rounds + 1):
        base = {}
        for precision, mode in combos:
            try:  # one mode failing (e.g. out of GPU memory) is reported, the others still run
                with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                    sec, peak, n_trainable = pool.submit(_one_mode, model_dir, args.layers, args.batch, args.physical,
                                                         mode, args.repeats, args.method, args.rank, precision,
                                                         args.device, args.arch, args.resolution, args.data).result()
            except Exception as e:  # noqa: BLE001 - whatever the child raised, it is this mode's result
                failed.append({"round": r, "mode": mode, "precision": precision, "error": f"{type(e).__name__}: {e}"[:500]})
                print(f"round {r}  {precision} {mode:>12}  FAILED: {failed[-1]['error']}", flush=True)
                write(False)
                continue
            if mode == "non-private":
                base[precision] = sec
            ratio = sec / base[precision] if precision in base else None  # its non-private step failed
            runs.append({"round": r, "mode": mode, "precision": precision, "seconds_per_step": sec,
                         "ratio_to_nonprivate": ratio,
                         "ratio_to_fp32_nonprivate": sec / base["fp32"] if "fp32" in base else None,
                         "peak_mb": peak, "trainable_params": n_trainable})
            print(f"round {r}  {precision} {mode:>12}  {sec:7.3f} s/step  {peak:7.0f} MB peak  "
                  f"{_x(ratio)} non-private {precision}", flush=True)
            write(False)
    if not runs:
        raise SystemExit(f"every mode failed: {failed}")
    rows = write(True)
    what = f"LoRA r={args.rank}" if args.method == "lora" else "whole attention modules"
    print(f"\n{args.arch} on {where}: layers {args.layers} ({what}, {runs[0]['trainable_params']:,} trainable), "
          f"logical batch {args.batch}, physical {args.physical}, {args.rounds} rounds, peak = {peak_kind}:")
    for row in rows:
        print(f"{row['precision']} {row['mode']:>12}  {row['seconds_per_step']:7.3f} s/step  {row['peak_mb']:7.0f} MB "
              f"peak  {_x(row['ratio_to_nonprivate'])} non-private {row['precision']} (rounds {_x(row['ratio_min'])}–"
              f"{_x(row['ratio_max'])})")
    print(f"wrote {out}")


def _rows(arch: str, combos, runs: list[dict]) -> list[dict]:
    """One row per (precision, mode) measured: medians over its rounds, ratios to the same round's non-private step."""
    rows = []
    for precision, mode in combos:
        mine = [x for x in runs if x["mode"] == mode and x["precision"] == precision]
        if not mine:
            continue
        ratios = [x["ratio_to_nonprivate"] for x in mine if x["ratio_to_nonprivate"] is not None]
        to_fp32 = [x["ratio_to_fp32_nonprivate"] for x in mine if x["ratio_to_fp32_nonprivate"] is not None]
        rows.append({"arch": arch, "mode": mode, "precision": precision,
                     "seconds_per_step": statistics.median(x["seconds_per_step"] for x in mine),
                     "ratio_to_nonprivate": statistics.median(ratios) if ratios else None,
                     "ratio_min": min(ratios, default=None), "ratio_max": max(ratios, default=None),
                     "ratio_to_fp32_nonprivate": statistics.median(to_fp32) if to_fp32 else None,
                     "peak_mb": statistics.median(x["peak_mb"] for x in mine),
                     "trainable_params": mine[0]["trainable_params"]})
    return rows


def _x(ratio) -> str:
    return "    –" if ratio is None else f"{ratio:5.2f}×"


if __name__ == "__main__":
    main()
