"""Time of the server-side DAG layout (gateway/layout.py) on the big workflows the GUI draws:
10,000 jobs with about 20,000 edges, each job depending on two earlier ones at random
(seeded), and a fan-out of 10,000 leaves under one root.

    python bench/layout.py [--repeat N]
"""

from __future__ import annotations

import argparse
import random
import time

from gateway.layout import layout


def random_dag(count: int, parents_per_node: int, seed: int = 11) -> tuple[list[str], list[tuple[str, str]]]:
    rng = random.Random(seed)
    names = [f"job-{index:05}" for index in range(count)]
    edges = {(names[rng.randrange(index)], names[index])
             for index in range(1, count) for _ in range(parents_per_node)}
    return names, sorted(edges)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    repeat = parser.parse_args().repeat
    leaves = [f"leaf-{index:05}" for index in range(10_000)]
    shapes = {
        "random, 10,000 jobs": random_dag(10_000, 2),
        "fan-out, 10,000 leaves": (["root", *leaves], [("root", leaf) for leaf in leaves]),
    }
    for label, (names, edges) in shapes.items():
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            result = layout(names, edges)
            times.append(time.perf_counter() - start)
        layers = 1 + max(box.layer for box in result.nodes.values())
        print(f"{label}, {len(edges):,} edges, {layers} layers: best {min(times) * 1000:.0f} ms, "
              f"worst {max(times) * 1000:.0f} ms of {repeat}")


if __name__ == "__main__":
    main()
