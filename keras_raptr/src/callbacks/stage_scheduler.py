import logging
import time
import warnings

import keras
from keras import ops

from keras_raptr.src import backend
from keras_raptr.src.api_export import raptr_export
from keras_raptr.src.callbacks.schedule import ResolvedSchedule
from keras_raptr.src.callbacks.schedule import parse_schedule
from keras_raptr.src.callbacks.schedule import stage_starts
from keras_raptr.src.layers.random_part_stack import RandomPartStack
from keras_raptr.src.layers.random_part_stack import tracing_keep_count
from keras_raptr.src.layers.random_part_stack import validate_keep_count
from keras_raptr.src.utils import is_int

logger = logging.getLogger(__name__)


def find_stacks(model, layer_name=None):
    """Every `RandomPartStack` in `model` (or the one named `layer_name`)."""
    stacks = [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, RandomPartStack)
    ]
    if layer_name is not None:
        stacks = [stack for stack in stacks if stack.name == layer_name]
        if not stacks:
            raise ValueError(
                "Invalid value for `layer_name`. The model has no "
                f"RandomPartStack named {layer_name!r}. Received: "
                f"layer_name={layer_name!r}"
            )
    if not stacks:
        raise ValueError(
            "StageScheduler needs a model that contains a "
            "`keras_raptr.RandomPartStack`; this model has none."
        )
    return stacks


class _TimedFirstCall:
    """A stage's newly built training function; times its first call, which
    traces and compiles the step (on TensorFlow it also runs it)."""

    def __init__(self, function):
        self.function = function
        self.seconds = None

    def __call__(self, *args, **kwargs):
        if self.seconds is not None:
            return self.function(*args, **kwargs)
        start = time.perf_counter()
        outputs = self.function(*args, **kwargs)
        self.seconds = time.perf_counter() - start
        return outputs


@raptr_export("keras_raptr.callbacks.StageScheduler")
class StageScheduler(keras.callbacks.Callback):
    """Moves the model's `RandomPartStack` layers through RaPTr stages.

    At each stage boundary the callback sets `keep_count` of every
    `RandomPartStack` in the model (or of the one named `layer_name`); the
    new value is used from the very next training step, on every backend.
    The stage follows from the global training step (the stack's `step`
    counter, saved with the weights), not from the steps seen since this
    `fit` began, so a run resumed with
    `BackupAndRestore`, `ModelCheckpoint` + `initial_epoch` or `load_model`
    continues in the right stage. Steps where the stage does not change cost
    one integer comparison. With `steps_per_execution=N` a boundary inside an
    execution of N steps takes effect at the start of the next execution.

    At the end of every epoch it writes `keep_count` and
    `block_flops_saved` (the fraction of block FLOPs saved so far by the
    schedule, against running every block at every step) into `logs`, so
    `History`, `CSVLogger` and `TensorBoard` record them; place it before
    those callbacks in the `callbacks` list. Where `fit` compiles the
    training step (JAX, TensorFlow, `torch.compile`), the time each stage's
    new step took to trace and compile is printed (with `verbose=1`) and
    kept in `compile_seconds`.

    Args:
        schedule: the stages. A string of keep counts joined by `-`, e.g.
            `"6-8-10-12"`: equal stages over `total_steps` (or, with
            `unit="epochs"`, over the epochs of `fit`). Or a list of
            `(keep_count, length)` pairs, `length` in `unit`; the last length
            may be `None` (until training ends).
        total_steps: int. Steps in the whole training run, for string
            schedules and `unit="fraction"`. Defaults to `None`: `epochs *
            steps_per_epoch` of the `fit` call (which counts from epoch 0,
            also when resuming with `initial_epoch`).
        unit: `"steps"`, `"epochs"` (stages switch at epoch starts) or
            `"fraction"` (lengths are fractions of training). Defaults to
            `"steps"`.
        layer_name: str. Only drive the `RandomPartStack` with this name.
            Defaults to `None`: every one in the model.
        allow_decreasing: bool. Allow a keep count lower than the stage
            before. Defaults to `False`.
        allow_partial_final: bool. Allow a last stage that does not run all
            blocks. Defaults to `False`: RaPTr ends on the full model.
        compile_ahead: bool. Prepare the next stage's training step on a
            background thread while the current stage trains, so that a
            stage starts without waiting for it: on JAX the whole compile,
            on TensorFlow the Python trace (the graph is still built at the
            stage's first step). It hides the work only behind a stage that
            lasts longer than it: on a GPU, where a BERT-Base step compiled
            in about 30 s and ran in 20-34 ms (H200), a stage needs well over
            a thousand steps. Defaults to `True`. Torch has nothing to
            prepare.
        verbose: int. `1` logs (at INFO level, and prints) each stage change
            and each stage's compile time. Defaults to `1`.

    Example:

    ```python
    model.fit(
        dataset,
        epochs=4,
        callbacks=[keras_raptr.StageScheduler("6-8-10-12")],
    )
    ```
    """

    def __init__(
        self,
        schedule,
        total_steps=None,
        unit="steps",
        layer_name=None,
        allow_decreasing=False,
        allow_partial_final=False,
        compile_ahead=True,
        verbose=1,
    ):
        super().__init__()
        self.keep_counts, self.lengths = parse_schedule(
            schedule, unit=unit, allow_decreasing=allow_decreasing
        )
        if total_steps is not None and (
            not is_int(total_steps) or total_steps < 1
        ):
            raise ValueError(
                "Invalid value for `total_steps`. Expected an int >= 1 or "
                f"None. Received: total_steps={total_steps!r}"
            )
        if total_steps is not None and unit == "epochs":
            raise ValueError(
                "Invalid value for `total_steps`. With unit='epochs' the "
                "stages are counted in epochs; leave `total_steps` None. "
                f"Received: total_steps={total_steps!r}"
            )
        if not isinstance(compile_ahead, bool):
            raise ValueError(
                "Invalid value for `compile_ahead`. Expected a bool. "
                f"Received: compile_ahead={compile_ahead!r}"
            )
        self.schedule = schedule
        self.total_steps = None if total_steps is None else int(total_steps)
        self.unit = unit
        self.layer_name = layer_name
        self.allow_decreasing = allow_decreasing
        self.allow_partial_final = allow_partial_final
        self.compile_ahead = compile_ahead
        self.verbose = verbose
        if total_steps is not None:
            # Check what can be checked before `fit`.
            stage_starts(self.keep_counts, self.lengths, unit, total_steps)
        self._stacks = None
        self._resolved = None
        self._stage = None
        self._stage_begin = 0
        self._stage_end = -1
        self._epoch_start_step = 0
        self._step = 0
        self._calls_checked = False
        # The traced step of the current stage (JAX, TensorFlow), and the
        # next stage's step while it waits for the current one's arguments.
        self._current_step = None
        self._next_step = None
        # A stage whose new step has not been timed yet: (stage, function,
        # step); and the times measured, by stage number.
        self._unreported = None
        self._compile_seconds = {}
        # Evaluation and prediction functions that ran to their end (so are
        # traced), and the one running for the first time, if any.
        self._traced = []
        self._tracing = None

    # -- set-up ---------------------------------------------------------

    def on_train_begin(self, logs=None):
        self._stacks = find_stacks(self._model, self.layer_name)
        num_blocks = {stack.num_blocks for stack in self._stacks}
        if len(num_blocks) > 1:
            raise ValueError(
                "The model's RandomPartStack layers hold different numbers "
                f"of blocks ({sorted(num_blocks)}); one schedule cannot fit "
                "them all. Use one StageScheduler per stack with "
                "`layer_name`."
            )
        num_blocks = num_blocks.pop()
        num_fixed = max(len(stack.fixed) for stack in self._stacks)
        for keep_count in self.keep_counts:
            validate_keep_count(
                keep_count, num_blocks, num_fixed, name="schedule"
            )
        if self.keep_counts[-1] != num_blocks and not self.allow_partial_final:
            raise ValueError(
                "Invalid value for `schedule`. The last stage must run all "
                f"{num_blocks} blocks (RaPTr ends on the full model); pass "
                "`allow_partial_final=True` to end on a subnetwork on purpose."
                f" Received: schedule={self.schedule!r}"
            )
        self._num_blocks = num_blocks
        self._resolved = ResolvedSchedule(
            self.keep_counts,
            stage_starts(
                self.keep_counts, self.lengths, self.unit, self._total()
            ),
        )
        self._stage = None
        self._stage_end = -1
        self._calls_checked = False

    def _total(self):
        if self.unit == "epochs":
            return self.params.get("epochs")
        if self.total_steps is not None:
            return self.total_steps
        steps, epochs = self.params.get("steps"), self.params.get("epochs")
        if steps is None or epochs is None:
            return None
        return steps * epochs

    # -- per epoch / per step -------------------------------------------

    def on_epoch_begin(self, epoch, logs=None):
        # At an epoch start the variables hold the current state on every
        # backend (JAX syncs at epoch end), so this read forces no sync.
        self._epoch_start_step = self._global_step()
        self._step = self._epoch_start_step
        if self.unit == "epochs":
            self._enter(self._resolved.stage_at(epoch), epoch)

    def _train_function_for(self, model, keep_count):
        """The training function traced for `keep_count` (and its traced
        step on JAX and TensorFlow, else `None`), built once per model.

        Built functions are kept on the model, so calling `fit` again (e.g.
        once per epoch) reuses them instead of compiling again, until the
        model is compiled again (a new loss, metrics or optimizer, or weights
        frozen or unfrozen since: the traced steps would be stale). Building
        does not trace; the step is traced at its first call, or ahead of
        it (`compile_ahead`), bound to `keep_count` either way.
        """
        key = (
            keep_count,
            id(model.optimizer),
            model.steps_per_execution,
            model.jit_compile,
        )
        cache = model.__dict__.setdefault("_raptr_train_functions", {})
        # `compile` makes a new config object every time it runs.
        compiled = getattr(model, "_compile_config", None)
        stale = (
            "_raptr_compiled_with" not in model.__dict__
            or model.__dict__["_raptr_compiled_with"] is not compiled
        )
        if stale:
            cache.clear()
            model.__dict__["_raptr_compiled_with"] = compiled
        if key not in cache:
            current = model.train_function
            stacks = list(self._stacks)
            step = backend.retrace_train_function(
                model, bind=lambda: tracing_keep_count(stacks, keep_count)
            )
            function = model.train_function
            if backend.compiles_train_step(model):
                function = _TimedFirstCall(function)
            cache[key] = (function, step)
            model.train_function = current
        return cache[key]

    def _traced_for(self, keep_count):
        """The keep count the step of a stage with `keep_count` is traced
        for: `keep_count`, or `None` where every stack serves it from one
        step that reads the keep count at run time (shared by every such
        stage; see `RandomPartStack._trace_key`)."""
        keys = {stack._trace_key(keep_count) for stack in self._stacks}
        return None if keys == {None} else keep_count

    def _use_train_function_for(self, model, keep_count, stage):
        """Points `model.train_function` at a step traced for `keep_count`."""
        self._current_step = None
        self._unreported = None
        if model.train_function is None:
            return  # fit has not built its step yet; it will trace anew
        function, step = self._train_function_for(model, keep_count)
        self._wait_for_compile(step, keep_count)
        model.train_function = function
        self._current_step = step
        if isinstance(function, _TimedFirstCall) and function.seconds is None:
            self._unreported = (stage, function, step)

    def _report_compile(self):
        """Records (and with `verbose`, prints) the compile time of the
        current stage's new step, once its first call has returned."""
        stage, function, step = self._unreported
        if function.seconds is None:
            return
        self._unreported = None
        ahead = getattr(step, "compile_seconds", None)
        seconds = function.seconds + (ahead or 0.0)
        self._compile_seconds[stage + 1] = seconds
        if self.verbose:
            message = (
                f"StageScheduler: stage {stage + 1}/{len(self._resolved)}: "
                f"training step traced and compiled in {seconds:.2f} s"
            )
            if ahead is not None:
                message += (
                    f" ({ahead:.2f} s of it ahead, on a background thread)"
                )
            logger.info(message)
            print(message, flush=True)

    def _prepare_next_stage(self, model, stage):
        """Builds the next stage's step, to be prepared ahead."""
        self._next_step = None
        if (
            not self.compile_ahead
            or self._current_step is None
            or stage + 1 >= len(self._resolved)
        ):
            return
        keep_count = self._traced_for(self._resolved.keep_counts[stage + 1])
        # Variables hold the current state here (the stage change synced
        # them), which building a step under `keras.distribution` needs.
        _, step = self._train_function_for(model, keep_count)
        if step is not None and not step.compiled_or_compiling:
            self._next_step = step

    def _start_compile_ahead(self):
        example_args = self._current_step.example_args
        if example_args is None:
            return  # the stage's first step has not run: its compile first
        self._next_step.compile_in_background(example_args)
        self._next_step = None

    def _wait_for_compile(self, step, keep_count):
        error = None if step is None else step.wait_for_compile()
        if error is not None:
            what = (
                "a run-time keep_count" if keep_count is None
                else f"keep_count={keep_count}"
            )
            warnings.warn(
                f"StageScheduler: compiling the training step for {what} "
                "ahead of its stage failed "
                f"({error!r}); it compiles when the stage starts.",
                stacklevel=2,
            )

    def _wait_for_every_compile(self):
        # Keras traces evaluation and other steps on the training thread;
        # they wait so that no two traces of the model run at once (the
        # background trace holds Python state of the model's layers).
        cache = self._model.__dict__.get("_raptr_train_functions", {})
        for key, (_, step) in cache.items():
            if step is not None:
                self._wait_for_compile(step, key[0])

    def _wait_before_tracing(self, function):
        """Waits for background compiles before `evaluate` or `predict`
        runs `function`, unless it has run to its end before: then it is
        traced already, and waiting would only stall the evaluation (every
        evaluation inside `fit` after the first)."""
        if function is not None and any(function is f for f in self._traced):
            return
        self._wait_for_every_compile()
        self._tracing = function

    def _traced_if_completed(self):
        if self._tracing is not None:
            self._traced.append(self._tracing)
        self._tracing = None

    def on_test_begin(self, logs=None):
        self._wait_before_tracing(self._model.test_function)

    def on_test_end(self, logs=None):
        self._traced_if_completed()

    def on_predict_begin(self, logs=None):
        self._wait_before_tracing(self._model.predict_function)

    def on_predict_end(self, logs=None):
        self._traced_if_completed()

    def on_train_end(self, logs=None):
        if self._unreported is not None:
            self._report_compile()
        self._wait_for_every_compile()
        self._next_step = None
        # Outside this callback's `fit`, nothing retraces the step when
        # `keep_count` changes: go back to reading it at run time.
        for stack in self._stacks or ():
            stack._compiled_keep_count = None
        self._model.train_function = None

    def _global_step(self):
        # The stack's own step counter: it is saved with the weights, drives
        # the subset sampler, and (unlike `optimizer.iterations`) also counts
        # the steps a LossScaleOptimizer skips after an overflow.
        return int(ops.convert_to_numpy(self._stacks[0].step))

    def _check_one_call_per_step(self, steps, at_most=False):
        """Raises if a stack ran more (or less) than once per training step.

        Its `step` counter counts training calls; it draws the subsets and
        places the stage boundaries, so a stack called twice per step (e.g.
        one encoder applied to two inputs) would enter every stage early,
        or skip one. Checked once per `fit`, after its first steps;
        `at_most`: `steps` is only an upper bound on the steps run.
        """
        self._calls_checked = True
        self.model  # On JAX, writes in-flight state to variables.
        calls = self._global_step() - self._epoch_start_step
        if calls > steps or (calls != steps and not at_most):
            stack = self._stacks[0]
            within = "at most " if at_most else ""
            raise ValueError(
                f"RandomPartStack '{stack.name}' ran {calls} times in the "
                f"first {within}{steps} training step(s) of this `fit`; "
                "StageScheduler needs it to run exactly once per step. Its "
                "`step` counter counts training calls, and it places the "
                "stage boundaries and draws the subsets, so the stages would "
                "start early. Call each stack once per step (e.g. "
                "concatenate the inputs along the batch axis and split the "
                "output)."
            )

    def on_train_batch_begin(self, batch, logs=None):
        if not self._calls_checked and batch > 0:
            self._check_one_call_per_step(batch)
        if self._unreported is not None:
            self._report_compile()
        self._step = self._epoch_start_step + batch
        if self._next_step is not None:
            self._start_compile_ahead()
        if self.unit == "epochs":
            return
        if self._stage_begin <= self._step < self._stage_end:
            return  # the cheap path taken on almost every step
        self._enter(self._resolved.stage_at(self._step), self._step)

    def _enter(self, stage, position):
        self._stage_begin, self._stage_end = self._resolved.bounds(stage)
        if stage == self._stage:
            return
        keep_count = self._resolved.keep_counts[stage]
        model = self.model  # On JAX, writes in-flight state to variables.
        # The step is traced for the stage's keep count (exactly k blocks of
        # straight-line work): at most one compile per stage. Where that
        # path does not apply, the stages below the full model share one
        # step that reads the keep count at run time (`traced` is None).
        traced = self._traced_for(keep_count)
        for stack in self._stacks:
            stack.set_keep_count(keep_count)
            stack._compiled_keep_count = traced
        self._use_train_function_for(model, traced, stage)
        self._prepare_next_stage(model, stage)
        if self.verbose:
            where = "epoch" if self.unit == "epochs" else "step"
            message = (
                f"StageScheduler: stage {stage + 1}/{len(self._resolved)} "
                f"at {where} {position}: keep_count={keep_count} of "
                f"{self._num_blocks} blocks"
            )
            logger.info(message)
            print(message, flush=True)
        self._stage = stage

    def on_epoch_end(self, epoch, logs=None):
        # No `on_train_batch_end` here: defining one would make Keras run
        # every callback's batch hooks synchronously on JAX.
        if self._unreported is not None:
            self._report_compile()
        if not self._calls_checked and self._stage is not None:
            # No second batch began: the epoch ran one step, or one
            # execution of up to `steps_per_execution` steps (fewer if the
            # data ran out), so only an upper bound is known.
            most = self._model.steps_per_execution or 1
            if self.params.get("steps"):
                most = min(most, self.params["steps"])
            self._check_one_call_per_step(most, at_most=True)
        if logs is None or self._stage is None:
            return
        logs["keep_count"] = self._resolved.keep_counts[self._stage]
        if self.unit == "epochs":
            mean = self._resolved.mean_keep_count(epoch + 1)
        else:
            # Synced at epoch end on every backend: an exact step count.
            mean = self._resolved.mean_keep_count(self._global_step())
        logs["block_flops_saved"] = 1.0 - mean / self._num_blocks

    # -- introspection --------------------------------------------------

    @property
    def compile_seconds(self):
        """Seconds each stage's training step took to trace and compile, by
        stage number (1-based), for the stages this scheduler compiled.

        The time of the step's first call (on TensorFlow that call also
        runs the step; on JAX it only dispatches it), plus that of the
        background work where the step was prepared ahead (`compile_ahead`:
        on JAX the whole compile, on TensorFlow the trace). Stages
        that reuse a step compiled before (an earlier `fit` of the same
        compiled model, or a step shared by several stages) and steps that
        are not compiled (torch eager, `run_eagerly=True`) have no entry.
        """
        return dict(self._compile_seconds)

    @property
    def current_keep_count(self):
        """The keep count of the current stage (`None` before training)."""
        if self._stage is None:
            return None
        return self._resolved.keep_counts[self._stage]

