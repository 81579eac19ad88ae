"""Text from a graph rendered into generated source (comments, docstrings, literals): the one place that escapes it.

Names, source locations and attributes can come from an artifact, that is
from anyone. The decoder validates them (dlc/serialize.py); the renderers
still pass every such piece of text through here, so that a value that slips
past validation can only ever be shown, never run:

- `comment(text)`: one line safe inside a Python `#` comment, a C/C++ `//` or
  `/* */` comment, and a Python docstring: letters, digits, space and a few
  punctuation marks survive, everything else (line breaks of any kind, quotes,
  backslashes, `?` (C trigraphs), non-ASCII) becomes `_`, and `*/` is broken.
- `docstring(lines, indent)`: a whole triple-quoted docstring of such lines.
- `number(value)`: a bool, int or float as the repr of its checked Python type;
  a string (or anything else) is refused, however number-like it looks.
"""

from __future__ import annotations

import math
import re

import numpy as np

# what a comment or docstring line may keep; the rest becomes "_"
_UNSAFE = re.compile(r"[^A-Za-z0-9 _.,:;%@()\[\]<>=+\-*/'!&|^~{}$#]")
MAX_COMMENT = 200


def comment(text) -> str:
    """`text` made safe as the body of a one-line comment or a docstring line (see the module doc)."""
    s = _UNSAFE.sub("_", str(text))
    s = s.replace("*/", "*_")  # no closing of a C block comment; "*_" cannot form a new "*/"
    if len(s) > MAX_COMMENT:
        s = s[:MAX_COMMENT - 3] + "..."
    return s


_FILE_UNSAFE = re.compile(r"[^A-Za-z0-9_.<>\-]")


def file_name(path) -> str:
    """A source file as generated code and artifacts name it: its base name, any character but letters, digits
    and `_.<>-` made "_" (so the same text in-process and after a round trip through an artifact)."""
    base = str(path).replace("\\", "/").rsplit("/", 1)[-1]
    return _FILE_UNSAFE.sub("_", base)[:MAX_COMMENT] or "_"


def docstring(lines, indent: str = "    ") -> str:
    """A triple-quoted docstring of the given lines, each escaped like a comment."""
    body = ("\n" + indent).join(comment(line) for line in lines)
    return f'{indent}"""{body}"""'


def checked_number(value):
    """value as a plain Python bool, int or float; TypeError for anything else (a string above all)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    raise TypeError(f"a literal in generated code must be a bool, int or float, got {type(value).__name__}")


def number(value) -> str:
    """A bool, int or finite float as Python source (the repr of its checked type)."""
    v = checked_number(value)
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"{v!r} has no Python literal; render it by name (np.nan, np.inf)")
    return repr(v)
