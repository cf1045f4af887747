"""`metaocl data build|show|download` through the real CLI entry point."""

from __future__ import annotations

import pytest

from metaocl.cli import main


@pytest.fixture(autouse=True)
def data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("METAOCL_DATA", str(tmp_path / "home"))
    return tmp_path / "home"


def write(path, text):
    path.write_text(text)
    return path


def test_build_writes_a_loadable_dataset_and_prints_counts(tmp_path, capsys):
    import datasets

    cfg = write(tmp_path / "d.yaml", "source: cvdb_sample\nn_entities: 40\n")
    out = tmp_path / "built"
    assert main(["data", "build", str(cfg), "--seed", "2", "--out", str(out), "--set", "word_order=VTE"]) == 0
    printed = capsys.readouterr().out
    assert "qd1consis" in printed and "train_2" in printed and "VTE" in printed
    dd = datasets.load_from_disk(str(out))
    assert len(dd["qd1consis"]) == 10 and "ent_who_qd2incons_defent" in dd


def test_show_prints_examples_of_every_split(tmp_path, capsys):
    cfg = write(tmp_path / "d.yaml", "data:\n  source: trex_sample\n  n_entities: 40\n")
    assert main(["data", "show", str(cfg), "-n", "1"]) == 0
    printed = capsys.readouterr().out
    for split in ("== train_1", "== train_2", "== qd2incons", "== ent_name_d2consis"):
        assert split in printed
    assert main(["data", "show", str(cfg), "--split", "nope"]) == 2


@pytest.mark.parametrize(
    "body,message",
    [
        ("source: cvdb_sample\nsubsets: {q: 0.6}\n", "sum to"),
        ("source: cvdb_sample\nword_order: TXE\n", "word_order"),
        ("source: cvdb_sample\nn_entitys: 4\n", "n_entities"),
    ],
)
def test_bad_config_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, body, message):
    cfg = write(tmp_path / "bad.yaml", body)
    out = tmp_path / "out"
    assert main(["data", "build", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "bad.yaml" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_bad_source_files_exit_2_and_write_nothing(tmp_path, capsys):
    csv = write(tmp_path / "cvdb.csv", "name,birth\nA,1\n")
    cfg = write(tmp_path / "c.yaml", f"source: cvdb\npath: {csv}\nn_entities: 2\n")
    out = tmp_path / "out"
    assert main(["data", "build", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "cvdb.csv: column 'death' missing" in err and len(err.splitlines()) == 1
    folder = tmp_path / "trex"
    folder.mkdir()
    write(folder / "f.json", '{"not": "a list"}')
    cfg = write(tmp_path / "t.yaml", f"source: trex\npath: {folder}\nn_entities: 2\n")
    assert main(["data", "build", str(cfg), "--out", str(out)]) == 2
    assert "f.json: expected a list of documents" in capsys.readouterr().err
    assert not out.exists()


def test_build_from_a_sweep_uses_its_first_trial(tmp_path, capsys):
    sweep = write(tmp_path / "s.yaml", (
        "name: s\ndescription: test\nkind: lm\nbase:\n  data: {source: cvdb, n_entities: 4000}\n"
        "smoke:\n  base:\n    data: {source: cvdb_sample, n_entities: 20, stages: three_stage}\n"
    ))
    out = tmp_path / "o"
    assert main(["data", "build", str(sweep), "--smoke", "--out", str(out)]) == 0
    assert "train_3" in capsys.readouterr().out and out.is_dir()
    # the full variant names the real CVDB file, which is not there: one line, exit 2
    assert main(["data", "build", str(sweep), "--out", str(tmp_path / "o2")]) == 2
    assert "metaocl data download cvdb" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_download_offline_fails_at_once_saying_where_to_put_the_file(data_home, monkeypatch, capsys):
    from metaocl.data import download

    monkeypatch.setattr(download, "CVDB_HOST", "127.0.0.1")  # nothing listens on 443 here: "offline"
    monkeypatch.setattr(download, "MNIST_HOST", "127.0.0.1")
    assert main(["data", "download", "cvdb"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(data_home / "cvdb" / "cross-verified-database.csv.gz") in err
    assert main(["data", "download", "mnist"]) == 2
    err = capsys.readouterr().err.strip()
    assert "train-images-idx3-ubyte.gz" in err and str(data_home / "MNIST" / "raw") in err
    assert not (data_home / "cvdb").exists()
