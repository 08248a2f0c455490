"""Cycles in a job graph, found without recursion (a 10,000-job chain is a valid DAG, and a
10,000-long loop must still be reported, not overflow the stack)."""

from __future__ import annotations

from collections.abc import Iterator


def find_cycles(order: list[str], children: dict[str, tuple[str, ...]]) -> list[list[str]]:
    """One cycle per strongly connected component that has one, each as a closed path.

    Iterative Tarjan (no recursion, so a 10,000-job chain is fine), then a breadth-first
    search inside each component from its first job in document order for the shortest way
    back to it. Linear in jobs + edges; components are disjoint, so the output is too.
    Edges to names outside `order` (unknown or invalid jobs) are ignored.
    """
    position = {name: index for index, name in enumerate(order)}
    index_of: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for root in order:
        if root in index_of:
            continue
        index_of[root] = low[root] = len(index_of)
        stack.append(root)
        on_stack.add(root)
        work: list[tuple[str, Iterator[str]]] = [(root, iter(children[root]))]
        while work:
            node, pending = work[-1]
            descended = False
            for child in pending:
                if child not in position:
                    continue
                if child not in index_of:
                    index_of[child] = low[child] = len(index_of)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(children[child])))
                    descended = True
                    break
                if child in on_stack and index_of[child] < low[node]:
                    low[node] = index_of[child]
            if descended:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                if low[node] < low[parent]:
                    low[parent] = low[node]
            if low[node] == index_of[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in children[node]:
                    components.append(component)

    cycles: list[list[str]] = []
    for component in components:
        members = set(component)
        start = min(component, key=position.__getitem__)
        cycles.append(_cycle_through(start, members, children))
    cycles.sort(key=lambda cycle: position[cycle[0]])
    return cycles


def _cycle_through(start: str, members: set[str], children: dict[str, tuple[str, ...]]) -> list[str]:
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for child in children[node]:
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    path.reverse()
                    path.append(start)
                    return path
                if child in members and child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError("a strongly connected component always has a cycle")
