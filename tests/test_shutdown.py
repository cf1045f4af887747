"""How a process that hosted Ray ends (metaocl/sweep/shutdown.py): what Python's exit does, less the
interpreter's and C++'s teardown."""

import subprocess
import sys
import textwrap

import pytest

from metaocl.sweep.shutdown import exit_code

SCRIPT = textwrap.dedent("""
    import atexit, sys, threading, time
    {import_ray}
    from metaocl.sweep.shutdown import exit_process

    class Finalized:  # a module global: destroyed only when the interpreter tears itself down
        def __del__(self):
            sys.__stderr__.write("torn down\\n")

    witness = Finalized()
    atexit.register(lambda: open({out!r} + "/atexit", "w").close())

    def late():
        time.sleep(0.5)
        open({out!r} + "/thread", "w").close()

    threading.Thread(target=late).start()  # not a daemon: exit waits for it
    sys.stdout.write("no newline, still buffered")
    exit_process({code!r})
""")


def _run(tmp_path, import_ray: bool, code):
    script = SCRIPT.format(import_ray="import ray" if import_ray else "", out=str(tmp_path), code=code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


def test_after_ray_threads_and_atexit_run_output_is_flushed_and_teardown_is_skipped(tmp_path):
    proc = _run(tmp_path, import_ray=True, code=3)
    assert proc.returncode == 3
    assert proc.stdout == "no newline, still buffered"
    assert (tmp_path / "thread").exists() and (tmp_path / "atexit").exists()
    assert "torn down" not in proc.stderr  # os._exit: no interpreter (or C++ static) teardown


def test_without_ray_the_normal_exit(tmp_path):
    proc = _run(tmp_path, import_ray=False, code=3)
    assert proc.returncode == 3
    assert proc.stdout == "no newline, still buffered"
    assert (tmp_path / "thread").exists() and (tmp_path / "atexit").exists()
    assert "torn down" in proc.stderr


def test_a_message_exits_1_and_is_printed(tmp_path):
    proc = _run(tmp_path, import_ray=True, code="metaocl: gone")
    assert (proc.returncode, proc.stderr.strip()) == (1, "metaocl: gone")


@pytest.mark.parametrize("code, status", [(None, 0), (0, 0), (2, 2), (130, 130)])
def test_exit_code_reads_like_sys_exit(code, status):
    assert exit_code(code) == status
