"""The step-anatomy benchmark (`benchmarks/step_ops.py`), and what it checks:
RaPTr's last stage issues the plain full model's work."""

import keras
import pytest

from tests.common import load_script

BACKEND = keras.config.backend()

HLO = """\
HloModule step

%fused_add (a: f32[4], b: f32[4]) -> f32[4] {
  %a = f32[4]{0} parameter(0)
  %b = f32[4]{0} parameter(1)
  ROOT %add.1 = f32[4]{0} add(f32[4]{0} %a, f32[4]{0} %b)
}

%sum (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %add.2 = f32[] add(f32[] %x, f32[] %y)
}

%skip (t: (f32[4])) -> (f32[4]) {
  ROOT %t = (f32[4]) parameter(0)
}

ENTRY %main (p0: f32[4], p1: f32[4], c: pred[]) -> (f32[4], f32[]) {
  %p0 = f32[4]{0} parameter(0)
  %p1 = f32[4]{0} parameter(1)
  %c = pred[] parameter(2)
  %f = f32[4]{0} fusion(%p0, %p1), kind=kLoop, calls=%fused_add
  %zero = f32[] constant(0)
  %r = f32[] reduce(%f, %zero), dimensions={0}, to_apply=%sum
  %g = (f32[4], s8[8]) custom-call(%f, %p1), custom_call_target="gemm"
  %t = (f32[4]) tuple(%f)
  %k = (f32[4]) conditional(%c, %t, %t), branch_computations={%skip, %skip}
  %copy = f32[4]{0} copy(%f)
  ROOT %tuple = (f32[4]{0}, f32[]) tuple(f32[4]{0} %copy, f32[] %r)
}
"""


def test_hlo_kernels_counts_work_outside_fusion_bodies_and_reducers():
    step_ops = load_script("benchmarks", "step_ops.py")
    # The fusion, reduce, custom call (tuple-shaped, as cuBLAS calls are on
    # a GPU), conditional and copy launch work; parameters, the constant and
    # tuples do not; the fusion body and the reducer run inside kernels. The
    # conditional's branches are counted as computations of their own.
    assert step_ops.hlo_kernels(HLO) == (5, 1)


SLICED = """\
HloModule sliced

%cut (s: f32[10,4], i: s32[]) -> f32[1,4] {
  %s = f32[10,4]{1,0} parameter(0)
  %i = s32[] parameter(1)
  %z = s32[] constant(0)
  ROOT %d = f32[1,4]{1,0} dynamic-slice(%s, %i, %z), dynamic_slice_sizes={1,4}
}

%upd (b: f32[10,4], u: f32[1,4], i: s32[]) -> f32[10,4] {
  %b = f32[10,4]{1,0} parameter(0)
  %u = f32[1,4]{1,0} parameter(1)
  %i = s32[] parameter(2)
  %z = s32[] constant(0)
  ROOT %w = f32[10,4]{1,0} dynamic-update-slice(%b, %u, %i, %z)
}

ENTRY %main (stack: f32[10,4], i: s32[]) -> f32[10,4] {
  %stack = f32[10,4]{1,0} parameter(0)
  %i = s32[] parameter(1)
  %row = f32[1,4]{1,0} fusion(%stack, %i), kind=kLoop, calls=%cut
  %twice = f32[1,4]{1,0} add(f32[1,4]{1,0} %row, f32[1,4]{1,0} %row)
  ROOT %put = f32[10,4]{1,0} fusion(%stack, %twice, %i), kind=kLoop, calls=%upd
}
"""


def test_hlo_traffic_counts_a_sliced_operand_as_its_slice():
    step_ops = load_script("benchmarks", "step_ops.py")
    # The slicing fusion reads one 16-byte row of the 160-byte stack and
    # its 4-byte index, and writes the row (36); the add reads two rows and
    # writes one (48); the in-place update reads the row and the index and
    # writes the row into the stack (36). XLA's own count charges both
    # fusions the whole stack: 568 bytes.
    assert step_ops.hlo_traffic(SLICED) == 36 + 48 + 36
    assert step_ops.hlo_kernels(SLICED) == (3, 0)


@pytest.mark.skipif(BACKEND == "tensorflow", reason="jax and torch only")
def test_options_of_the_other_backend_are_refused(monkeypatch, capsys):
    step_ops = load_script("benchmarks", "step_ops.py")
    monkeypatch.setattr(
        step_ops, "measure_all", lambda *a: pytest.fail("a run started")
    )
    argv, expected = {
        "torch": (["--dynamic"], "--dynamic applies to jax only"),
        "jax": (["--steps", "4"], "--steps applies to torch only"),
    }[BACKEND]
    with pytest.raises(SystemExit) as exit_info:
        step_ops.main(argv)
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err


@pytest.mark.parametrize("argv, expected", [
    (["--keeps", "1,12"], "--keeps takes comma-separated keep counts in"),
    (["--keeps", "6,x"], "--keeps takes comma-separated keep counts in"),
    (["--batch", "0"], "--batch takes a positive int; got 0"),
])
def test_bad_arguments_are_refused_before_any_run(
    argv, expected, monkeypatch, capsys
):
    step_ops = load_script("benchmarks", "step_ops.py")
    monkeypatch.setattr(
        step_ops, "measure_all", lambda *a: pytest.fail("a run started")
    )
    with pytest.raises(SystemExit) as exit_info:
        step_ops.main(argv)
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err


@pytest.mark.skipif(BACKEND == "tensorflow", reason="jax and torch only")
def test_the_last_stage_issues_the_plain_full_models_work():
    # At k = L the stage's step is the plain loop over the blocks: on JAX
    # the same FLOPs, bytes and kernels (give or take the step counter's
    # few); on eager torch the same operators, give or take the subset's
    # the step counter's increment, and no host read of a device value.
    step_ops = load_script("benchmarks", "step_ops.py")
    s = dict(step_ops.SIZES["tiny"], layers=4, steps=4, warmup=1)
    rows = step_ops.measure_all(s, [4])
    plain, raptr = rows["plain", 4], rows["raptr", 4]
    if BACKEND == "jax":
        assert raptr["gflop"] == pytest.approx(plain["gflop"], rel=1e-3)
        assert raptr["gb"] == pytest.approx(plain["gb"], rel=1e-2)
        assert abs(raptr["kernels"] - plain["kernels"]) <= 4
        assert raptr["conditionals"] == plain["conditionals"] == 0
        # The same memory: the step counter is one more int32 argument.
        assert raptr["temp_mb"] == pytest.approx(plain["temp_mb"], rel=1e-2)
        assert raptr["arguments_mb"] == pytest.approx(
            plain["arguments_mb"], rel=1e-2
        )
    else:
        assert raptr["ops"] <= plain["ops"] * 1.01
        assert raptr["host_reads"] == plain["host_reads"]


@pytest.mark.skipif(BACKEND != "torch", reason="eager torch's skip")
def test_torch_skip_cost_prints_its_row(capsys):
    skip_cost = load_script("benchmarks", "torch_skip_cost.py")
    skip_cost.main(["--blocks", "1", "--batch", "1", "--reps", "1"])
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert row.startswith("| 1 | 7.1 M | mixed_bfloat16 | cpu |")


def test_torch_skip_cost_refuses_bad_counts(capsys):
    skip_cost = load_script("benchmarks", "torch_skip_cost.py")
    with pytest.raises(SystemExit):
        skip_cost.main(["--blocks", "0"])
    assert "--blocks takes a positive int; got 0" in capsys.readouterr().err
