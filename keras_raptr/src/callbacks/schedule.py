"""Parsing and resolving RaPTr stage schedules (pure Python, no Keras)."""

import bisect
import math
import numbers
import re

from keras_raptr.src.utils import is_int

UNITS = ("steps", "epochs", "fraction")
_SCHEDULE_STRING = re.compile(r"^\s*\d+(\s*-\s*\d+)*\s*$", re.ASCII)


def parse_schedule(schedule, unit="steps", allow_decreasing=False):
    """Returns `(keep_counts, lengths)`; `lengths` is `None` for equal stages.

    `schedule` is a string such as `"6-8-10-12"` (equal stages) or a list of
    `(keep_count, length)` pairs, `length` in `unit`; the last length may be
    `None` (the last stage runs until training ends).
    """
    if unit not in UNITS:
        raise ValueError(
            f"Invalid value for `unit`. Expected one of {UNITS}. "
            f"Received: unit={unit!r}"
        )
    if isinstance(schedule, str):
        if not _SCHEDULE_STRING.match(schedule):
            raise ValueError(
                "Invalid value for `schedule`. Expected keep counts joined by "
                "'-', e.g. '6-8-10-12', or a list of (keep_count, length) "
                f"pairs. Received: schedule={schedule!r}"
            )
        keep_counts = [int(part) for part in schedule.split("-")]
        lengths = None
    else:
        try:
            pairs = [tuple(pair) for pair in schedule]
        except TypeError:
            pairs = None
        if not pairs or any(len(pair) != 2 for pair in pairs):
            raise ValueError(
                "Invalid value for `schedule`. Expected a string such as "
                "'6-8-10-12' or a non-empty list of (keep_count, length) "
                f"pairs. Received: schedule={schedule!r}"
            )
        keep_counts = [pair[0] for pair in pairs]
        lengths = [pair[1] for pair in pairs]
        _validate_lengths(lengths, unit)
    for keep_count in keep_counts:
        if not is_int(keep_count) or keep_count < 1:
            raise ValueError(
                "Invalid value for `schedule`. Every keep count must be an "
                f"int >= 1. Received: schedule={schedule!r}"
            )
    if not allow_decreasing:
        for previous, current in zip(keep_counts, keep_counts[1:]):
            if current < previous:
                raise ValueError(
                    "Invalid value for `schedule`. Keep counts must not "
                    f"decrease from one stage to the next (got {previous} "
                    f"then {current}); pass `allow_decreasing=True` to allow "
                    f"it on purpose. Received: schedule={schedule!r}"
                )
    return [int(k) for k in keep_counts], lengths


def _validate_lengths(lengths, unit):
    for index, length in enumerate(lengths):
        last = index == len(lengths) - 1
        if length is None and last:
            continue
        if unit == "fraction":
            ok = (
                isinstance(length, numbers.Real)
                and not isinstance(length, bool)
                and 0 < length <= 1
            )
            expected = "a float in (0, 1]"
        else:
            ok = is_int(length) and length >= 1
            expected = f"an int >= 1 ({unit})"
        if not ok:
            raise ValueError(
                "Invalid value for `schedule`. Every stage length must be "
                f"{expected}; only the last may be None (until the end). "
                f"Received: length={length!r} for stage {index}"
            )
    if unit == "fraction":
        total = sum(length for length in lengths if length is not None)
        if total > 1 + 1e-6 or (lengths[-1] is not None and total < 1 - 1e-6):
            raise ValueError(
                "Invalid value for `schedule`. Stage fractions must add up to "
                "1 (or leave the last length None for the rest of training). "
                f"Received: fractions adding up to {total:g}"
            )


def stage_starts(keep_counts, lengths, unit, total):
    """Start of each stage, in steps (or epochs for `unit="epochs"`).

    `total` is the length of training in the same unit (steps for
    `"fraction"`); it may be `None` only for explicit step/epoch lengths.
    """
    num_stages = len(keep_counts)
    if lengths is None or unit == "fraction":
        if total is None:
            raise ValueError(
                "Invalid value for `total_steps`. Equal or fractional stages "
                "need the length of training: pass `total_steps`, or call "
                "`fit` with a known number of steps per epoch."
            )
        if total < num_stages:
            noun = "epochs" if unit == "epochs" else "steps"
            raise ValueError(
                f"Invalid value for `total_steps`. {num_stages} stages need "
                f"at least {num_stages} {noun} of training. "
                f"Received: total={total}"
            )
    if lengths is None:
        return [i * total // num_stages for i in range(num_stages)]
    starts, position = [], 0.0
    for length in lengths:
        starts.append(position)
        position += 0.0 if length is None else length
    if unit == "fraction":
        starts = [int(round(start * total)) for start in starts]
        for previous, current in zip(starts, starts[1:]):
            if current <= previous:
                raise ValueError(
                    "Invalid value for `schedule`. With "
                    f"total_steps={total}, two stages start at step "
                    f"{current}; make the fractions larger or train longer."
                )
    return [int(start) for start in starts]


class ResolvedSchedule:
    """Keep count at any step (or epoch) of training."""

    def __init__(self, keep_counts, starts):
        self.keep_counts = list(keep_counts)
        self.starts = list(starts)

    def __len__(self):
        return len(self.keep_counts)

    def stage_at(self, position):
        return max(bisect.bisect_right(self.starts, position) - 1, 0)

    def bounds(self, stage):
        end = self.starts[stage + 1] if stage + 1 < len(self) else math.inf
        return self.starts[stage], end

    def mean_keep_count(self, steps):
        """Average keep count over the first `steps` steps of training."""
        if steps <= 0:
            return float(self.keep_counts[self.stage_at(0)])
        total = 0
        for stage, keep_count in enumerate(self.keep_counts):
            start, end = self.bounds(stage)
            total += keep_count * max(0, min(end, steps) - start)
        return total / steps
