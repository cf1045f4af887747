"""The command line: help, list, dry-run, and one line + exit status 2 for every user mistake."""

import subprocess
import sys

import pytest

from metaocl.cli import main


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "metaocl.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("list", "sweep", "run", "ui"):
        assert command in out.stdout


def test_list_shows_sweeps_with_descriptions(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "quickstart" in out and "set_inclusion" in out and "section 3.1" in out


def test_dry_run_prints_trials_and_writes_nothing(capsys, in_tmp):
    assert main(["sweep", "quickstart", "--dry-run", "--seeds", "3"]) == 0
    out = capsys.readouterr().out
    assert "3 trials" in out and "s0" in out and "s2" in out
    assert list(in_tmp.iterdir()) == []


def one_line_error(capsys, argv, expected):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("metaocl: error: "), err
    assert expected in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["sweep", "nosuch"], "unknown sweep 'nosuch'"),
        (["sweep", "quickstart", "--set", "train.lrr=1"], "did you mean 'train.lr'?"),
        (["sweep", "quickstart", "--set", "train.batch_size=big"], "expected an integer"),
        (["sweep", "quickstart", "--seeds", "0"], "--seeds 0: must be at least 1"),
        (["sweep", "quickstart", "--seeds", "x"], "invalid int value"),
        (["sweep", "missing/file.yaml"], "no such sweep file"),
        (["run", "quickstart", "--trial", "zz"], "no such trial"),
        (["frobnicate"], "invalid choice"),
        (["sweep", "quickstart", "--tracking-uri", "http://127.0.0.1:9"], "unreachable"),
    ],
)
def test_user_mistakes_are_one_line_exit_2(capsys, in_tmp, argv, expected):
    one_line_error(capsys, argv, expected)
    assert not (in_tmp / "mlflow.db").exists()


def test_ui_without_store(capsys, in_tmp):
    one_line_error(capsys, ["ui"], "no MLflow store")
