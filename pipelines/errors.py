"""The one kind of error the core raises for bad input, and the one check for whole numbers.

An :class:`InputError` names the input it refuses in ``field`` (the keyword argument or
config field, e.g. ``"num_inference_steps"``) and says in words what is allowed. The core
never names a command-line flag or a UI control: the CLI and the demo map ``field`` to
their own names when they show the message.
"""
from __future__ import annotations

import math
from numbers import Integral, Real


class InputError(ValueError):
    """Input the core refuses; ``field`` names it (or is None when no single input is at fault)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def quote(value: object, limit: int = 60) -> str:
    """A user's value for an error message, cut to ``limit`` characters (a 5,000-character prompt stays readable)."""
    if isinstance(value, str) and len(value) > limit:
        return repr(value[: limit - 3] + "…")
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def whole_number(value: object, field: str, what: str, low: int, high: int) -> int:
    """``value`` as an int in [low, high]; integral floats (20.0 from JSON) are accepted, bools and text are not."""
    message = f"{what} must be a whole number from {low} to {high} (got {quote(value)})."
    if isinstance(value, bool):
        raise InputError(message, field)
    if isinstance(value, Integral):
        number = int(value)
    elif isinstance(value, Real) and math.isfinite(float(value)) and float(value).is_integer():
        number = int(value)
    else:
        raise InputError(message, field)
    if not low <= number <= high:
        raise InputError(message, field)
    return number


def real_number(value: object, field: str, what: str, low: float, high: float) -> float:
    """``value`` as a finite float in [low, high]; bools, text and NaN are refused."""
    message = f"{what} must be a number from {low:g} to {high:g} (got {quote(value)})."
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InputError(message, field)
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise InputError(message, field)
    return number
