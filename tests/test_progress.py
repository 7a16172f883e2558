"""The bar across backends of ``d2lres compare``: a training process's steps reach it through a
pipe, and after the warm-up steps it says how long the whole job should take."""
import os
import subprocess
import sys

from d2lres.loop import progress

CHILD = ("import time; from d2lres.loop.progress import step_reporter; tick = step_reporter()\n"
         "for _ in range({n}): time.sleep(0.01); tick()")


def test_steps_of_each_backend_advance_one_bar_and_an_estimate_is_given(capsys):
    per_backend = progress.WARMUP_STEPS + progress.TIMED_STEPS + 2
    steps = {"a": per_backend, "b": per_backend}
    with progress.AcrossBackends(steps, enabled=True) as bar:
        for name in steps:
            env, fds = bar.start(name)
            child = subprocess.Popen([sys.executable, "-c", CHILD.format(n=steps[name])],
                                     env={**os.environ, **env}, pass_fds=fds)
            bar.started()
            assert child.wait(timeout=60) == 0
            bar.finish()
        assert bar.bar.n == 2 * per_backend
        assert bar.estimated
    err = capsys.readouterr()
    assert "expected: about" in err.out + err.err and "measured in a" in err.out + err.err


def test_without_a_pipe_a_process_reports_nothing(monkeypatch):
    monkeypatch.delenv(progress.PROGRESS_FD, raising=False)
    assert progress.step_reporter() is None


def test_expectation_reads_in_minutes_or_seconds():
    assert "about 10 min" in progress.expectation(1.0, 600, "torch", 3)
    assert "about 60 s" in progress.expectation(0.1, 600, "torch", 3)
