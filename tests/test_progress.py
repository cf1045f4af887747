"""What a running sweep shows (metaocl.sweep.progress): lines off a terminal, the bar on one, the ETA,
one line per retried attempt."""

def test_progress_lines_off_a_terminal_are_rate_limited():
    """One line per report at most every `interval` seconds per trial; a trial's last report, its end
    and the final counts always; the headline measure and effects of the kind in each line."""
    import io

    from metaocl.config import kind
    from metaocl.sweep.progress import SweepProgress

    stream = io.StringIO()
    p = SweepProgress("demo", kind("set_inclusion"), {"s0": 3, "s1": 3}, done={"s1": 3}, finished={"s1"},
                      stream=stream, tty=False, interval=3600)
    row = {"acc/qd1consis": 0.9, "acc/qd2incons": 0.6, "acc/d1consis": 0.5, "acc/d2consis": 0.25, "epoch": 1, "stage": 1}
    p.trial_started("s0")
    p.report("s0", 1, row)
    p.report("s0", 2, dict(row, epoch=2))  # within the interval: not printed
    p.report("s0", 3, dict(row, epoch=3, stage=2))  # the last report: printed
    p.trial_ended("s0", ok=True)
    p.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[s0] epoch 1, eval 1/3, stage 1: acc qd1consis 0.900 qd2incons 0.600 d1consis 0.500 "
                               "d2consis 0.250 (OCL +0.300, meta-OCL +0.250) | demo: 1 done, 1 running, 0 failed; "
                               "4/6 evals; ETA ")
    assert lines[1].startswith("[s0] epoch 3, eval 3/3, stage 2: ") and "; 6/6 evals; ETA 0s" in lines[1]
    assert lines[2:] == ["[s0] done | demo: 2 done, 0 running, 0 failed; 6/6 evals",
                         "demo: 2 done, 0 running, 0 failed; 6/6 evals"]


def test_progress_eta_counts_trials_running_at_once():
    """4 trials of 3 evaluations, 2 at a time, 100 s per evaluation: the ETA is evaluations left x
    100 s / 2 (the sweep-wide rate, 1 evaluation in 100 s, said 1100 s at the first report)."""
    import io

    from metaocl.config import kind
    from metaocl.sweep.progress import SweepProgress

    now = [0.0]
    stream = io.StringIO()
    p = SweepProgress("demo", kind("set_inclusion"), {f"s{i}": 3 for i in range(4)}, stream=stream, tty=False,
                      interval=0, clock=lambda: now[0])
    row = {"acc/qd1consis": 0.9, "acc/qd2incons": 0.6, "acc/d1consis": 0.5, "acc/d2consis": 0.25, "epoch": 1}
    assert p.eta() == "?"
    p.trial_started("s0"), p.trial_started("s1")
    now[0] = 100.0
    p.report("s0", 1, row)
    assert p.eta() == "9m10s"  # 11 left x 100 s / 2
    p.report("s1", 1, row)
    assert p.eta() == "8m20s"  # 10 left: 2 + 2 now, 3 + 3 next
    now[0] = 300.0
    p.report("s0", 3, dict(row, epoch=3))  # two at once: 100 s each
    p.trial_ended("s0", ok=True)
    p.trial_started("s2")
    assert p.eta() == "6m40s"  # 8 left (s1 2, s2 3, s3 3) x 100 s / 2
    now[0] = 350.0
    p.report("s2", 1, row)  # a faster evaluation (50 s) pulls the mean of the latest 4 down: 87.5 s
    assert p.eta() == "5m06s"  # 7 left x 87.5 s / 2
    assert "; 5/12 evals; ETA 5m06s" in stream.getvalue().splitlines()[-1]


def test_progress_bar_on_a_terminal_shows_our_eta():
    """The sweep's bar carries the ETA of SweepProgress.eta (tqdm's own, from the sweep-wide rate, is off)."""
    import io

    from metaocl.config import kind
    from metaocl.sweep.progress import SweepProgress

    now = [0.0]
    stream = io.StringIO()
    p = SweepProgress("demo", kind("set_inclusion"), {"s0": 3, "s1": 3}, stream=stream, tty=True, clock=lambda: now[0])
    p.trial_started("s0")
    now[0] = 60.0
    p.report("s0", 1, {"acc/qd1consis": 0.9, "acc/qd2incons": 0.6, "acc/d1consis": 0.5, "acc/d2consis": 0.25, "epoch": 1})
    p.close()
    text = stream.getvalue()
    assert "1/6 [" in text and "ETA 5m00s; 0 done, 1 running, 0 failed" in text  # 5 left x 60 s, one at a time
    assert "<" not in text.split("1/6 [", 1)[1].split("]", 1)[0]  # no tqdm remaining time


def test_a_retried_attempt_is_one_line_with_trial_attempt_and_cause():
    import io

    from metaocl.config import kind
    from metaocl.sweep.progress import SweepProgress

    stream = io.StringIO()
    p = SweepProgress("demo", kind("set_inclusion"), {"s0": 3, "s1": 3}, stream=stream, tty=False, interval=3600)
    p.trial_started("s0")
    p.trial_retried("s0", 1, "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.")
    p.trial_retried("s0", 2, "x" * 400)
    assert stream.getvalue().splitlines() == [
        "[s0] attempt 1 failed, retrying from its last checkpoint: ray.exceptions.ActorDiedError: The actor died "
        "unexpectedly before finishing this task. | demo: 0 done, 0 running, 0 failed; 0/6 evals",
        "[s0] attempt 2 failed, retrying from its last checkpoint: " + "x" * 157 + "... | demo: 0 done, 0 running, "
        "0 failed; 0/6 evals"]


def test_stage1_units_are_counted_apart_from_trials_with_an_eta_over_both():
    """2 stage-1 units (2 evaluations each, 100 s per evaluation) and their 4 trials (1 evaluation
    each, 30 s): one line counts the units apart; the ETA times units and trials apart and is at
    least a unit's rest plus its longest trial."""
    import io

    from metaocl.config import kind
    from metaocl.sweep.progress import SweepProgress

    now = [0.0]
    stream = io.StringIO()
    expected = {"p00_stage1": 2, "p01_stage1": 2, "p00_s0": 1, "p00_s1": 1, "p01_s0": 1, "p01_s1": 1}
    p = SweepProgress("demo", kind("set_inclusion"), expected, stream=stream, tty=False, interval=0,
                      clock=lambda: now[0], units={"p00_stage1": ["p00_s0", "p00_s1"], "p01_stage1": ["p01_s0", "p01_s1"]})
    row = {"acc/qd1consis": 0.9, "acc/qd2incons": 0.6, "acc/d1consis": 0.5, "acc/d2consis": 0.25, "epoch": 1}
    p.trial_started("p00_stage1"), p.trial_started("p01_stage1")
    assert p.counts() == "stage 1: 0/2 units, 2 running · trials: 0/4 done, 0 running, 0 failed; 0/8 evals"
    now[0] = 100.0
    p.report("p00_stage1", 1, row)
    p.report("p01_stage1", 1, row)
    # left: 2 unit evaluations x 100 s + 4 trial evaluations x 100 s (no trial timed yet) over 2 at once = 300 s
    assert p.eta() == "5m00s"
    assert stream.getvalue().splitlines()[-1].endswith(
        "| demo: stage 1: 0/2 units, 2 running · trials: 0/4 done, 0 running, 0 failed; 2/8 evals; ETA 5m00s")
    now[0] = 200.0
    p.report("p00_stage1", 2, dict(row, epoch=2))
    p.trial_ended("p00_stage1", ok=True)
    p.trial_started("p00_s0")
    now[0] = 230.0
    p.report("p00_s0", 1, row)  # a trial's evaluation: 30 s
    p.trial_ended("p00_s0", ok=True)
    assert p.counts() == "stage 1: 1/2 units, 1 running · trials: 1/4 done, 0 running, 0 failed; 4/8 evals"
    # work: p01_stage1 1 x 100 + 3 trials x 30 = 190 s over 2 = 95 s; the chain p01_stage1 then p01_s0: 130 s
    assert p.eta() == "2m10s"
    p.trial_ended("p01_stage1", ok=False, error="boom")
    assert p.counts().startswith("stage 1: 1/2 units, 1 failed · trials: 1/4 done")
    p.close()
    assert stream.getvalue().splitlines()[-1] == ("demo: stage 1: 1/2 units, 1 failed · trials: 1/4 done, 0 running, "
                                                  "0 failed; 4/8 evals")


def test_the_bar_names_units_and_trials_apart():
    import io

    from metaocl.config import kind
    from metaocl.sweep.progress import SweepProgress

    stream = io.StringIO()
    p = SweepProgress("demo", kind("set_inclusion"), {"u": 2, "s0": 1, "s1": 1}, stream=stream, tty=True,
                      units={"u": ["s0", "s1"]})
    p.trial_started("u")
    p.close()
    text = stream.getvalue()
    assert "demo: 2 trials + 1 stage-1 unit" in text
    assert "ETA ?; stage 1: 0/1 units, 1 running · trials: 0/2 done, 0 running, 0 failed" in text
