"""The released synthetic data set: what a user hands on, with the data card that says what it guarantees.

Layout: synthetic.npz (uint8 images, labels), data/train-<shard>-of-<shards>.parquet (a Hugging Face `datasets`
parquet folder: `image` as PNG bytes, `label` with the class names), grid.png, card.json (with every data file's
SHA-256) and DATA_CARD.md; png/<class>/<index>.png only when asked for (pngs=True, `dpsearch release --pngs`).
Everything in it is the DP model's output or public configuration, except the oracle scores, which are
measured on the real test split, labelled so, and chose nothing.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
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


# The parquet folder, as the Hugging Face Hub lays out a data set's files: data/train-00000-of-0000N.parquet, even
# shards of at most SHARD_ROWS rows (a shard also closes past SHARD_BYTES of PNG bytes, for large images), in row
# groups of at most GROUP_ROWS images so a reader can open one part without the whole shard.
SHARD_ROWS, SHARD_BYTES, GROUP_ROWS = 50_000, 200 << 20, 1000
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # the storage of datasets.Image()


def _hwc(arr: np.ndarray) -> np.ndarray:
    """uint8 [C, H, W] → what PIL takes: [H, W] for grey, [H, W, C] otherwise."""
    return arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_hwc(arr)).save(buf, format="PNG")
    return buf.getvalue()


def hf_features(names: list) -> dict:
    """The `datasets` features of the parquet files, stored in their schema metadata (key b"huggingface") so that
    load_dataset("parquet", ...) gives an Image column and a ClassLabel with the class names."""
    return {"image": {"_type": "Image"}, "label": {"names": [str(n) for n in names], "_type": "ClassLabel"}}


def _write_parquet(synthetic: ImageSet, data: Path, names: list, png_dir: Path | None, progress: bool) -> list[Path]:
    """Encodes each image once as PNG into data/*.parquet shards (and, with png_dir, into png_dir/<class>/<i>.png);
    returns the shards."""
    schema = pa.schema([("image", IMAGE), ("label", pa.int64())],
                       metadata={b"huggingface": json.dumps({"info": {"features": hf_features(names)}}).encode()})
    n = len(synthetic)
    per_shard = -(-n // max(1, -(-n // SHARD_ROWS)))  # even shards of at most SHARD_ROWS rows
    data.mkdir(parents=True)
    shards: list[Path] = []
    writer, rows, size, batch, counts = None, 0, 0, ([], []), {}

    def flush() -> None:
        if batch[0]:
            writer.write_table(pa.table([pa.array([{"bytes": b, "path": None} for b in batch[0]], IMAGE),
                                         pa.array(batch[1], pa.int64())], schema=schema))
            batch[0].clear()
            batch[1].clear()

    labels = synthetic.labels.tolist()
    for i in tqdm(range(n), desc="encoding PNGs (parquet" + (", png/)" if png_dir else ")"), disable=not progress,
                  leave=False):
        if writer is None or rows >= per_shard or size >= SHARD_BYTES:
            if writer is not None:
                flush()
                writer.close()
            shards.append(data / f".shard-{len(shards)}.parquet")
            writer, rows, size = pq.ParquetWriter(shards[-1], schema), 0, 0
        y = labels[i]
        b = png_bytes(synthetic.images[i].numpy())
        batch[0].append(b)
        batch[1].append(y)
        rows, size = rows + 1, size + len(b)
        if len(batch[0]) >= GROUP_ROWS:
            flush()
        if png_dir is not None:
            d = png_dir / str(names[y])
            if y not in counts:
                d.mkdir(parents=True, exist_ok=True)
            counts[y] = counts.get(y, 0) + 1
            (d / f"{counts[y]:05d}.png").write_bytes(b)
    if writer is None:  # an empty set: one empty shard, so the folder still loads
        shards.append(data / ".shard-0.parquet")
        writer = pq.ParquetWriter(shards[-1], schema)
    flush()
    writer.close()
    named = [data / f"train-{k:05d}-of-{len(shards):05d}.parquet" for k in range(len(shards))]
    for a, b in zip(shards, named):
        a.rename(b)
    return named


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
              "", "## Files", ""]
    lines += [f"- `{f}` ({v['bytes']:,} bytes), sha256 `{v['sha256']}`" for f, v in card["files"].items()]
    lines += ["- `grid.png`: a preview, up to 16 images per class", "- `card.json`: this card, machine-readable"]
    if card.get("pngs"):
        lines += ["- `png/<class>/<index>.png`: every image as its own PNG"]
    lines += ["", "## Loading", "", "From this directory, with numpy (images uint8 [N, C, H, W], labels int64 [N]):", "",
              "```python", "import numpy as np",
              "z = np.load(\"synthetic.npz\"); images, labels = z[\"images\"], z[\"labels\"]", "```", "",
              "With Hugging Face `datasets` (`image`: a PIL image, `label`: a ClassLabel named as above):", "",
              "```python", "from datasets import load_dataset",
              "ds = load_dataset(\"parquet\", data_files=\"data/*.parquet\", split=\"train\")", "```", "",
              "(`ds.save_to_disk(DIR)` once gives the layout that `datasets.load_from_disk(DIR)` reads.)",
              "", "## How it was made", "",
              "```json", json.dumps(card["configuration"], indent=2), "```", ""]
    if card.get("oracle"):
        lines += ["## Oracle scores (not DP, chose nothing)", "",
                  "Measured on the real test split after release, never used for any choice:", ""]
        lines += [f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in card["oracle"].items()]
    return "\n".join(lines) + "\n"


def write_release(synthetic: ImageSet, out: Path, *, name: str, privacy: dict, configuration: dict,
                  oracle: dict | None = None, class_names: list | None = None, overwrite: bool = False,
                  progress: bool = True, pngs: bool = False) -> Path:
    """Writes the release directory atomically and returns it: the npz, the same images as a Hugging Face parquet
    folder (data/), the grid and the card. pngs=True adds png/<class>/<index>.png, one file per image (off by
    default: 60,000 small files cost more than the data they duplicate, in object storage most of all)."""
    out = Path(out)
    names = class_names or list(synthetic.class_names) or list(range(synthetic.num_classes))
    with atomic_dir(out, overwrite=overwrite) as tmp:
        synthetic.save(tmp / "synthetic.npz")
        shards = _write_parquet(synthetic, tmp / "data", names, tmp / "png" if pngs else None, progress)
        save_grid(synthetic, tmp / "grid.png", per_class=16, scale=2)
        files = {f.relative_to(tmp).as_posix(): {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
                 for f in [tmp / "synthetic.npz", *shards]}
        card = {"name": name, "n_images": len(synthetic), "per_class": max(synthetic.class_counts()),
                "image_shape": list(synthetic.image_shape), "class_names": names, "privacy": privacy,
                "configuration": configuration, "oracle": oracle or {}, "sha256": files["synthetic.npz"]["sha256"],
                "files": files, "pngs": pngs,
                "load": {"numpy": 'z = np.load("synthetic.npz"); images, labels = z["images"], z["labels"]',
                         "datasets": 'load_dataset("parquet", data_files="data/*.parquet", split="train")'}}
        (tmp / "card.json").write_text(json.dumps(card, indent=2))
        (tmp / "DATA_CARD.md").write_text(_card_markdown(card))
    return out
