"""The step-time benchmark's argument checks (the GPU grid runs it)."""

import sys

import pytest

from tests.common import load_script


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--keeps", "1,4"], "[2, 8] for --size cpu"),
        (["--keeps", "4,9"], "[2, 8] for --size cpu"),
        (["--keeps", "4,x"], "[2, 8] for --size cpu"),
        (["--size", "gpu", "--keeps", "6,13"], "[2, 12] for --size gpu"),
    ],
)
def test_keep_counts_outside_the_stack_are_refused_before_any_run(
    argv, expected, monkeypatch, capsys
):
    # Before, k < 2 was raised to 2 without a word and k > L failed in a
    # worker process minutes into the grid.
    step_time = load_script("benchmarks", "step_time.py")
    monkeypatch.setattr(
        step_time, "_run_config", lambda job: pytest.fail("a run started")
    )
    monkeypatch.setattr(sys, "argv", ["step_time.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        step_time.main()
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "--keeps takes comma-separated keep counts in" in error
    assert expected in error
