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


# --- every bad input of the sweep command: one line, exit 2, nothing written (issue: faults) ---------
BAD_FILES = {
    "malformed.yaml": "name: x\ndescription: d\nkind: set_inclusion\nbase:\n  train: {lr: [1, 2}\n",
    "unknown_key.yaml": "name: x\ndescription: d\nkind: set_inclusion\nsedes: 2\n",
    "nested_key.yaml": "name: x\ndescription: d\nkind: set_inclusion\nbase: {train: {batch_sise: 8}}\n",
    "wrong_type.yaml": "name: x\ndescription: d\nkind: set_inclusion\nseeds: two\n",
    "empty_grid.yaml": "name: x\ndescription: d\nkind: set_inclusion\ngrid: {train.lr: []}\n",
}


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["sweep", "nosuch"], "known sweeps: "),
        (["sweep", "{d}/malformed.yaml"], "malformed.yaml:5: malformed YAML"),
        (["sweep", "{d}/unknown_key.yaml"], "unknown key 'sedes' (did you mean 'seeds'?)"),
        (["sweep", "{d}/nested_key.yaml"], "did you mean 'batch_size'?"),
        (["sweep", "{d}/wrong_type.yaml"], "seeds: expected an integer, got 'two'"),
        (["sweep", "{d}/empty_grid.yaml"], "grid.train.lr: expected a non-empty list"),
        (["sweep", "quickstart", "--set", "nosuch.field=1"], "unknown key 'nosuch.field'"),
        (["sweep", "quickstart", "--address", "127.0.0.1:9"], "Ray address 127.0.0.1:9 is unreachable"),
        (["sweep", "quickstart", "--address", "ray://127.0.0.1:9"], "is unreachable"),
        (["sweep", "quickstart", "--tracking-uri", "http://127.0.0.1:9"], "MLflow tracking URI http://127.0.0.1:9 is unreachable"),
        (["sweep", "quickstart", "--tracking-uri", "sqlite:////nonexistent-dir/m.db"], "is unreachable (no folder"),
        (["sweep", "two_stage", "--smoke", "--set", "data.source=cvdb", "--set", "data.path={d}/no-cvdb.csv"],
         "data.path: cvdb data not found at"),
        (["sweep", "quickstart", "--resume"], "--resume: no started sweep metaocl/quickstart"),
        (["sweep", "quickstart", "--max-failures", "-1"], "--max-failures -1: must be at least 0"),
    ],
)
def test_sweep_bad_inputs_one_line_exit_2_nothing_written(capsys, in_tmp, tmp_path_factory, argv, expected):
    d = tmp_path_factory.mktemp("bad")
    for name, text in BAD_FILES.items():
        (d / name).write_text(text)
    argv = [a.replace("{d}", str(d)) for a in argv]
    expected = expected.replace("{d}", str(d))
    one_line_error(capsys, argv, expected)
    assert list(in_tmp.iterdir()) == []


def test_ui_on_a_server_uri_points_to_it(capsys, in_tmp):
    assert main(["ui", "--tracking-uri", "http://127.0.0.1:5999"]) == 0
    assert "is an MLflow server" in capsys.readouterr().out
