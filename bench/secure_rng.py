"""What --secure-rng costs: the DP-SGD step with noise and Poisson masks from the OS CSPRNG against the
default (torch generators seeded from OS entropy), on the default model architecture.

    python bench/secure_rng.py [--layers all] [--batch 512] [--physical 128] [--n 5120] [--repeats 3]

Each repeat is one epoch of dpsearch's own loop (privacy/dpsgd.py: Poisson loader, Opacus hooks,
BatchMemoryManager) over N random latents, so a step includes exactly the draws a real fine-tune makes:
one mask over N records and one Gaussian per trainable parameter. Also times the two draws alone.
Prints a table and writes bench/results/secure_rng.json. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from dpsearch.config import ModelConfig
from dpsearch.finetune import DiffusionLoss
from dpsearch.models import build_ldm, select_attention_layers
from dpsearch.privacy.dpsgd import dp_sgd_epoch, privatize
from dpsearch.privacy.randomness import MechanismRandomness

RESULTS = Path(__file__).parent / "results"


def step_seconds(secure: bool, layers, n: int, batch: int, physical: int, repeats: int) -> tuple[list[float], int]:
    torch.manual_seed(0)
    model = build_ldm(ModelConfig())
    trainable = select_attention_layers(model.unet, model.embedder, layers, frozen=(model.vae,))
    size = model.meta["padded_size"] // 4
    data = TensorDataset(torch.randn(n, 4, size, size), torch.randint(0, 10, (n,)))
    module = DiffusionLoss(model, 0.1).train()
    _, dp_module, opt, loader = privatize(module, torch.optim.Adam(trainable, lr=1e-4), DataLoader(data, batch_size=batch),
                                         sigma=1.0, clip=0.01, rng=MechanismRandomness(secure=secure))
    per_step = []
    for r in range(repeats + 1):  # the first epoch warms up
        t = time.perf_counter()
        steps = dp_sgd_epoch(dp_module, opt, loader, trainable, "cpu", physical)
        if r:
            per_step.append((time.perf_counter() - t) / steps)
    dp_module._close()
    return per_step, sum(p.numel() for p in trainable)


def draw_seconds(secure: bool, n_params: int, n: int, repeats: int = 5) -> dict:
    rng = MechanismRandomness(secure=secure)
    ref = torch.zeros(n_params)
    out = {}
    for name, fn in (("noise", lambda: rng.gaussian_like(ref, 1.0)), ("mask", lambda: rng.poisson_mask(n, 0.1))):
        fn()
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        out[name] = statistics.median(ts)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="all")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--physical", type=int, default=128)
    ap.add_argument("--n", type=int, default=5120)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(2)
    layers = None if a.layers == "all" else tuple(int(x) for x in a.layers.split("-"))
    rows = []
    for secure in (False, True):
        steps, n_params = step_seconds(secure, layers or (1, 7), a.n, a.batch, a.physical, a.repeats)
        draws = draw_seconds(secure, n_params, 60000)
        rows.append({"rng": "os-csprng (--secure-rng)" if secure else "torch generator, OS-seeded (default)",
                     "step_s_median": statistics.median(steps), "step_s_all": steps, "trainable_params": n_params,
                     "noise_draw_s": draws["noise"], "mask_draw_s_n60000": draws["mask"]})
    base = rows[0]["step_s_median"]
    print(f"{'randomness':<38} {'s / DP step':>11} {'× default':>9} {'noise draw':>10} {'mask (N=60k)':>12}")
    for r in rows:
        r["ratio"] = r["step_s_median"] / base
        print(f"{r['rng']:<38} {r['step_s_median']:>11.3f} {r['ratio']:>9.2f} {r['noise_draw_s'] * 1e3:>8.1f}ms "
              f"{r['mask_draw_s_n60000'] * 1e3:>10.1f}ms")
    print(f"layers {a.layers} ({rows[0]['trainable_params']} trainable parameters), logical batch {a.batch}, "
          f"physical {a.physical}, N = {a.n}, median of {a.repeats} epochs after a warm-up; {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "secure_rng.json").write_text(json.dumps({"args": vars(a), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
