"""The server-side DAG layout: layers by longest path, barycenter order, boxes that never overlap."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.layout import Box, Layout, Spacing, layout

FRUIT = ["apple", "banana", "cantaloupe", "dragonfruit"]
FRUIT_EDGES = [("apple", "banana"), ("apple", "cantaloupe"), ("banana", "dragonfruit"), ("cantaloupe", "dragonfruit")]


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[str], list[tuple[str, str]]]:
    """Nodes n0..nk and edges only from a lower index to a higher one: acyclic by construction."""
    count = draw(st.integers(min_value=0, max_value=25))
    names = [f"n{index}" for index in range(count)]
    pairs = [(a, b) for a in range(count) for b in range(a + 1, count)]
    chosen = draw(st.lists(st.sampled_from(pairs), max_size=60)) if pairs else []
    return names, [(names[a], names[b]) for a, b in chosen]


def overlap(first: Box, second: Box) -> bool:
    return (first.x < second.x + second.width and second.x < first.x + first.width
            and first.y < second.y + second.height and second.y < first.y + first.height)


def layers_of(result: Layout) -> list[list[str]]:
    """The node names of each layer, in their order."""
    count = 1 + max((box.layer for box in result.nodes.values()), default=-1)
    layers: list[list[str]] = [[] for _ in range(count)]
    for name, box in sorted(result.nodes.items(), key=lambda item: (item[1].layer, item[1].order)):
        layers[box.layer].append(name)
    return layers


@given(dags())
@settings(max_examples=200, deadline=None)
def test_every_edge_goes_down_and_no_boxes_overlap(dag: tuple[list[str], list[tuple[str, str]]]) -> None:
    names, edges = dag
    result = layout(names, edges)
    assert set(result.nodes) == set(names)
    for parent, child in edges:
        assert result.nodes[parent].layer < result.nodes[child].layer
        assert result.nodes[parent].y + result.nodes[parent].height < result.nodes[child].y
    boxes = list(result.nodes.values())
    for index, box in enumerate(boxes):
        assert box.x >= 0 and box.x + box.width <= result.width
        assert box.y >= 0 and box.y + box.height <= result.height
        assert not any(overlap(box, other) for other in boxes[index + 1:]), box
    for layer in layers_of(result):
        assert [result.nodes[name].order for name in layer] == list(range(len(layer)))


@given(dags(), st.randoms(use_true_random=False))
@settings(max_examples=100, deadline=None)
def test_the_layout_depends_on_the_graph_only_not_on_the_input_order(
        dag: tuple[list[str], list[tuple[str, str]]], shuffler: random.Random) -> None:
    names, edges = dag
    first = layout(names, edges)
    shuffled_names, shuffled_edges = list(names), list(edges)
    shuffler.shuffle(shuffled_names)
    shuffler.shuffle(shuffled_edges)
    assert layout(shuffled_names, shuffled_edges) == first
    assert layout(names, edges) == first


def test_each_layer_is_one_more_than_the_longest_path_above() -> None:
    result = layout(["a", "b", "c", "d"], [("a", "b"), ("b", "c"), ("a", "c"), ("c", "d")])
    assert {name: box.layer for name, box in result.nodes.items()} == {"a": 0, "b": 1, "c": 2, "d": 3}


def test_an_empty_graph_has_no_nodes_and_no_size() -> None:
    assert layout([], []) == Layout(nodes={}, width=0, height=0)


def test_a_chain_is_one_column() -> None:
    names = [f"step{index}" for index in range(5)]
    spacing = Spacing(node_width=100, node_height=30, column_gap=10, row_gap=20, margin=5)
    result = layout(names, list(zip(names, names[1:], strict=False)), spacing)
    assert [result.nodes[name].layer for name in names] == [0, 1, 2, 3, 4]
    assert {result.nodes[name].x for name in names} == {5}
    assert [result.nodes[name].y for name in names] == [5, 55, 105, 155, 205]
    assert (result.width, result.height) == (110, 5 * 30 + 4 * 20 + 2 * 5)


def test_the_fruit_diamond_is_one_two_one_and_centred() -> None:
    spacing = Spacing(node_width=100, node_height=30, column_gap=10, row_gap=20, margin=0)
    result = layout(FRUIT, FRUIT_EDGES, spacing)
    assert layers_of(result) == [["apple"], ["banana", "cantaloupe"], ["dragonfruit"]]
    assert result.width == 210
    assert result.nodes["apple"].x == result.nodes["dragonfruit"].x == 55
    assert (result.nodes["banana"].x, result.nodes["cantaloupe"].x) == (0, 110)


def test_the_edge_runs_from_the_parents_bottom_centre_to_the_childs_top_centre() -> None:
    spacing = Spacing(node_width=100, node_height=30, column_gap=10, row_gap=20, margin=0)
    result = layout(FRUIT, FRUIT_EDGES, spacing)
    assert result.edge("apple", "banana") == ((105, 30), (50, 50))


def test_children_sit_under_their_parents() -> None:
    # by name alone the children would cross: a's child is drawn on a's side all the same
    result = layout(["a", "z", "child_of_z", "of_a"], [("a", "of_a"), ("z", "child_of_z")])
    assert layers_of(result) == [["a", "z"], ["of_a", "child_of_z"]]


def test_parents_of_one_child_are_drawn_side_by_side() -> None:
    # by name b would sit between a and c, its edge crossing theirs
    result = layout(["a", "b", "c", "x", "y"], [("a", "x"), ("c", "x"), ("b", "y")])
    assert layers_of(result) == [["a", "c", "b"], ["x", "y"]]


def test_nodes_without_children_keep_their_place_on_the_way_up() -> None:
    # d moves over its only child, the middle of the layer below; a, b and c stay where they were
    result = layout(["a", "b", "c", "d", "x"], [("d", "x")])
    assert layers_of(result) == [["a", "b", "d", "c"], ["x"]]


def test_a_fan_out_of_five_thousand_is_one_wide_layer_under_its_root() -> None:
    children = [f"leaf{index:04}" for index in range(5000)]
    result = layout(["root", *children], [("root", child) for child in children])
    assert layers_of(result) == [["root"], children]
    leftmost, rightmost = result.nodes[children[0]], result.nodes[children[-1]]
    assert result.nodes["root"].x + result.nodes["root"].width / 2 == (leftmost.x + rightmost.x + rightmost.width) / 2


@pytest.mark.parametrize(("names", "edges", "message"), [
    (["a", "a"], [], "duplicate node name: 'a'"),
    (["a"], [("a", "b")], "edge ('a', 'b') names an unknown node: 'b'"),
    (["a", "b"], [("a", "b"), ("b", "a")], "cycle"),
    (["a"], [("a", "a")], "cycle"),
])
def test_a_graph_that_cannot_be_laid_out_is_refused_by_name(
        names: list[str], edges: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        layout(names, edges)


@pytest.mark.parametrize("field", ["node_width", "node_height", "column_gap", "row_gap", "margin"])
def test_negative_spacing_is_refused_by_name(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Spacing(**{field: -1})
