"""Property tests of the pure-Python schedule parser and resolver."""

import math
import re

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from keras_raptr.src.callbacks.schedule import ResolvedSchedule
from keras_raptr.src.callbacks.schedule import parse_schedule
from keras_raptr.src.callbacks.schedule import stage_starts

SETTINGS = settings(max_examples=150, deadline=None)

keep_lists = st.lists(st.integers(1, 64), min_size=1, max_size=8)
spaces = st.sampled_from(["", " ", "  ", "\t"])


@SETTINGS
@given(keep_lists.map(sorted), st.data())
def test_valid_strings_round_trip(keep_counts, data):
    parts = []
    for keep in keep_counts:
        zeros = "0" * data.draw(st.integers(0, 2))
        parts.append(f"{data.draw(spaces)}{zeros}{keep}{data.draw(spaces)}")
    text = "-".join(parts)
    parsed, lengths = parse_schedule(text)
    assert parsed == keep_counts
    assert lengths is None
    # Joining the parsed counts gives back a string that parses the same.
    canonical = "-".join(str(k) for k in parsed)
    assert parse_schedule(canonical) == (parsed, None)


@SETTINGS
@given(st.text(max_size=20))
def test_arbitrary_text_parses_or_raises_value_error(text):
    try:
        parsed, lengths = parse_schedule(text, allow_decreasing=True)
    except ValueError as error:
        assert "`schedule`" in str(error)
        return
    # Accepted: exactly positive integers joined by '-', with spaces.
    stripped = re.sub(r"\s", "", text, flags=re.ASCII)
    assert parsed == [int(part) for part in stripped.split("-")]
    assert all(k >= 1 for k in parsed)
    assert lengths is None


@SETTINGS
@given(
    st.lists(st.integers(1, 64), min_size=1, max_size=6),
    st.sampled_from(["{}", "{}-", "-{}", "{}--{}", "{}-x", "{}.5", "{},{}"]),
)
def test_garbage_around_valid_counts_is_rejected(keep_counts, template):
    body = "-".join(str(k) for k in keep_counts)
    text = template.format(body, body)
    if template == "{}":
        text += "-0"  # zero keep count
    with pytest.raises(ValueError, match="`schedule`"):
        parse_schedule(text, allow_decreasing=True)


@SETTINGS
@given(keep_lists.filter(lambda ks: ks != sorted(ks)))
def test_decreasing_rejected_unless_allowed(keep_counts):
    text = "-".join(str(k) for k in keep_counts)
    with pytest.raises(ValueError, match="allow_decreasing"):
        parse_schedule(text)
    assert parse_schedule(text, allow_decreasing=True)[0] == keep_counts


@SETTINGS
@given(
    st.lists(
        st.tuples(st.integers(1, 64), st.integers(1, 1000)),
        min_size=1,
        max_size=6,
    ),
    st.booleans(),
)
def test_explicit_steps_round_trip_and_starts(pairs, open_end):
    pairs = sorted(pairs)
    if open_end:
        pairs[-1] = (pairs[-1][0], None)
    keep_counts, lengths = parse_schedule(pairs)
    assert list(zip(keep_counts, lengths)) == pairs
    starts = stage_starts(keep_counts, lengths, "steps", None)
    assert starts[0] == 0
    for (_, length), start, following in zip(pairs, starts, starts[1:]):
        assert following - start == length
    resolved = ResolvedSchedule(keep_counts, starts)
    for stage, start in enumerate(starts):
        assert resolved.stage_at(start) == stage
        if start > 0:
            assert resolved.stage_at(start - 1) == stage - 1


@SETTINGS
@given(keep_lists.map(sorted), st.integers(1, 10_000))
def test_equal_stages_cover_training(keep_counts, total):
    n = len(keep_counts)
    if total < n:
        with pytest.raises(ValueError, match="`total_steps`"):
            stage_starts(keep_counts, None, "steps", total)
        return
    starts = stage_starts(keep_counts, None, "steps", total)
    assert starts[0] == 0
    assert all(b > a for a, b in zip(starts, starts[1:]))
    assert starts[-1] < total
    lengths = [b - a for a, b in zip(starts, starts[1:] + [total])]
    assert max(lengths) - min(lengths) <= 1  # as equal as possible
    resolved = ResolvedSchedule(keep_counts, starts)
    brute = [keep_counts[resolved.stage_at(s)] for s in range(min(total, 300))]
    assert math.isclose(
        resolved.mean_keep_count(len(brute)), sum(brute) / len(brute)
    )


@SETTINGS
@given(
    st.lists(st.integers(1, 100), min_size=1, max_size=5),
    st.integers(1, 5000),
)
def test_fraction_starts(weights, total):
    fractions = [w / sum(weights) for w in weights]
    pairs = [(i + 1, f) for i, f in enumerate(fractions)]
    keep_counts, lengths = parse_schedule(pairs, unit="fraction")
    try:
        starts = stage_starts(keep_counts, lengths, "fraction", total)
    except ValueError as error:
        assert "`total_steps`" in str(error) or "two stages start" in str(
            error
        )
        return
    assert starts[0] == 0
    assert all(b > a for a, b in zip(starts, starts[1:]))
    cumulative = 0.0
    for fraction, start in zip(fractions, starts):
        assert abs(start - cumulative * total) <= 0.5 + 1e-6
        cumulative += fraction


@pytest.mark.parametrize(
    "pairs", [[(2, 0.5), (4, 0.6)], [(2, 0.3), (4, 0.3)], [(2, 1.5)]]
)
def test_fractions_not_adding_to_one(pairs):
    with pytest.raises(ValueError, match="`schedule`"):
        parse_schedule(pairs, unit="fraction")


def test_bool_is_not_an_int():
    with pytest.raises(ValueError, match="`schedule`"):
        parse_schedule([(True, 3), (6, None)])
    with pytest.raises(ValueError, match="`schedule`"):
        parse_schedule([(2, True), (6, None)])


@pytest.mark.parametrize(
    "text", ["6\x1f-8", "0\x1f", "\u0663-\u0664", "6-8\u2003"]
)
def test_non_ascii_digits_and_spaces_rejected_clearly(text):
    # Found by hypothesis: '\x1f' is whitespace to `re` but not to `int`,
    # which raised "invalid literal for int()" instead of naming `schedule`.
    with pytest.raises(ValueError, match="`schedule`.*'6-8-10-12'"):
        parse_schedule(text)
