"""The dependency graph of gates: order, closure and cycles.

Functions here take gates whose ``depends_on`` name existing gates
(:mod:`forgehall.gates.config` checks that first).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from forgehall.gates.schemas import Gate


def find_cycle(gates: Sequence[Gate]) -> list[str] | None:
    """A dependency cycle as a path that returns to its start (``[a, b, a]``), or None.

    Unknown dependency ids are ignored here.
    """
    by_id = {gate.id: gate for gate in gates}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(gate_id: str) -> list[str] | None:
        state[gate_id] = 1
        path.append(gate_id)
        for dep in by_id[gate_id].depends_on:
            if dep not in by_id:
                continue
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[gate_id] = 2
        return None

    for gate in gates:
        if gate.id not in state and (found := visit(gate.id)):
            return found
    return None


def dependency_closure(gates: Sequence[Gate], ids: Iterable[str]) -> set[str]:
    """``ids`` and every gate they depend on, directly or not."""
    by_id = {gate.id: gate for gate in gates}
    seen: set[str] = set()
    stack = list(ids)
    while stack:
        gate_id = stack.pop()
        if gate_id in seen:
            continue
        seen.add(gate_id)
        stack.extend(by_id[gate_id].depends_on)
    return seen


def topological_order(gates: Sequence[Gate]) -> list[Gate]:
    """Gates with every dependency before its dependents, otherwise in file order."""
    by_id = {gate.id: gate for gate in gates}
    placed: set[str] = set()
    order: list[Gate] = []

    def place(gate: Gate) -> None:
        if gate.id in placed:
            return
        placed.add(gate.id)
        for dep in gate.depends_on:
            if dep in by_id:
                place(by_id[dep])
        order.append(gate)

    for gate in gates:
        place(gate)
    return order
