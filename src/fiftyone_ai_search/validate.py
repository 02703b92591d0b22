"""Checks of public arguments, shared by the SDK's modules.

Each check raises a ``ValueError`` whose message starts with the argument's
name, and returns the value as a plain Python type: numpy scalars
(``np.int64(5)``, ``np.float32(0.5)``) are accepted wherever a number is,
``bool`` never is (``True`` is an ``int`` to Python, but not a number here).
The checks touch nothing, so a call that fails one has written nothing.
"""

import math
import numbers
import os

import numpy as np

#: the largest ``limit`` of a search or query: far above any dataset's size,
#: and within what every engine takes (Qdrant Edge overflows at 2**64)
MAX_LIMIT = 2**31 - 1

#: the largest ``seed``: scikit-learn's ``random_state`` takes 0 .. 2**32 - 1
MAX_SEED = 2**32 - 1


def integer(value, arg, minimum=None, maximum=None):
    """Checks that ``value`` is an integer within ``[minimum, maximum]``.

    Args:
        value: the value
        arg: the argument's name, for the message
        minimum (None): the smallest value allowed, if any
        maximum (None): the largest value allowed, if any

    Returns:
        the value as an ``int``

    Raises:
        ValueError: if it is not an integer (a ``bool``, a float, ...) or out
            of range
    """
    # numbers.Integral covers int and every numpy integer type
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"{arg} must be an integer{_range(minimum, maximum)}, "
            f"got {value!r}"
        )
    value = int(value)
    _check_range(value, arg, minimum, maximum)
    return value


def number(value, arg, minimum=None, maximum=None):
    """Checks that ``value`` is a finite real number within
    ``[minimum, maximum]``.

    Args:
        value: the value
        arg: the argument's name, for the message
        minimum (None): the smallest value allowed, if any
        maximum (None): the largest value allowed, if any

    Returns:
        the value as a ``float``

    Raises:
        ValueError: if it is not a number (a ``bool``, a string, ...), is NaN
            or infinite, or is out of range
    """
    # numbers.Real covers int, float and numpy's integer and float scalars
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"{arg} must be a number{_range(minimum, maximum)}, got {value!r}"
        )
    try:
        as_float = float(value)
    except OverflowError:  # an int beyond float range
        as_float = math.inf
    if not math.isfinite(as_float):
        raise ValueError(f"{arg} must be a finite number, got {value!r}")
    value = as_float
    _check_range(value, arg, minimum, maximum)
    return value


def limit(value, arg="limit"):
    """Checks a result count: an integer in ``[1, MAX_LIMIT]``.

    Returns:
        the value as an ``int``
    """
    return integer(value, arg, 1, MAX_LIMIT)


def seed(value, arg="seed"):
    """Checks a random seed: an integer in ``[0, MAX_SEED]``.

    Returns:
        the value as an ``int``
    """
    return integer(value, arg, 0, MAX_SEED)


def boolean(value, arg):
    """Checks a flag: ``True`` or ``False`` (numpy's too), so that a string
    such as ``"no"`` is not taken as true.

    Returns:
        the value as a ``bool``
    """
    # numpy.bool_ is not a bool subclass
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{arg} must be True or False, got {value!r}")
    return bool(value)


def field_name(value, arg="patches_field"):
    """Checks an optional field name: None, or a non-empty string.

    Returns:
        the value
    """
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"{arg} must be a field name, got {value!r}")
    return value


def names(value, arg):
    """Checks an optional list of names: None, or a list (tuple, set) of
    non-empty strings; one string alone is refused (it would be taken as
    its letters).

    Returns:
        the value as a list, or None
    """
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(
            value, (list, tuple, set, frozenset)):
        raise ValueError(f"{arg} must be a list of names, got {value!r}")
    bad = [v for v in value if not isinstance(v, str) or not v]
    if bad:
        raise ValueError(f"{arg}: not names: {bad[:5]}")
    return list(value)


def progress(value, arg="progress"):
    """Checks a progress argument: a flag, or a callable
    ``progress(done, total)``.

    Returns:
        the value (a flag as a ``bool``)
    """
    if callable(value):
        return value
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ValueError(f"{arg} must be True, False or a callable "
                     f"progress(done, total), got {value!r}")


def optional_number(value, arg, minimum=None, maximum=None):
    """Like :func:`number`, None allowed (and returned)."""
    if value is None:
        return None
    return number(value, arg, minimum=minimum, maximum=maximum)


def score_range(min_score, max_score):
    """Checks a ``min_score`` / ``max_score`` pair of cosine scores: each
    None or within [-1, 1], and ``min_score <= max_score``.

    Returns:
        ``(min_score, max_score)`` as floats (or None)
    """
    lo = optional_number(min_score, "min_score", -1.0, 1.0)
    hi = optional_number(max_score, "max_score", -1.0, 1.0)
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(
            f"min_score must be <= max_score, got min_score={lo}, "
            f"max_score={hi}"
        )
    return lo, hi


def choice(value, arg, choices):
    """Checks that ``value`` is one of ``choices`` (strings).

    Returns:
        the value
    """
    # str only: ``in`` would compare anything, and a numpy array raises
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{arg} must be one of {tuple(choices)}, got {value!r}")
    return value


def model_name(value, arg="model"):
    """Checks an optional open_clip model name (None: the default)."""
    if value is not None and (not isinstance(value, str)
                              or not value.strip()):
        raise ValueError(f"{arg} must be an open_clip model name (or "
                         f"'local-dir:/path'), got {value!r}")
    return value


def pretrained(value, arg="pretrained"):
    """Checks optional pretrained weights: a tag or the path of a weights
    file (None: the model's default, or random weights)."""
    if value is not None and (
            not isinstance(value, (str, os.PathLike))
            or not os.fspath(value).strip()):
        raise ValueError(f"{arg} must be a tag or the path of a local "
                         f"weights file, got {value!r}")
    return value


def collection_name(value, arg="name"):
    """Checks a collection name: a string with something besides spaces.

    Returns:
        the name, unchanged (FiftyOne keeps names as given)
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{arg} must be a non-empty string, got {value!r}")
    return value


def image(value, arg="image"):
    """Checks an image to search by: a file path (``str`` or path-like) or a
    ``PIL.Image`` with at least one pixel.

    Returns:
        the path as a ``str``, or the image
    """
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, bytes):
        value = os.fsdecode(value)
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{arg} is an empty path")
        return value
    if hasattr(value, "convert") and hasattr(value, "size"):
        width, height = value.size
        if width < 1 or height < 1:
            # the model's resize divides by a side: refuse it here, named
            raise ValueError(f"{arg} is empty: {width}x{height} pixels")
        try:
            # a lazily opened image (Image.open) decodes now, so that a
            # truncated file is this ValueError, not an OSError later
            value.load()
        except Exception as e:
            raise ValueError(f"{arg}: cannot read the image: {e}") from None
        return value
    raise ValueError(
        f"{arg} must be a file path or a PIL image, got {type(value).__name__}"
    )


def _range(minimum, maximum):
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


def _check_range(value, arg, minimum, maximum):
    if (minimum is not None and value < minimum) or (
        maximum is not None and value > maximum
    ):
        raise ValueError(
            f"{arg} must be{_range(minimum, maximum)}, got {value!r}"
        )
