"""The randomness of the DP mechanism (Poisson sampling and Gaussian noise): fresh and secret.

The DP proof of one run, of the composition over a sweep and of repeat-and-select all assume noise
and sampling that nobody can recompute. So every DP-SGD run (and every resume of one) makes a new
`MechanismRandomness` from OS entropy; its seeds live only in this object, are never logged, stored
or derived from `--seed`. No seed is set in a DP fine-tune; `--seed` seeds only what
comes after it or beside it (Optuna, sampling images, the downstream classifier).

Two strengths:
- default: torch generators seeded with 64 bits from `os.urandom` (fast; the generator state is
  not cryptographically protected, as in Opacus without secure_mode).
- secure (`--secure-rng`): every uniform and Gaussian draw comes from the OS CSPRNG itself
  (`os.urandom`), and each Gaussian is the sum of four draws halved, the floating-point hardening
  Opacus' secure_mode uses. Written here because Opacus' secure_mode needs torchcsprng, which has no
  build for this torch; the cost is measured by `bench/secure_rng.py`.
"""

from __future__ import annotations

import math
import os
import secrets

import numpy as np
import torch

_U53 = 2.0 ** -53


def _os_uniform(n: int) -> np.ndarray:
    """n float64 uniforms in (0, 1] from the OS CSPRNG (53 random bits each, never 0: log-safe)."""
    bits = np.frombuffer(os.urandom(8 * n), dtype=np.uint64) >> np.uint64(11)
    return (bits.astype(np.float64) + 1.0) * _U53


def _os_standard_normal(n: int) -> np.ndarray:
    """n standard normals from the OS CSPRNG by Box-Muller in float64."""
    half = (n + 1) // 2
    u1, u2 = _os_uniform(half), _os_uniform(half)
    r = np.sqrt(-2.0 * np.log(u1))
    z = np.concatenate([r * np.cos(2 * math.pi * u2), r * np.sin(2 * math.pi * u2)])
    return z[:n]


class MechanismRandomness:
    """One run's source of sampling masks and noise (see the module docstring)."""

    def __init__(self, secure: bool = False):
        self.secure = secure
        self._generators: dict[str, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            g = torch.Generator(device=device)
            g.manual_seed(secrets.randbits(64))  # OS entropy; never returned, logged or stored
            self._generators[key] = g
        return self._generators[key]

    def noise_generator(self, device) -> torch.Generator | None:
        """The torch generator Opacus draws the noise from, or None in secure mode (see gaussian_like)."""
        return None if self.secure else self._generator(torch.device(device))

    def poisson_mask(self, n: int, q: float) -> torch.Tensor:
        """Which of n records join the next batch: each independently with probability q."""
        if self.secure:
            return torch.from_numpy(_os_uniform(n) <= q)
        # float64 uniforms: float32 has 24 bits, so q would be rounded and small q lose precision
        return torch.rand(n, generator=self._generator(torch.device("cpu")), dtype=torch.float64) < q

    def gaussian_like(self, reference: torch.Tensor, std: float) -> torch.Tensor:
        """N(0, std²) noise of reference's shape, dtype and device."""
        if std == 0:
            return torch.zeros_like(reference)
        if not self.secure:
            g = self._generator(reference.device)
            return torch.normal(0.0, std, reference.shape, generator=g, device=reference.device, dtype=reference.dtype)
        n = reference.numel()
        z = sum(_os_standard_normal(n) for _ in range(4)) / 2.0  # N(0, 1), hardened as Opacus' secure_mode
        return torch.from_numpy(z * std).to(device=reference.device, dtype=reference.dtype).view_as(reference)


__all__ = ["MechanismRandomness"]
