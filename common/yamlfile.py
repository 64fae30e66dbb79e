"""The one YAML reader of the harness: config files, sweep definitions, and the YAML a run or sweep folder keeps.

Every YAML file is read the same guarded way, so no file can make a command hang, exhaust memory or keep one of
two values silently: at most MAX_YAML_BYTES are read (a device such as /dev/zero is refused before reading), a
key given twice in one mapping is an error naming the key and both lines, and the document may expand through
anchors and aliases (`&name` / `*name`) to at most MAX_YAML_VALUES values, MAX_YAML_DEPTH levels deep, never
into itself. Every problem is a one-line UserError naming the file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from common.errors import UserError
from common.parsing import yaml_problem

MAX_YAML_BYTES = 2**20  # sweep definitions and run configs are a few KB
MAX_YAML_VALUES = 100_000  # scalars, lists and mappings after anchors and aliases are expanded
MAX_YAML_DEPTH = 64  # lists and mappings inside each other


class _Refused(yaml.YAMLError):
    """A document the loader refuses to build, with the reason in words."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader (plain data only, never Python objects), refusing a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            lines: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` merges; keys written here win, by design
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    earlier = lines.get(key)
                except TypeError:  # an unhashable key: the base class says so
                    continue
                line = key_node.start_mark.line + 1
                if earlier is not None:
                    raise _Refused(
                        f"has the key {key!r} twice (lines {earlier} and {line}): "
                        "keep one, YAML would silently use the last")
                lines[key] = line
        return super().construct_mapping(node, deep=deep)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Count the values `root` expands to, without expanding it: an alias counts its anchor's values again."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[key] > MAX_YAML_VALUES:
                raise _Refused(f"expands to more than {MAX_YAML_VALUES:,} values through its anchors and aliases "
                               f"(&name / *name): write the values out, or use fewer aliases")
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise _Refused(
                f"has an alias inside its own anchor (line {node.start_mark.line + 1}): a value cannot contain itself")
        if depth > MAX_YAML_DEPTH:
            raise _Refused(
                f"nests lists and mappings more than {MAX_YAML_DEPTH} levels deep (line {node.start_mark.line + 1})")
        on_path.add(key)
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in _children(node) if id(child) not in sizes)


def parse_yaml(text: str, what: str) -> Any:
    """The document in `text` as plain Python values (None when empty). `what` names the source in errors
    ("sweep file sweeps/x.yaml")."""
    loader = None
    try:
        loader = _Loader(text)  # the reader refuses control characters at once
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    except _Refused as exc:
        raise UserError(f"{what} {exc}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{what} is not valid YAML: {yaml_problem(exc)}") from None
    except RecursionError:  # the parser recurses once per level before the depth check can run
        raise UserError(f"{what} nests lists and mappings more than {MAX_YAML_DEPTH} levels deep") from None
    except ValueError as exc:  # a scalar YAML reads as a date that does not exist (2024-02-31)
        raise UserError(f"{what} is not valid YAML: {exc}") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: Path | str, what: str = "YAML file") -> Any:
    """The document in the YAML file `path`, read at most MAX_YAML_BYTES deep. `what` says which file it is for
    the user ("config file", "sweep file"); every problem is a one-line UserError naming it and `path`."""
    path = Path(path)
    name = f"{what} {path}"
    try:
        kind = os.stat(path).st_mode
        if stat.S_ISDIR(kind):
            raise UserError(f"{name} cannot be read: it is a folder, not a YAML file; pass the file itself")
        if not (stat.S_ISREG(kind) or stat.S_ISFIFO(kind)):
            raise UserError(f"{name} cannot be read: it is a device or socket, not a YAML file; pass a file")
        # Non-blocking open: a named pipe with no writer would otherwise wait forever; it reads as empty instead.
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            if hasattr(os, "set_blocking"):
                os.set_blocking(descriptor, True)  # a pipe's writer may still be writing: wait for it, up to the cap
            with os.fdopen(descriptor, "rb") as handle:
                descriptor = None
                data = handle.read(MAX_YAML_BYTES + 1)
        finally:
            if descriptor is not None:
                os.close(descriptor)
    except FileNotFoundError:
        raise UserError(f"{name} not found") from None
    except OSError as exc:
        raise UserError(f"{name} cannot be read ({exc.strerror or type(exc).__name__}): "
                        "check it is a YAML file you may read") from None
    if len(data) > MAX_YAML_BYTES:
        raise UserError(
            f"{name} is larger than {MAX_YAML_BYTES // 2**20} MB, the most a "
            "YAML file may hold here: pass the YAML file itself")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{name} is not UTF-8 text (byte {exc.start + 1} is {data[exc.start:exc.start + 1]!r}; a "
                        "binary file?): pass a YAML file") from None
    return parse_yaml(text, name)
