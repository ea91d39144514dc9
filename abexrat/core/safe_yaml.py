"""Safe YAML: a mapping of plain data from a file that may be hostile.

Configs come from users and from studies shared between machines, so reading one must never
build objects, hang on an alias bomb or recurse off the stack; everything else in abexrat can
then assume a plain ``dict`` of strings, numbers, booleans, null, lists and mappings.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from abexrat.core.errors import UserError
from abexrat.core.io import clip, short_repr

MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_NODES = 100_000  # after aliases are expanded: a "billion laughs" file stops here
MAX_CONFIG_DEPTH = 32  # configs nest a few levels; deeper is hostile (and recursion in the parsers)
PLAIN = (str, int, float, bool, type(None))


_BRACKET = re.compile(r"[\[\]{}]")


def _flow_too_deep(text: str, limit: int = 2 * MAX_CONFIG_DEPTH) -> bool:
    """More than ``limit`` unclosed ``[``/``{``: PyYAML's scanner is quadratic in that depth (seconds for
    a few thousand), so such a file is refused before it is parsed. Brackets inside strings count too,
    hence the generous limit."""
    depth = 0
    for m in _BRACKET.finditer(text):
        depth += 1 if m.group() in "[{" else -1
        if depth > limit:
            return True
    return False


def _check_depth(root: yaml.Node) -> str | None:
    """Why the node graph is unacceptable (too deep, or an alias inside its own anchor), else None.

    Iterative, so a hostile file cannot exhaust the Python stack here, and each node is visited
    once (aliases share nodes: walking every path of an alias bomb would take exponential time).
    """

    def children(node: yaml.Node) -> list[yaml.Node]:
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        if isinstance(node, yaml.MappingNode):
            return [c for kv in node.value for c in kv]
        return []

    entered, height = set(), {}  # entered and not yet left = on the current path
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        key = id(node)
        if leaving:
            entered.discard(key)
            height[key] = 1 + max((height[id(c)] for c in children(node)), default=0)
            if height[key] > MAX_CONFIG_DEPTH:
                return f"nested deeper than {MAX_CONFIG_DEPTH} levels"
            continue
        if key in height:
            continue
        if key in entered:  # reached again from below itself
            return "an alias refers to its own anchor (a recursive structure)"
        entered.add(key)
        stack.append((node, True))
        for c in children(node):
            if id(c) in entered:
                return "an alias refers to its own anchor (a recursive structure)"
            if id(c) not in height:
                stack.append((c, False))
    return None


def plain_data_problem(obj: Any, where: str = "") -> str | None:
    """Where ``obj`` holds something other than strings, numbers, booleans, null, lists and mappings.

    ``yaml.safe_load`` also builds dates, timestamps, bytes (``!!binary``) and sets (``!!set``):
    no config key takes those, and they break JSON results later, so they are refused up front.
    """
    stack: list[tuple[Any, str]] = [(obj, where)]
    while stack:
        value, at = stack.pop()
        if isinstance(value, PLAIN):
            continue
        if isinstance(value, list):
            stack.extend((v, f"{at}[{i}]") for i, v in enumerate(value))
        elif isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, PLAIN):  # non-string scalars (`on:` is True) are the schema's to judge
                    return f"{at or '(top level)'}: key {short_repr(k)} is a {type(k).__name__}, not a plain value"
                stack.append((v, f"{at}.{k}" if at else k))
        else:
            kind = type(value).__name__
            return f"{at or '(top level)'}: a {kind} value; only strings, numbers, booleans, null, lists and mappings"
    return None


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes in the document with every alias expanded, counted in time linear in the unique nodes."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = 1  # a recursive alias counts once instead of looping
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(n, memo) for n in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[key] = size
    return size


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path`` with ``yaml.safe_load`` (no tags that build objects).

    Hostile files end in a :class:`UserError`: non-UTF-8 bytes, more than 1 MiB, alias bombs,
    recursive aliases, deep nesting, and values that are not plain data (dates, bytes, sets).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    data = path.read_bytes()
    if len(data) > MAX_CONFIG_BYTES:
        raise UserError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes; not a config")
    try:
        text = data.decode("utf-8")
        if _flow_too_deep(text):
            raise UserError(f"{path}: nested deeper than {MAX_CONFIG_DEPTH} levels; not a config")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            if problem := _check_depth(node):
                raise UserError(f"{path}: {problem}; not a config")
            if _expanded_size(node, {}) > MAX_CONFIG_NODES:
                raise UserError(f"{path}: more than {MAX_CONFIG_NODES} values once aliases are expanded; not a config")
        obj = yaml.safe_load(text)
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except RecursionError:  # the YAML composer recurses per level, before the depth check can run
        raise UserError(f"{path}: nested too deeply; not a config") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path}: not valid YAML{where}: {clip(problem, 160)}") from None
    except UserError:
        raise
    except Exception as e:  # PyYAML's own constructors on forced tags: `!!timestamp x`, `!!int x`, a 5000-digit int
        raise UserError(
            f"{path}: not valid YAML: a value cannot be read ({clip(str(e) or type(e).__name__, 120)})"
        ) from None
    if obj is None:  # an empty file: most likely the wrong path or an unsaved editor, never "all defaults"
        raise UserError(f"{path}: empty; expected a mapping of keys at the top level")
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a mapping of keys at the top level, got {type(obj).__name__}")
    if problem := plain_data_problem(obj):
        raise UserError(f"{path}: {clip(problem, 200)}")
    return obj
