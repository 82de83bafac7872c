"""Load ``.forgehall/gates.yaml`` and ``.forgehall/intent.yaml`` with errors that name
the file, the line and the field.

The YAML is composed into nodes first (PyYAML keeps each node's position) and turned
into plain data while the line of every key and list item is recorded under its path,
e.g. ``("gates", 1, "timeout")``. Schema errors from pydantic carry the same paths, so
each maps to a line. Every problem found is reported at once; nothing is partially
accepted.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from forgehall.gates.graph import find_cycle
from forgehall.gates.schemas import Gate, GatesFile, IntentFile

FORGEHALL_DIR = Path(".forgehall")
GATES_FILE = FORGEHALL_DIR / "gates.yaml"
INTENT_FILE = FORGEHALL_DIR / "intent.yaml"

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class ConfigProblem:
    file: str
    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        if self.field:
            return f"{where}: {self.field}: {self.message}"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """One or more problems in a gates file; ``str()`` is one line per problem."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line or 0))
        super().__init__("\n".join(map(str, self.problems)))


def display_path(path: Path) -> str:
    """The path as a person would type it from here."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if relative.startswith("..") else relative


def find_project_root(start: Path) -> Path:
    """The nearest directory, from ``start`` upwards, holding ``.forgehall/gates.yaml``."""
    start = start.resolve()
    for directory in (start, *start.parents):
        if (directory / GATES_FILE).is_file():
            return directory
    raise ConfigError(
        [
            ConfigProblem(
                display_path(start / GATES_FILE),
                None,
                None,
                "no gates file here or in any parent directory; "
                "run `forgehall gates init` to write one",
            )
        ]
    )


class _Document:
    """Plain data from YAML nodes, with the line of every path in it."""

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.lines: dict[Loc, int] = {(): 1}
        self.problems: list[ConfigProblem] = []
        self.data: Any = None
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                self.data = self._convert(loader, node, ())
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else None
            detail = " ".join(str(p) for p in (exc.context, exc.problem) if p)
            self.problems.append(ConfigProblem(file, line, None, f"invalid YAML: {detail}"))
        except yaml.YAMLError as exc:
            self.problems.append(ConfigProblem(file, None, None, f"invalid YAML: {exc}"))
        finally:
            loader.dispose()

    def _convert(self, loader: yaml.SafeLoader, node: Node, loc: Loc) -> Any:
        if isinstance(node, MappingNode):
            own: dict[str, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                line = key_node.start_mark.line + 1
                key = loader.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    self.problem(loc, f"key {key!r} is not text", line)
                elif key in own:
                    self.problem((*loc, key), f"duplicate key (first on line {own[key]})", line)
                else:
                    own[key] = line
            # `<<: *anchor` merges put the merged keys first, so the mapping's own keys,
            # coming later, win.
            loader.flatten_mapping(node)
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = loader.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    continue
                self.lines[(*loc, key)] = own.get(key, key_node.start_mark.line + 1)
                result[key] = self._convert(loader, value_node, (*loc, key))
            return result
        if isinstance(node, SequenceNode):
            items = []
            for index, item in enumerate(node.value):
                self.lines[(*loc, index)] = item.start_mark.line + 1
                items.append(self._convert(loader, item, (*loc, index)))
            return items
        assert isinstance(node, ScalarNode)
        return loader.construct_object(node, deep=True)

    def line_of(self, loc: Loc) -> int | None:
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return None

    def field_name(self, loc: Loc) -> str | None:
        text = ""
        for part in loc:
            text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
        if len(loc) >= 2 and loc[0] == "gates" and isinstance(loc[1], int):
            gates = self.data.get("gates") if isinstance(self.data, dict) else None
            if isinstance(gates, list) and loc[1] < len(gates) and isinstance(gates[loc[1]], dict):
                gate_id = gates[loc[1]].get("id")
                if isinstance(gate_id, str):
                    text += f" (gate {gate_id!r})"
        return text or None

    def problem(self, loc: Loc, message: str, line: int | None = None) -> None:
        line = self.line_of(loc) if line is None else line
        self.problems.append(ConfigProblem(self.file, line, self.field_name(loc), message))


def _known_keys(model: type[BaseModel], loc: Loc) -> list[str]:
    if model is GatesFile and len(loc) >= 3 and loc[0] == "gates":
        return list(Gate.model_fields)
    return list(model.model_fields)


def _schema_problems(document: _Document, model: type[BaseModel], error: ValidationError) -> None:
    for item in error.errors():
        loc: Loc = tuple(item["loc"])
        kind = item["type"]
        if kind == "extra_forbidden":
            key = str(loc[-1])
            known = _known_keys(model, loc)
            close = difflib.get_close_matches(key, known, n=1)
            if close:
                hint = f"; did you mean {close[0]!r}?"
            else:
                hint = f" (known keys: {', '.join(known)})"
            document.problem(loc, f"unknown key {key!r}{hint}")
        elif kind == "missing":
            document.problem(loc, "required, but missing")
        else:
            message = str(item["msg"]).removeprefix("Value error, ")
            document.problem(loc, message[:1].lower() + message[1:])


def _read(path: Path) -> _Document:
    file = display_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(file, None, None, "no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigProblem(file, None, None, f"cannot read it: {exc}")]) from None
    document = _Document(file, text)
    if not document.problems and not isinstance(document.data, dict):
        what = "empty" if document.data is None else "not a mapping of keys to values"
        document.problems.append(ConfigProblem(file, 1, None, f"the file is {what}"))
    if document.problems:
        raise ConfigError(document.problems)
    return document


def _check_paths(document: _Document, root: Path, gates: Sequence[Gate]) -> None:
    real_root = root.resolve()
    for index, gate in enumerate(gates):
        if gate.script is not None:
            loc: Loc = ("gates", index, "script")
            target = (root / gate.script).resolve()
            if not target.is_relative_to(real_root):
                document.problem(loc, f"{gate.script!r} resolves outside the repository")
            elif not target.is_file():
                document.problem(loc, f"no such file {gate.script!r} in {display_path(root)}")
            elif not os.access(target, os.X_OK):
                document.problem(loc, f"{gate.script!r} is not executable (chmod +x it)")
        if gate.workdir is not None:
            loc = ("gates", index, "workdir")
            target = (root / gate.workdir).resolve()
            if not target.is_relative_to(real_root):
                document.problem(loc, f"{gate.workdir!r} resolves outside the repository")
            elif not target.is_dir():
                document.problem(loc, f"no such directory {gate.workdir!r}")


def _check_graph(document: _Document, gates: Sequence[Gate]) -> None:
    first: dict[str, int] = {}
    for index, gate in enumerate(gates):
        if gate.id in first:
            line = document.line_of(("gates", first[gate.id], "id"))
            document.problem(
                ("gates", index, "id"), f"duplicate gate id {gate.id!r} (first on line {line})"
            )
        else:
            first[gate.id] = index
    for index, gate in enumerate(gates):
        for position, dep in enumerate(gate.depends_on):
            if dep not in first:
                close = difflib.get_close_matches(dep, list(first), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                document.problem(
                    ("gates", index, "depends_on", position), f"unknown gate {dep!r}{hint}"
                )
    cycle = find_cycle(gates) if len(first) == len(gates) else None
    if cycle is not None:
        index = next(i for i, gate in enumerate(gates) if gate.id == cycle[0])
        position = gates[index].depends_on.index(cycle[1])
        document.problem(
            ("gates", index, "depends_on", position),
            f"dependency cycle: {' -> '.join(cycle)}",
        )


def load_gates(root: Path) -> GatesFile:
    """The validated gates file of the project at ``root``.

    Raises:
        ConfigError: every problem found, each with file, line and field.
    """
    document = _read(root / GATES_FILE)
    try:
        gates_file = GatesFile.model_validate(document.data)
    except ValidationError as exc:
        _schema_problems(document, GatesFile, exc)
        raise ConfigError(document.problems) from None
    _check_graph(document, gates_file.gates)
    _check_paths(document, root, gates_file.gates)
    if document.problems:
        raise ConfigError(document.problems)
    return gates_file


def load_intent(root: Path) -> IntentFile | None:
    """The project's intent, or None when it has no intent file.

    Raises:
        ConfigError: the file exists and is invalid.
    """
    path = root / INTENT_FILE
    if not path.exists():
        return None
    document = _read(path)
    try:
        return IntentFile.model_validate(document.data)
    except ValidationError as exc:
        _schema_problems(document, IntentFile, exc)
        raise ConfigError(document.problems) from None
