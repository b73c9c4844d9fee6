"""Argument checks shared across the package."""

import numbers


def is_int(value):
    """An integer (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name, value, minimum):
    """Raises a ValueError naming `name` unless `value` is an int >= minimum."""
    if not is_int(value) or value < minimum:
        raise ValueError(
            f"Invalid value for `{name}`. Expected an int >= {minimum}. "
            f"Received: {name}={value!r}"
        )
    return int(value)
