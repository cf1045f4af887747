"""What the sweep driver prints when Ray reports a node's death: one line, not the raylet's log tail."""

import ray._private.worker as ray_worker

from metaocl.sweep.driver import _one_line_node_deaths


def test_a_dead_node_is_one_line_and_other_messages_pass_through(monkeypatch, capsys):
    passed = []
    monkeypatch.setattr(ray_worker, "print_to_stdstream", lambda data, ignore_prefix: passed.append(data))
    _one_line_node_deaths()
    _one_line_node_deaths()  # idempotent: wrapped once
    died = ("Raylet is terminated. Termination is unexpected. Possible reasons include: (1) SIGKILL by the user. "
            "Last 20 lines of the Raylet logs:\n    [state-dump] a\n    [state-dump] b")
    ray_worker.print_to_stdstream({"lines": [died], "pid": "raylet", "is_err": False}, False)
    other = {"lines": ["a one-line warning"], "pid": "raylet", "is_err": False}
    ray_worker.print_to_stdstream(other, False)
    assert capsys.readouterr().err.splitlines() == [
        "(raylet) Raylet is terminated. Termination is unexpected. Possible reasons include: (1) SIGKILL by the "
        "user. (more: the node's raylet.out)"]
    assert passed == [other]
