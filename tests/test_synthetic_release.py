import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from dpsearch import synthetic_release
from dpsearch.checkpoints import sha256_file
from dpsearch.data import ImageSet, printed_digits
from dpsearch.synthetic_release import write_release

PRIVACY = {"dp": True, "eps": 1.0, "delta": 1e-5, "accountant": "prv"}


def test_release_has_npz_pngs_per_class_grid_and_a_card_with_the_guarantee(tmp_path):
    data = printed_digits(40, seed=2, progress=False)
    privacy = {"dp": True, "eps": 1.0, "delta": 1.67e-6, "accountant": "prv", "covers": "the whole search"}
    out = write_release(data, tmp_path / "rel", name="test", privacy=privacy, configuration={"layers": "1-7"},
                        oracle={"oracle/accuracy": 0.9}, progress=False, pngs=True)
    back = ImageSet.load(out / "synthetic.npz")
    assert torch.equal(back.images, data.images) and torch.equal(back.labels, data.labels)
    for c in range(10):
        files = sorted((out / "png" / str(c)).glob("*.png"))
        assert len(files) == 4
        first = (data.labels == c).nonzero().flatten()[0]
        assert np.array_equal(np.asarray(Image.open(files[0])), data.images[first, 0].numpy())
    assert (out / "grid.png").stat().st_size > 0
    card = json.loads((out / "card.json").read_text())
    assert card["privacy"]["eps"] == 1.0 and len(card["sha256"]) == 64 and card["n_images"] == 40
    text = (out / "DATA_CARD.md").read_text()
    assert "(ε = 1.000, δ = 1.67e-06)-DP" in text and "the whole search" in text
    assert "Oracle scores (not DP, chose nothing)" in text


def test_non_dp_release_says_so(tmp_path):
    out = write_release(printed_digits(20, progress=False), tmp_path / "r", name="ref",
                        privacy={"dp": False, "statement": "NOT DP"}, configuration={}, progress=False)
    assert "NOT differentially private" in (out / "DATA_CARD.md").read_text()


def test_the_card_of_a_sweep_trial_headlines_the_sweeps_figure_and_says_why_not_its_own(tmp_path):
    run = {"dp": True, "eps": 0.46, "delta": 1e-5, "accountant": "prv"}
    privacy = {"dp": True, "eps": 5.0, "delta": 1e-5, "accountant": "pld", "covers": "sweep s: the whole search",
               "sweep": {"name": "s", "trial": "t3", "figure": "released"}, "run": run,
               "warnings": ["the tuning part costs more than planned"]}
    out = write_release(printed_digits(20, progress=False), tmp_path / "r", name="t3", privacy=privacy,
                        configuration={}, progress=False, pngs=False)
    text = (out / "DATA_CARD.md").read_text()
    assert "**Privacy guarantee:** (ε = 5.000, δ = 1e-05)-DP" in text and "sweep s: the whole search" in text
    assert "own fine-tune was (ε = 0.460, δ = 1e-05)-DP, but it was trial t3 of sweep s" in text
    assert "**WARNING:** the tuning part costs more than planned" in text
    selected = {**privacy, "sweep": {"name": "s", "selected": True}}  # private selection: no trial id
    text = (write_release(printed_digits(20, progress=False), tmp_path / "r2", name="x", privacy=selected,
                          configuration={}, progress=False, pngs=False) / "DATA_CARD.md").read_text()
    assert "it was the selected trial of sweep s" in text and "t3" not in text


def _datasets(tmp_path, monkeypatch):
    """`datasets` (a test dependency) kept off the network and out of ~/.cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    import datasets

    return datasets


def test_by_default_the_release_is_the_npz_and_a_parquet_folder_that_datasets_loads(tmp_path, monkeypatch):
    data = printed_digits(30, seed=3, progress=False)
    names = [f"digit {i}" for i in range(10)]
    out = write_release(data, tmp_path / "rel", name="t", privacy=PRIVACY, configuration={}, class_names=names,
                        progress=False)
    assert not (out / "png").exists()
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "DATA_CARD.md", "card.json", "data/train-00000-of-00001.parquet", "grid.png", "synthetic.npz"]
    datasets = _datasets(tmp_path, monkeypatch)
    ds = datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds.features["label"].names == names and ds.features["label"].dtype == "int64"
    npz = np.load(out / "synthetic.npz")
    assert ds.num_rows == len(npz["labels"]) == 30
    assert ds["label"] == npz["labels"].tolist()
    assert np.bincount(ds["label"], minlength=10).tolist() == data.class_counts() == [3] * 10
    images = np.stack([np.asarray(im) for im in ds["image"]])
    assert images.shape == (30, 28, 28) and np.array_equal(images, npz["images"][:, 0])
    card = json.loads((out / "card.json").read_text())
    assert set(card["files"]) == {"synthetic.npz", "data/train-00000-of-00001.parquet"}
    for f, v in card["files"].items():
        assert v == {"bytes": (out / f).stat().st_size, "sha256": sha256_file(out / f)}
    assert card["sha256"] == card["files"]["synthetic.npz"]["sha256"] and card["pngs"] is False
    text = (out / "DATA_CARD.md").read_text()
    assert 'load_dataset("parquet", data_files="data/*.parquet", split="train")' in text
    assert 'np.load("synthetic.npz")' in text and card["files"]["data/train-00000-of-00001.parquet"]["sha256"] in text
    assert "png/" not in text


def test_a_large_release_is_sharded_in_order_and_rgb_images_round_trip(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic_release, "SHARD_ROWS", 15)
    monkeypatch.setattr(synthetic_release, "GROUP_ROWS", 4)
    g = torch.Generator().manual_seed(0)
    data = ImageSet(torch.randint(0, 256, (40, 3, 8, 6), dtype=torch.uint8, generator=g),
                    torch.arange(40) % 3, 3, "rgb")
    out = write_release(data, tmp_path / "rel", name="rgb", privacy=PRIVACY, configuration={}, progress=False,
                        pngs=True)
    shards = sorted((out / "data").iterdir())
    assert [p.name for p in shards] == [f"train-0000{k}-of-00003.parquet" for k in range(3)]
    assert [pq.ParquetFile(p).metadata.num_rows for p in shards] == [14, 14, 12]
    assert pq.ParquetFile(shards[0]).metadata.num_row_groups == 4
    # without `datasets`: pyarrow and PIL read it as well
    rows = [r for p in shards for r in pq.read_table(p).to_pylist()]
    assert [r["label"] for r in rows] == data.labels.tolist()
    decoded = np.stack([np.asarray(Image.open(io.BytesIO(r["image"]["bytes"]))) for r in rows])
    assert np.array_equal(decoded, data.images.permute(0, 2, 3, 1).numpy())
    meta = json.loads(pq.read_schema(shards[0]).metadata[b"huggingface"])
    assert meta["info"]["features"]["label"] == {"names": ["0", "1", "2"], "_type": "ClassLabel"}
    # the PNG files, when asked for, are the same bytes
    assert (out / "png" / "1" / "00001.png").read_bytes() == rows[1]["image"]["bytes"]
    assert len(json.loads((out / "card.json").read_text())["files"]) == 4


def test_a_stored_release_is_pulled_with_its_parquet_folder_and_checked(tmp_path):
    """What the final stage and `dpsearch pull` do: a manifest over the whole directory, a recursive copy, a check."""
    from dpsearch.checkpoints import verify_local, write_manifest
    from dpsearch.config import ConfigError
    from dpsearch.storage import Store

    final = tmp_path / "final"
    write_release(printed_digits(20, progress=False), final / "release", name="r", privacy=PRIVACY, configuration={},
                  progress=False)
    assert "release/data/train-00000-of-00001.parquet" in write_manifest(final)
    out = Store(final).download_dir("", tmp_path / "pulled")
    verify_local(out)
    shard = out / "release" / "data" / "train-00000-of-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ConfigError, match="parquet"):
        verify_local(out)


def test_dpsearch_release_writes_pngs_only_with_the_flag():
    from dpsearch.cli import build_parser

    assert build_parser().parse_args(["release", "t", "--out", "o"]).pngs is False
    assert build_parser().parse_args(["release", "t", "--out", "o", "--pngs"]).pngs is True
