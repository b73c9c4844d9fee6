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


def test_a_failed_configuration_is_reported_and_the_others_kept(
    tmp_path, monkeypatch, capsys
):
    # The GPU grid runs once, under a time limit: one backend failing (or
    # running out of memory) must not take the finished rows with it.
    step_time = load_script("benchmarks", "step_time.py")

    def run_config(job):
        if job["kind"] == "dynamic":
            raise RuntimeError(f"benchmark worker failed for {job}:\nOOM")
        ms = {8: 100.0, 4: 50.0}[job["keep"]] * (
            1.02 if job["kind"] == "raptr" else 1.0
        )
        return dict(job, ms=ms, ms_min=ms, cpu_ms=ms, peak_mb=10.0,
                    retraces=0, compile_s=1.0, device="cpu")

    monkeypatch.setattr(step_time, "_run_config", run_config)
    path = tmp_path / "records.json"
    monkeypatch.setattr(sys, "argv", [
        "step_time.py", "--backends", "jax", "--keeps", "4,8",
        "--json", str(path),
    ])
    with pytest.raises(SystemExit) as exit_info:
        step_time.main()
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert "FAILED benchmark worker failed" in out
    assert "| jax | jit | raptr | 4 of 8 | 51.0 | 1.020 | 0.510 |" in out
    import json

    records = json.loads(path.read_text())
    assert sorted((r["kind"], r["keep"]) for r in records) == [
        ("plain", 4), ("plain", 8), ("raptr", 4), ("raptr", 8)
    ]


def test_gpu_scripts_parse():
    # They run only on a lent GPU machine, once, under a time limit: a
    # syntax error found there costs the whole session's device time.
    import pathlib
    import subprocess

    root = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"
    for script in ("run.sh", "fetch_wheels.sh"):
        result = subprocess.run(
            ["bash", "-n", str(root / script)], capture_output=True, text=True
        )
        assert result.returncode == 0, (script, result.stderr)
