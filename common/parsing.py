"""Parse values that arrive as strings (YAML, `--key=value`, W&B configs) into typed Python values."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from common.errors import UserError

_TRUE = {"true", "yes", "y", "1", "on", "t"}
_FALSE = {"false", "no", "n", "0", "off", "f", "none", ""}


def parse_bool(value: object, name: str = "value") -> bool:
    """`True`/`False`, 0/1 and the strings "true", "no", "0", "off"... all become real booleans."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise UserError(f"{name}={value!r} is not a boolean: use true/false (also yes/no, 1/0)")


def nearest(word: str, choices: Iterable[str]) -> str:
    """A ` (did you mean X?)` suffix for error messages, or '' when nothing is close. Swapped letters are the
    commonest typo and difflib underrates them: a choice one such swap away comes first."""
    word, choices = str(word), [str(c) for c in choices]
    swapped = [c for c in choices if _one_swap(word, c)]
    match = swapped or difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _one_swap(a: str, b: str) -> bool:
    """b is a with two neighbouring letters swapped (valuse / values)."""
    if len(a) != len(b) or a == b:
        return False
    diff = [i for i in range(len(a)) if a[i] != b[i]]
    return len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]


def yaml_problem(exc: Exception) -> str:
    """A YAML parse error in one line, with where it is: `line 4, column 24: expected ',' or ']', but got '}'`."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem
