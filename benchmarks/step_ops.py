"""What one training step does, RaPTr against plain models: counts, not times.

Where step times are noisy (a 2-core CPU) or a machine is lent for minutes
(a GPU), the work a step issues shows where RaPTr's extra time goes:

- torch (eager): per step, the operators dispatched and the host reads of
  device values (`aten::_local_scalar_dense`); on a GPU also the kernel
  launches, stream synchronisations and `cudaMemcpyAsync` calls, from
  `torch.profiler`. The operators whose counts differ most from the plain
  model's are listed under the table.
- JAX (jit): XLA's cost analysis of the compiled training step (FLOPs and
  bytes accessed), the bytes its kernels move with a sliced operand counted
  as its slices (`hlo_traffic`; XLA charges every operand whole), the
  kernels it holds (top-level instructions of the optimized HLO that launch
  work: fusions, library calls, copies), and its memory from XLA's buffer
  assignment: `temp MB` (activations and every other intermediate) and
  `arguments MB` (the state passed in: weights, optimizer slots, batch;
  the step's outputs reuse these buffers). The device memory a step needs
  is about their sum.

For each k it compares `plain k` (a plain model holding only k blocks, the
limit) with `raptr k` (a RandomPartStack of L blocks, first and last fixed,
its step traced for k as `StageScheduler` traces it), and with `--dynamic`
on JAX `dynamic k` (the same stack, its step reading the keep count at run
time), and with `--stacked` and `--idle` the rows `step_time.py` adds with
those options. The model is `step_time.py`'s (BERT-pretraining shaped).

    KERAS_BACKEND=torch .venv/bin/python benchmarks/step_ops.py \\
        --size tiny --keeps 6,12 --mixed-precision mixed_bfloat16
    KERAS_BACKEND=jax .venv/bin/python benchmarks/step_ops.py \\
        --size gpu --batch 8 --keeps 6 --mixed-precision mixed_bfloat16
"""

import argparse
import collections
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import step_time  # noqa: E402

SIZES = {
    **step_time.SIZES,
    # Host overhead dominates, as in Keras' eager torch step on a GPU.
    "tiny": dict(layers=12, dim=32, heads=2, ff=64, seq=16, batch=8,
                 vocab=500, steps=8, reps=1, warmup=2),
}

# HLO instructions that launch no work of their own.
_FREE = {
    "parameter", "constant", "get-tuple-element", "tuple", "bitcast",
    "after-all", "partition-id", "replica-id", "opt-barrier",
}
_CALLED = re.compile(r"(?:calls|to_apply)=%?([\w.\-]+)")


def _opcode(line):
    """The opcode of an HLO instruction line (`%name = shape opcode(...)`,
    where the shape may be a tuple), or `None` for any other line."""
    line = line.strip()
    if line.startswith("ROOT "):
        line = line[len("ROOT "):]
    name, equals, rest = line.partition("=")
    if not equals or not name.strip() or " " in name.strip():
        return None
    rest = rest.strip()
    if rest.startswith("("):  # a tuple shape: skip to its closing bracket
        depth = 0
        for index, char in enumerate(rest):
            depth += (char == "(") - (char == ")")
            if depth == 0:
                rest = rest[index + 1:]
                break
    else:
        rest = rest.partition(" ")[2]
    match = re.match(r"\s*([\w\-]+)\(", rest)
    return match.group(1) if match else None


def _computations(hlo_text):
    """`{computation name: its instruction lines}` of an HLO module."""
    computations, name = {}, None
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if header and not line.startswith(" "):
            name = header.group(1)
            computations[name] = []
        elif name is not None and line.strip() == "}":
            name = None
        elif name is not None:
            computations[name].append(line)
    return computations


def hlo_kernels(hlo_text):
    """Counts the instructions of an optimized HLO module that launch work:
    those outside fusion bodies and reducers, minus bookkeeping ones.
    Returns `(kernels, conditionals)`."""
    computations = _computations(hlo_text)
    inner = {
        called
        for lines in computations.values()
        for line in lines
        for called in _CALLED.findall(line)
    }
    kernels = conditionals = 0
    for comp, lines in computations.items():
        if comp in inner:
            continue
        for line in lines:
            opcode = _opcode(line)
            if opcode is None or opcode in _FREE:
                continue
            kernels += 1
            conditionals += opcode == "conditional"
    return kernels, conditionals


_DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
    "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8,
}
_ARRAY = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_SLICES = {"slice", "dynamic-slice"}
_CONVERSIONS = {"convert", "bitcast", "bitcast-convert", "copy"}


def _shape_size(text):
    """`(bytes, elements)` of the arrays in an HLO shape."""
    size = elements = 0
    for dtype, dims in _ARRAY.findall(text):
        count = 1
        for dim in filter(None, dims.split(",")):
            count *= int(dim)
        size += count * _DTYPE_BYTES[dtype]
        elements += count
    return size, elements


def _parse(line):
    """An HLO instruction line as `(name, opcode, operands, attributes,
    result bytes, result elements)`, or `None`. A parameter's operand is its
    number."""
    match = _INSTRUCTION.match(line)
    opcode = _opcode(line)
    if not match or opcode is None:
        return None
    name, rest = match.groups()
    head, _, args = rest.partition(f" {opcode}(")
    depth, end = 1, len(args)
    for index, char in enumerate(args):
        depth += (char == "(") - (char == ")")
        if depth == 0:
            end = index
            break
    operands = re.findall(r"%([\w.\-]+)", args[:end])
    if opcode == "parameter":
        operands = [args[:end].strip()]
    return (name, opcode, operands, args[end:], *_shape_size(head))


def _fused_reads(body):
    """`{parameter number: bytes read}` of a fusion body, for parameters it
    only slices (through element-wise conversions) or updates in place."""
    info = {name: (size, elements) for name, *_, size, elements in body}
    users_of = {}
    for name, opcode, operands, *_ in body:
        for operand in operands:
            users_of.setdefault(operand, []).append((name, opcode, operands))

    def share_read(name):
        users = users_of.get(name, [])
        if not users or not info[name][1]:
            return None
        if all(op in _SLICES and ops[0] == name for _, op, ops in users):
            return sum(info[user][1] for user, _, _ in users) / info[name][1]
        if all(op in _CONVERSIONS for _, op, _ in users):
            shares = [share_read(user) for user, _, _ in users]
            return None if None in shares else sum(shares)
        return None

    reads = {}
    for name, opcode, operands, *_ in body:
        if opcode != "parameter" or not operands[0].isdigit():
            continue
        share = share_read(name)
        users = users_of.get(name, [])
        if share is not None:
            reads[int(operands[0])] = round(info[name][0] * share)
        elif users and all(op == "dynamic-update-slice" and ops[0] == name
                           for _, op, ops in users):
            reads[int(operands[0])] = 0  # updated in place
    return reads


def hlo_traffic(hlo_text):
    """Bytes the kernels of an optimized HLO module move: each kernel's
    operands and results, where an operand that a fusion only slices counts
    as its slices, and an in-place `dynamic-update-slice` as its update.

    XLA's `bytes accessed` counts every operand whole: a kernel that slices
    one block out of stacked weights is charged the whole stack.
    """
    computations = {
        name: [parsed for parsed in map(_parse, lines) if parsed]
        for name, lines in _computations(hlo_text).items()
    }
    inner = {
        called
        for body in computations.values()
        for _, _, _, attributes, *_ in body
        for called in _CALLED.findall(attributes)
    }
    total = 0
    for comp, body in computations.items():
        if comp in inner:
            continue
        sizes = {name: size for name, *_, size, _ in body}
        for name, opcode, operands, attributes, size, _ in body:
            if opcode in _FREE:
                continue
            reads = [sizes.get(operand, 0) for operand in operands]
            if opcode in _SLICES:
                reads = [size]
            elif opcode == "dynamic-update-slice":  # in place
                size = reads[1]
                reads = [size]
            elif opcode == "fusion":
                called = _CALLED.findall(attributes)
                fused = computations.get(called[0], []) if called else []
                for index, read in _fused_reads(fused).items():
                    if index < len(reads):
                        reads[index] = read
                if fused and fused[-1][1] == "dynamic-update-slice":
                    update = fused[-1][2][1]
                    size = next(
                        (s for n, *_, s, _ in fused if n == update), size
                    )
            total += size + sum(reads)
    return total


def _build(s, kind, keep):
    kind = "raptr" if kind == "dynamic" else kind
    model, data, labels = step_time.build_model(s, kind, keep)
    n = s["batch"] * s["steps"]
    return model, [d[:n] for d in data], labels[:n]


def _fit(model, data, labels, s, callbacks=()):
    model.fit(data, labels, batch_size=s["batch"], epochs=1, verbose=0,
              shuffle=False, callbacks=list(callbacks))


def measure_jax(s, kind, keep):
    from keras_raptr.src.backend import jax as raptr_jax
    from keras_raptr.src.layers.random_part_stack import RandomPartStack
    from keras_raptr.src.layers.random_part_stack import tracing_keep_count

    model, data, labels = _build(s, kind, keep)
    stacks = [la for la in model.layers if isinstance(la, RandomPartStack)]
    # `raptr`: the step traced for k, as StageScheduler traces it;
    # `dynamic`: the step that reads the keep count at run time.
    bind = None
    if kind == "raptr":
        def bind():
            return tracing_keep_count(stacks, keep)
    step = raptr_jax.retrace_train_function(model, bind=bind)
    # One step records the step's abstract arguments.
    _fit(model, [d[: s["batch"]] for d in data], labels[: s["batch"]], s)
    args, kwargs = step.example_args
    compiled = step.jitted.lower(*args, **kwargs).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    memory = compiled.memory_analysis()
    text = compiled.as_text()
    kernels, conditionals = hlo_kernels(text)
    return dict(gflop=cost["flops"] / 1e9,
                gb=cost["bytes accessed"] / 1e9,
                gb_moved=hlo_traffic(text) / 1e9,
                kernels=kernels, conditionals=conditionals,
                temp_mb=memory.temp_size_in_bytes / 1e6,
                arguments_mb=memory.argument_size_in_bytes / 1e6)


def measure_torch(s, kind, keep):
    import torch

    import keras_raptr

    model, data, labels = _build(s, kind, keep)
    callbacks = []
    if kind == "raptr":
        callbacks = [keras_raptr.StageScheduler(
            [(keep, None)], allow_partial_final=True, verbose=0)]
    warm = s["batch"] * s["warmup"]
    _fit(model, [d[:warm] for d in data], labels[:warm], s, callbacks)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.profiler.profile(activities=activities) as profile:
        _fit(model, data, labels, s, callbacks)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    per_step = {
        event.key: event.count / s["steps"]
        for event in profile.key_averages()
    }

    def total(*names):
        return sum(per_step.get(name, 0.0) for name in names)

    return dict(
        ops=sum(c for k, c in per_step.items() if k.startswith("aten::")),
        host_reads=total("aten::_local_scalar_dense"),
        launches=total("cudaLaunchKernel", "cudaLaunchKernelExC",
                       "cuLaunchKernel", "cuLaunchKernelEx"),
        syncs=total("cudaStreamSynchronize", "cudaDeviceSynchronize",
                    "cudaEventSynchronize"),
        memcpy=total("cudaMemcpyAsync", "cudaMemcpy"),
        profiled_ms=1000 * seconds / s["steps"],
        per_op=per_step,
    )


def measure_all(s, keeps, policy=None, dynamic=False, stacked=False,
                idle=False):
    """`{(kind, k): counts}` for `plain` and `raptr` at each k (and, on JAX
    with `dynamic`, the run-time keep count path at each k < L; with
    `stacked`, the prototype layout of `stacked_layout.py`; with `idle`, a
    plain k-block model holding the other blocks idle), on the current
    backend (jax or torch), under the dtype `policy` if given."""
    import keras

    backend = keras.config.backend()
    measure = measure_jax if backend == "jax" else measure_torch
    s = dict(s, jit_compile=backend == "jax")
    rows = {}
    for keep in keeps:
        kinds = ["plain", "raptr"]
        if dynamic and backend == "jax" and keep < s["layers"]:
            kinds.append("dynamic")
        if stacked:
            kinds.append("stacked")
        if idle and keep < s["layers"]:
            kinds.append("idle")
        for kind in kinds:
            keras.utils.clear_session()  # also resets the dtype policy
            if policy:
                keras.mixed_precision.set_global_policy(policy)
            rows[kind, keep] = measure(s, kind, keep)
            print(f"done: {kind} k={keep}", file=sys.stderr, flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--keeps", default=None,
                        help="comma-separated k values (default L/2 and L)")
    parser.add_argument("--batch", type=int, default=None,
                        help="batch size (default: the size's)")
    parser.add_argument("--steps", type=int, default=None,
                        help="profiled steps (torch; default: the size's)")
    parser.add_argument("--mixed-precision", default=None,
                        help="a Keras dtype policy, e.g. mixed_bfloat16")
    parser.add_argument("--dynamic", action="store_true",
                        help="JAX: also the run-time keep count path (one "
                        "conditional per block) at each k < L")
    parser.add_argument("--stacked", action="store_true",
                        help=step_time.STACKED_HELP)
    parser.add_argument("--idle", action="store_true",
                        help=step_time.IDLE_HELP)
    parser.add_argument("--top", type=int, default=12,
                        help="operators listed per k (torch)")
    args = parser.parse_args(argv)
    for name in ("batch", "steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} takes a positive int; got {value}")
    s = dict(SIZES[args.size])
    if args.batch is not None:
        s["batch"] = args.batch
    if args.steps is not None:
        s["steps"] = args.steps
    num_blocks = s["layers"]
    if args.keeps is None:
        keeps = [num_blocks // 2, num_blocks]
    else:
        try:
            keeps = [int(k) for k in args.keeps.split(",")]
        except ValueError:
            keeps = [-1]
        if not all(2 <= k <= num_blocks for k in keeps):
            parser.error(
                "--keeps takes comma-separated keep counts in "
                f"[2, {num_blocks}] for --size {args.size}; "
                f"got {args.keeps!r}"
            )

    import keras

    backend = keras.config.backend()
    if backend not in ("jax", "torch"):
        parser.error(f"runs on the jax and torch backends, not {backend}")
    if backend == "torch" and args.dynamic:
        parser.error("--dynamic applies to jax only (eager torch always "
                     "reads the keep count at run time)")
    if backend == "jax" and args.steps is not None:
        parser.error("--steps applies to torch only (jax compiles one step)")
    rows = measure_all(s, keeps, args.mixed_precision, args.dynamic,
                       args.stacked, args.idle)
    print(
        f"\n{backend}, L={num_blocks} blocks (TransformerEncoder dim="
        f"{s['dim']}, ff={s['ff']}), seq={s['seq']}, batch={s['batch']}, "
        f"AdamW, {args.mixed_precision or 'float32'}; "
        f"{step_time._device_name(backend)}\n"
    )
    if backend == "jax":
        print("| model | k of L | GFLOP/step | GB accessed/step (XLA) | "
              "GB moved/step (slices as read) | kernels | conditionals | "
              "temp MB | arguments MB |")
        print("|---" * 9 + "|")
        for (kind, keep), r in rows.items():
            print(f"| {kind} | {keep} of {num_blocks} | {r['gflop']:.2f} | "
                  f"{r['gb']:.3f} | {r['gb_moved']:.3f} | {r['kernels']} | "
                  f"{r['conditionals']} | {r['temp_mb']:.1f} | "
                  f"{r['arguments_mb']:.1f} |")
        return
    cuda = any(r["launches"] for r in rows.values())
    head = "| model | k of L | aten ops/step | host reads/step |"
    if cuda:
        head += " kernel launches/step | stream syncs/step | memcpy/step |"
    head += " profiled ms/step |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for (kind, keep), r in rows.items():
        line = (f"| {kind} | {keep} of {num_blocks} | {r['ops']:.0f} | "
                f"{r['host_reads']:.2f} |")
        if cuda:
            line += (f" {r['launches']:.0f} | {r['syncs']:.2f} | "
                     f"{r['memcpy']:.2f} |")
        print(line + f" {r['profiled_ms']:.1f} |")
    for keep in keeps:
        plain = rows["plain", keep]["per_op"]
        raptr = rows["raptr", keep]["per_op"]
        diffs = collections.Counter({
            name: raptr.get(name, 0.0) - plain.get(name, 0.0)
            for name in set(plain) | set(raptr)
        })
        largest = sorted(diffs.items(), key=lambda item: -abs(item[1]))
        largest = [(n, d) for n, d in largest[: args.top] if abs(d) >= 0.5]
        print(f"\nk = {keep}: per-step counts, RaPTr minus plain"
              + ("" if largest else ": none differ by 0.5 or more"))
        for name, diff in largest:
            print(f"  {diff:+8.1f}  {name}")


if __name__ == "__main__":
    main()
