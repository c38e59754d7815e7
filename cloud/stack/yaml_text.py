"""Block-style YAML text from plain values: the committed CloudFormation template's writer.

`cloud deploy` renders the template at run time and PyYAML is only a test dependency, so
this writes by hand the small subset the template needs (mappings, lists, strings, integers
and booleans, in the order given), always the same text for the same value. Named
`yaml_text` so it does not shadow the `yaml` package.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

#: Strings written without quotes: nothing YAML could read as another type or as syntax.
_PLAIN = re.compile(r"^[A-Za-z][A-Za-z0-9_.:/-]*$")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


def dump(value: Mapping[str, Any], comments: Sequence[str] = ()) -> str:
    """`value` as block-style YAML, after `comments` (each one `#` line)."""
    header = [f"# {line}" for line in comments]
    return "\n".join([*header, *_block(dict(value), 0)]) + "\n"


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if _PLAIN.match(value) and not value.endswith(":") and value.lower() not in _YAML_WORDS:
            return value
        # A JSON string is a valid YAML double-quoted scalar (json.dumps never writes `\/`).
        return json.dumps(value)
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as YAML")


def _block(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{_scalar(key)}:")
                lines.extend(_block(item, indent + 2))
            else:
                lines.append(f"{pad}{_scalar(key)}: {_inline(item)}")
    else:
        for item in value:
            if isinstance(item, dict | list) and item:
                nested = _block(item, indent + 2)
                nested[0] = f"{pad}- {nested[0][indent + 2 :]}"
                lines.extend(nested)
            else:
                lines.append(f"{pad}- {_inline(item)}")
    return lines


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)
