"""Bad input gets a clear message, exit code 2, and nothing half-written."""


import pytest

from dpsearch.cli import main


@pytest.mark.parametrize("args,message", [
    (["--eps", "0"], "ε must be a positive"),
    (["--eps", "-1"], "ε must be a positive"),
    (["--eps", "inf"], "dpsearch run --non-private"),
    (["--eps", "1000"], "dpsearch run --non-private"),
    (["--eps", "5", "--delta", "0.5"], "not below 1/N"),
    (["--eps", "5", "--layers", "0-3"], "outside this model's attention modules 1-7"),
    (["--eps", "5", "--layers", "5-3"], "outside this model's attention modules 1-7"),
    (["--eps", "5", "--layers", "3-99"], "outside this model's attention modules 1-7"),
    (["--eps", "5", "--layers", "three"], "not of the form a-b"),
    (["--eps", "5", "--batch", "5000"], "larger than the private set"),
    (["--eps", "5", "--epochs", "0"], "epochs must be ≥ 1"),
    (["--eps", "5", "--clip", "0"], "clip must be > 0"),
])
def test_bad_finetune_input(args, message, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["finetune", "--model", str(tiny_model_dir), "--out", str(out), "--n-private", "1000", "--batch", "100",
                 "--quiet", *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_eps_not_a_number_is_refused(tiny_model_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["finetune", "--model", str(tiny_model_dir), "--out", str(tmp_path / "o"), "--eps", "five"])
    assert e.value.code == 2 and "--eps must be a number" in capsys.readouterr().err


def test_missing_and_corrupt_model(tmp_path, capsys):
    assert main(["layers", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "unet").mkdir()
    assert main(["layers", str(tmp_path / "m")]) == 2
    assert "incomplete" in capsys.readouterr().err


def test_existing_output_needs_overwrite(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert main(["sample", "--model", str(tiny_model_dir), "--out", str(out), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious"


def test_layers_prints_table(tiny_model_dir, capsys):
    assert main(["layers", str(tiny_model_dir), "--range", "2-4"]) == 0
    out = capsys.readouterr().out
    assert "L = 7 attention modules" in out and "range 2-4" in out


def test_retry_errored_needs_a_sweep_to_resume(capsys):
    assert main(["sweep", "--retry-errored", "--quiet"]) == 2
    assert "--retry-errored only applies with --resume" in capsys.readouterr().err


def test_help_and_the_parser_import_neither_torch_nor_diffusers_nor_opacus():
    """`dpsearch --help` (and `services`, `ui`) answer in a fraction of a second: the verbs import the heavy
    libraries they use, the CLI module does not (importing them took eight seconds here)."""
    import subprocess
    import sys

    code = ("import sys\nfrom dpsearch.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit as e:\n"
            "    assert e.code == 0, e.code\n"
            "print('HEAVY', sorted({'torch', 'diffusers', 'opacus', 'ray', 'mlflow'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "sweep" in out.stdout and out.stdout.strip().endswith("HEAVY []"), out.stdout[-500:]


def test_the_errors_the_cli_catches_are_the_ones_the_data_and_model_code_raise():
    from dpsearch.data import DataError as data_error
    from dpsearch.errors import DataError, ModelError
    from dpsearch.models import ModelError as model_error

    assert data_error is DataError and model_error is ModelError
