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
    assert "quickstart" in out and "set_inclusion" in out and "section 3.1" in " ".join(out.split())
    assert max(len(line) for line in out.splitlines()) <= 100  # fits a 100-column terminal


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
        (["sweep", "quickstart", "--set", "train.lrr=1"], "did you mean 'train.lr'?"),
        (["sweep", "quickstart", "--set", "train.batch_size=big"], "expected an integer"),
        (["sweep", "quickstart", "--seeds", "0"], "--seeds 0: must be at least 1"),
        (["sweep", "quickstart", "--seeds", "x"], "invalid int value"),
        (["sweep", "missing/file.yaml"], "no such sweep file"),
        (["run", "quickstart", "--trial", "zz"], "no such trial"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_user_mistakes_are_one_line_exit_2(capsys, in_tmp, argv, expected):
    one_line_error(capsys, argv, expected)
    assert not (in_tmp / "mlflow.db").exists()


# --- every bad input of the sweep command: one line, exit 2, nothing written (issue: faults) ---------
# (what each bad sweep file says is tested on the loader, tests/test_config.py; here one goes through the CLI)
BAD_FILES = {
    "malformed.yaml": "name: x\ndescription: d\nkind: set_inclusion\nbase:\n  train: {lr: [1, 2}\n",
}


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["sweep", "nosuch"], "unknown sweep 'nosuch'; known sweeps: "),
        (["sweep", "{d}/malformed.yaml"], "malformed.yaml:5: malformed YAML"),
        (["sweep", "quickstart", "--set", "nosuch.field=1"], "unknown key 'nosuch.field'"),
        (["sweep", "quickstart", "--address", "127.0.0.1:9"], "Ray address 127.0.0.1:9 is unreachable"),
        (["sweep", "quickstart", "--address", "ray://127.0.0.1:9"], "is unreachable"),
        (["sweep", "quickstart", "--tracking-uri", "http://127.0.0.1:9"], "MLflow tracking URI http://127.0.0.1:9 is unreachable"),
        (["sweep", "quickstart", "--tracking-uri", "sqlite:////nonexistent-dir/m.db"], "is unreachable (no folder"),
        (["sweep", "two_stage", "--smoke", "--set", "data.source=cvdb", "--set", "data.path={d}/no-cvdb.csv"],
         "--set data.path={d}/no-cvdb.csv: cvdb data not found at"),
        (["run", "two_stage", "--smoke", "--set", "data.source=cvdb", "--set", "data.path={d}/no-cvdb.csv"],
         "--set data.path={d}/no-cvdb.csv: cvdb data not found at"),  # metaocl run checks inputs before MLflow is touched
        (["sweep", "two_stage", "--smoke", "--set", "model.name=EleutherAI/pythia-70mm"],
         "--set model.name=EleutherAI/pythia-70mm: model 'EleutherAI/pythia-70mm' is not in the local Hugging Face cache and HF_HUB_OFFLINE=1"),
        (["run", "two_stage", "--smoke", "--set", "model.name=./no-such-model"],
         "--set model.name=./no-such-model: './no-such-model' is neither a local folder nor a Hugging Face model name"),
        (["sweep", "mnist", "--smoke", "--set", "model.name=convnextv2_atoo"],
         "--set model.name=convnextv2_atoo: unknown timm model"),
        # a bad value names the --set typed, not the sweep file it was merged into
        (["sweep", "quickstart", "--set", "train.lr=abc"], "error: --set train.lr=abc: expected float | null, got 'abc'"),
        (["sweep", "quickstart", "--smoke", "--set", "train.lr=abc"], "error: --set train.lr=abc: expected"),
        (["sweep", "two_stage", "--set", "data.path=3", "--dry-run"], "error: --set data.path=3: expected a string"),
        (["sweep", "two_stage", "--smoke", "--set", "data.path={d}/x.csv"],
         "error: --set data.path={d}/x.csv: source 'cvdb_sample' generates its own file; leave data.path empty"),
        (["sweep", "quickstart", "--set", "seed=3", "--seeds", "2"], "--set seed=3 pins one seed; drop --seeds 2"),
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


def test_ui_on_a_server_that_is_down_is_one_line(capsys, in_tmp):
    one_line_error(capsys, ["ui", "--tracking-uri", "http://127.0.0.1:9"], "MLflow tracking URI http://127.0.0.1:9 is unreachable")
    assert list(in_tmp.iterdir()) == []


@pytest.mark.slow
def test_run_tracks_into_its_own_experiment_with_the_pinned_seed(capsys, in_tmp):
    """metaocl run --set seed=N: seed N; a parent run (invocation run) with one child, in metaocl/NAME-smoke-run."""
    argv = ["run", "quickstart", "--smoke", "--set", "seed=5", "--set", "train.stage1_epochs=1",
            "--set", "train.stage2_epochs=1", "--set", "data.n_variables=60"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "trial s5 (seed 5)" in out and "experiment: metaocl/quickstart-smoke-run" in out
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{in_tmp / 'mlflow.db'}")
    assert client.get_experiment_by_name("metaocl/quickstart-smoke") is None  # the sweep's experiment: untouched
    exp = client.get_experiment_by_name("metaocl/quickstart-smoke-run")
    runs = client.search_runs([exp.experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("metaocl.role") == "sweep"]
    [child] = [r for r in runs if r.data.tags.get("metaocl.role") == "trial"]
    assert parent.data.tags["metaocl.invocation"] == "run" and parent.info.status == "FINISHED"
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and child.info.status == "FINISHED"
    assert child.data.tags["seed"] == "5" and child.data.params["seed"] == "5"
    assert [m.step for m in client.get_metric_history(child.info.run_id, "acc/qd1consis")] == [1, 2]


def test_run_help_says_what_set_seed_does(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--set seed=N for seed N" in out and "metaocl/NAME-run" in out


def test_resume_command_repeats_what_the_sweep_was_started_with():
    from metaocl.config import load_sweep
    from metaocl.sweep.ledger import resume_command

    sweep = load_sweep("quickstart", smoke=True, seeds=3, overrides=["train.lr=1e-3", "data.n_variables=60"])
    assert resume_command(sweep, "/runs/a b", "head:6379", "http://mlflow:5000") == (
        "metaocl sweep quickstart --smoke --seeds 3 --set train.lr=1e-3 --set data.n_variables=60 --resume "
        "--storage '/runs/a b' --address head:6379 --tracking-uri http://mlflow:5000")
    assert resume_command(load_sweep("quickstart"), None, None) == "metaocl sweep quickstart --resume"


def test_console_prints_a_bug_as_a_traceback_and_exits_1():
    """The `metaocl` command (cli.console): a bug inside a command is Python's traceback and exit status 1
    (not a one-line usage error), argparse's exits keep their status, and either way the process ends."""
    bug = ("import metaocl.cli as cli\n"
           "def main(argv=None):\n"
           "    raise ZeroDivisionError('a bug in a command')\n"
           "cli.main = main\n"
           "cli.console()\n")
    out = subprocess.run([sys.executable, "-c", bug], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out
    assert out.stderr.startswith("Traceback (most recent call last):")
    assert out.stderr.strip().splitlines()[-1] == "ZeroDivisionError: a bug in a command"
    usage = [sys.executable, "-c", "from metaocl.cli import console; console()"]
    assert subprocess.run(usage + ["--help"], capture_output=True, text=True, timeout=120).returncode == 0
    bad = subprocess.run(usage + ["frobnicate"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_console_output_cut_short_by_its_reader_is_quiet():
    """`metaocl list | head -1`: the reader has closed the pipe (here before the command writes at
    all); no BrokenPipeError traceback, the status a shell gives SIGPIPE."""
    import os

    read, write = os.pipe()
    os.close(read)  # the reader has gone
    try:
        out = subprocess.run([sys.executable, "-c", "from metaocl.cli import console; console()", "list"],
                             stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert out.returncode == 141 and "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr, out.stderr
