"""Where each job of a workflow is drawn: a layered layout of its DAG, computed on the server.

Browser layout libraries (dagre, elk) take seconds past a few thousand nodes; this one is
O(V+E) plus one sort per layer and per sweep, so a 10,000-job workflow is laid out in well
under a second and the page only draws boxes at given places. The layers are the longest
path from a source (every edge points down), the order within a layer comes from one
downward and one upward barycenter sweep (a node sits near the mean position of its
parents, then of its children; ties go by name), and each layer is centred. The result
depends on the graph only, never on the order of the input. Standard library only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from graphlib import CycleError, TopologicalSorter

Point = tuple[float, float]
Neighbours = dict[str, list[str]]


@dataclass(frozen=True)
class Spacing:
    """The fixed sizes of a drawing, in pixels."""

    node_width: float = 160
    """Width of every node's box."""
    node_height: float = 40
    """Height of every node's box."""
    column_gap: float = 24
    """Horizontal space between two neighbouring boxes of a layer."""
    row_gap: float = 64
    """Vertical space between two layers, where the edges run."""
    margin: float = 16
    """Empty space around the whole drawing."""

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name in ("node_width", "node_height") and not value > 0:
                raise ValueError(f"{field.name} must be positive, not {value}")
            if not value >= 0:
                raise ValueError(f"{field.name} must not be negative, not {value}")


@dataclass(frozen=True)
class Box:
    """Where one node is drawn: its layer, its place in the layer and its box."""

    layer: int
    """0 for a node without parents, else 1 + the greatest layer of its parents."""
    order: int
    """Its place in the layer, 0 for the leftmost."""
    x: float
    """Left edge of the box."""
    y: float
    """Top edge of the box."""
    width: float
    height: float


@dataclass(frozen=True)
class Layout:
    """A whole drawing: every node's box and the size that holds them all."""

    nodes: dict[str, Box]
    width: float
    height: float

    def edge(self, parent: str, child: str) -> tuple[Point, Point]:
        """The line of an edge: from the parent's bottom centre to the child's top centre."""
        top, bottom = self.nodes[parent], self.nodes[child]
        return (top.x + top.width / 2, top.y + top.height), (bottom.x + bottom.width / 2, bottom.y)


def layout(names: Sequence[str], edges: Iterable[tuple[str, str]], spacing: Spacing = Spacing()) -> Layout:
    """Lay out the DAG of these nodes and (parent, child) edges; ValueError, naming the
    culprit, for a duplicate name, an edge to an unknown node or a cycle."""
    parents, children = _adjacency(names, edges)
    layers = _layers(parents)
    # twice the distance from the layer's centre, in boxes: exact, and comparable across layers
    position: dict[str, int] = {}
    for layer in layers:
        layer.sort()
        _place(layer, position)
    for layer in layers[1:]:
        layer.sort(key=lambda name: (_barycenter(parents[name], position, name), name))
        _place(layer, position)
    for layer in reversed(layers[:-1]):
        layer.sort(key=lambda name: (_barycenter(children[name], position, name), name))
        _place(layer, position)
    return _boxes(layers, spacing)


def _adjacency(names: Sequence[str], edges: Iterable[tuple[str, str]]) -> tuple[Neighbours, Neighbours]:
    """Each node's parents and each node's children (a repeated edge counts once)."""
    parents: Neighbours = {}
    for name in names:
        if name in parents:
            raise ValueError(f"duplicate node name: {name!r}")
        parents[name] = []
    children: Neighbours = {name: [] for name in parents}
    for edge in dict.fromkeys(edges):
        for end in edge:
            if end not in parents:
                raise ValueError(f"edge {edge!r} names an unknown node: {end!r}")
        parent, child = edge
        parents[child].append(parent)
        children[parent].append(child)
    return parents, children


def _layers(parents: Neighbours) -> list[list[str]]:
    """The nodes of each layer, longest path first, in no particular order."""
    layer_of: dict[str, int] = {}
    try:
        for name in TopologicalSorter(parents).static_order():
            layer_of[name] = 1 + max((layer_of[parent] for parent in parents[name]), default=-1)
    except CycleError as error:
        raise ValueError(f"the edges form a cycle: {' -> '.join(error.args[1])}") from error
    layers: list[list[str]] = [[] for _ in range(1 + max(layer_of.values(), default=-1))]
    for name, layer in layer_of.items():
        layers[layer].append(name)
    return layers


def _place(layer: list[str], position: dict[str, int]) -> None:
    for order, name in enumerate(layer):
        position[name] = 2 * order - (len(layer) - 1)


def _barycenter(neighbours: list[str], position: dict[str, int], name: str) -> float:
    """The mean position of the neighbours (a sum of integers: the same for any order of
    the edges); a node without any keeps its own."""
    if not neighbours:
        return position[name]
    return sum(position[neighbour] for neighbour in neighbours) / len(neighbours)


def _boxes(layers: list[list[str]], spacing: Spacing) -> Layout:
    if not layers:
        return Layout(nodes={}, width=0, height=0)
    step_x = spacing.node_width + spacing.column_gap
    step_y = spacing.node_height + spacing.row_gap
    widest = max(len(layer) for layer in layers) * step_x - spacing.column_gap
    nodes: dict[str, Box] = {}
    for index, layer in enumerate(layers):
        left = spacing.margin + (widest - (len(layer) * step_x - spacing.column_gap)) / 2
        top = spacing.margin + index * step_y
        for order, name in enumerate(layer):
            nodes[name] = Box(index, order, left + order * step_x, top, spacing.node_width, spacing.node_height)
    return Layout(nodes=nodes, width=widest + 2 * spacing.margin,
                  height=len(layers) * step_y - spacing.row_gap + 2 * spacing.margin)
