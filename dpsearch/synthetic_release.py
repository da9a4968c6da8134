"""The released synthetic data set: what a user hands on, with the data card that says what it guarantees.

Layout: synthetic.npz (uint8 images, labels), png/<class>/<index>.png, grid.png, card.json and DATA_CARD.md.
Everything in it is the DP model's output or public configuration, except the oracle scores, which are
measured on the real test split, labelled so, and chose nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from dpsearch.checkpoints import sha256_file
from dpsearch.data import ImageSet
from dpsearch.outputs import atomic_dir
from dpsearch.sample import save_grid


def provenance(p: dict) -> str | None:
    """For a model trained in a sweep: its own run's (ε, δ), and why that is not the figure to state."""
    run, sweep = p.get("run"), p.get("sweep")
    if not run or not sweep or run.get("eps") is None:
        return None
    which = f"trial {sweep['trial']}" if sweep.get("trial") else "the selected trial"  # no id: a selected trial's bounds K
    return (f"this model's own fine-tune was (ε = {run['eps']:.3f}, δ = {run['delta']:.3g})-DP, but it was {which} "
            f"of sweep {sweep['name']}, a search on the same private data: the sweep's figure above is what covers "
            f"it, not the trial's own")


def _accountant(name: str) -> str:
    """'the PRV accountant' for one run; a sweep's composite (several parts) is said as it is."""
    return name if " " in name else f"the {name.upper()} accountant"


def _card_markdown(card: dict) -> str:
    p = card["privacy"]
    guarantee = (f"(ε = {p['eps']:.3f}, δ = {p['delta']:.3g})-DP with respect to the private training set "
                 f"(add/remove one image), by {_accountant(p.get('accountant', '?'))}"
                 if p.get("dp", True) else "NONE: this data set is NOT differentially private")
    lines = [f"# Synthetic data set: {card['name']}", "",
             f"**Privacy guarantee:** {guarantee}. It covers {p.get('covers', 'the model that generated these images')}."]
    if provenance(p):
        lines += ["", f"**Part of a search:** {provenance(p)}."]
    for w in p.get("warnings") or []:
        lines += ["", f"**WARNING:** {w}"]
    lines += ["", f"- images: {card['n_images']} ({card['per_class']} per class), {card['image_shape']}, uint8",
              f"- classes: {', '.join(map(str, card['class_names']))}",
              f"- synthetic.npz sha256: `{card['sha256']}`", "", "## How it was made", "",
              "```json", json.dumps(card["configuration"], indent=2), "```", ""]
    if card.get("oracle"):
        lines += ["## Oracle scores (not DP, chose nothing)", "",
                  "Measured on the real test split after release, never used for any choice:", ""]
        lines += [f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in card["oracle"].items()]
    return "\n".join(lines) + "\n"


def write_release(synthetic: ImageSet, out: Path, *, name: str, privacy: dict, configuration: dict,
                  oracle: dict | None = None, class_names: list | None = None, overwrite: bool = False,
                  progress: bool = True, pngs: bool = True) -> Path:
    """Writes the release directory atomically and returns it. pngs=False skips png/ (a sweep's release goes
    to object storage, where 60,000 small files cost more than the npz they duplicate)."""
    out = Path(out)
    names = class_names or list(range(synthetic.num_classes))
    with atomic_dir(out, overwrite=overwrite) as tmp:
        synthetic.save(tmp / "synthetic.npz")
        counts = {}
        for img, y in tqdm(zip(synthetic.images, synthetic.labels.tolist()) if pngs else [], total=len(synthetic),
                           desc="writing PNGs", disable=not progress or not pngs, leave=False):
            d = tmp / "png" / str(names[y])
            if y not in counts:
                d.mkdir(parents=True, exist_ok=True)
            counts[y] = counts.get(y, 0) + 1
            arr = img.numpy()
            Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)).save(d / f"{counts[y]:05d}.png")
        save_grid(synthetic, tmp / "grid.png", per_class=16, scale=2)
        card = {"name": name, "n_images": len(synthetic), "per_class": max(synthetic.class_counts()),
                "image_shape": list(synthetic.image_shape), "class_names": names, "privacy": privacy,
                "configuration": configuration, "oracle": oracle or {}, "sha256": sha256_file(tmp / "synthetic.npz")}
        (tmp / "card.json").write_text(json.dumps(card, indent=2))
        (tmp / "DATA_CARD.md").write_text(_card_markdown(card))
    return out
