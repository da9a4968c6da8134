"""`dpsearch report`: a self-contained HTML report of a real (smoke) sweep, looked at in headless Chromium."""

import re
from pathlib import Path

import pytest

from dpsearch.cli import main
from dpsearch.config import ConfigError
from dpsearch.html_report import plot_layer_heatmap

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def test_layer_heatmap_keeps_the_best_objective_per_range_and_skips_unscored_trials():
    rows = [{"status": "DONE", "layers": "2-3", "objective": 0.5}, {"status": "DONE", "layers": "2-3", "objective": 0.7},
            {"status": "ERROR", "layers": "1-1", "objective": 0.9}, {"status": "STOPPED", "layers": "1-2", "objective": None}]
    fig = plot_layer_heatmap(rows, 3)
    assert fig.axes[0].images[0].get_array()[1, 2] == 0.7  # start 2, end 3: the better of the two
    assert plot_layer_heatmap(rows[2:], 3) is None  # nothing scored, no plot


def test_report_of_something_that_is_not_a_sweep_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "dpsearch").mkdir()
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    assert "not a dpsearch sweep" in capsys.readouterr().err and not (tmp_path / "r.html").exists()
    with pytest.raises(ConfigError, match="not a dpsearch sweep"):
        from dpsearch.html_report import build_report

        build_report(str(tmp_path / "elsewhere"), tmp_path / "r.html")


@pytest.mark.e2e
def test_report_of_a_real_sweep_opens_in_a_browser(tracked, tmp_path):
    from tests.browser import chromium, wait_for_text

    out = tmp_path / "tracked-report.html"
    assert main(["report", "tracked", "--out", str(out)]) == 0
    page = out.read_text()
    assert "http" not in re.sub(r"<code>.*?</code>", "", page).replace("charset", "")  # self-contained: no links
    assert page.count("data:image/png;base64,") >= 3  # plots (and sample grids) are embedded
    assert "ORACLE" in page and f"δ = {tracked.rows[0]['delta']:g}</b>" in page  # the released ε has its δ beside it
    for r in tracked.rows:
        assert r["trial"] in page
    ARTIFACTS.mkdir(exist_ok=True)
    with chromium(1300, 2400) as browser:
        browser.get(out.as_uri())
        wait_for_text(browser, ["Released model's guarantee", "Trials", "Privacy report", tracked.rows[0]["trial"]])
        sizes = browser.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
        assert sizes and all(ok and w > 0 for ok, w in sizes)  # every embedded image decodes
        browser.save_screenshot(str(ARTIFACTS / "report.png"))


@pytest.mark.e2e
def test_compare_sweep_notebook_runs_on_a_real_sweep(tracked, monkeypatch):
    """The notebook is executed on the smoke sweep's MLflow runs, so it never rots."""
    import nbformat
    from nbclient import NotebookClient

    from dpsearch import services

    monkeypatch.setenv("DPSEARCH_SWEEP", "tracked")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", services.load().mlflow_uri)
    path = Path(__file__).resolve().parent.parent / "notebooks" / "compare_sweep.ipynb"
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert f"sweep tracked: {len(tracked.rows)} trials" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 5  # the plots were drawn
    assert "sample grids shown" in text and not text.strip().endswith("0 sample grids shown")
