"""How commands print what they got: a table for people, or json, yaml, wide, or bare names.

Every command that prints documents takes `-o/--output` through `output_option` and hands
its plain dicts to `emit`; the table is the command's own, `wide` is that table with more
columns. Times are shown as ages and durations, text cut to columns by its width on screen.
"""

from __future__ import annotations

import functools
import json
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])
Doc = dict[str, Any]
FORMATS = ("json", "yaml", "wide", "name")
TABLE = "table"


def output_option(command: F) -> F:
    """Adds `-o/--output FORMAT` and its alias `--json`; the command gets `output` (or `table`)."""

    @functools.wraps(command)
    def wrapper(*args: Any, output: str | None, as_json: bool, **kwargs: Any) -> Any:
        if as_json and output not in (None, "json"):
            from donut_cli.cli import EXIT_BAD_INPUT, fail  # cli imports the commands, which import this

            fail(f"--json: cannot be used with -o {output}", EXIT_BAD_INPUT)
        return command(*args, output="json" if as_json else output or TABLE, **kwargs)

    wrapper = click.option("--json", "as_json", is_flag=True, help="The same as -o json.")(wrapper)
    wrapper = click.option("-o", "--output", type=click.Choice(FORMATS),
                           help="json, yaml, wide (more columns) or name (ids only); default: a table.")(wrapper)
    return wrapper  # type: ignore[return-value]


def emit(docs: Doc | list[Doc], output: str, table: Callable[[Any, bool], None],
         name: Callable[[Doc], str] = lambda doc: str(doc["id"])) -> None:
    """Prints one document or a list in the chosen format; `table(docs, wide)` draws the table,
    `name(doc)` is what `-o name` prints."""
    if output == "json":
        click.echo(json.dumps(docs, indent=2, ensure_ascii=False))
    elif output == "yaml":
        import yaml

        click.echo(yaml.safe_dump(docs, sort_keys=False, allow_unicode=True), nl=False)
    elif output == "name":
        for doc in docs if isinstance(docs, list) else [docs]:
            click.echo(name(doc))
    else:
        table(docs, output == "wide")


def width(text: str) -> int:
    """Columns the text takes on a terminal: East Asian wide characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def cell(text: str, columns: int, cut: bool = True) -> str:
    """The text padded to `columns`; cut with an ellipsis where it is wider (when `cut`)."""
    if cut and width(text) > columns:
        while width(text) > columns - 1:
            text = text[:-1]
        text += "…"
    return text + " " * (columns - width(text))


def columns(headers: list[str], rows: list[list[str]]) -> list[str]:
    """The rows under their headers, each column as wide as its widest cell; the last unpadded."""
    widths = [max(width(r[i]) for r in [headers, *rows]) for i in range(len(headers) - 1)]
    return ["  ".join([*(cell(c, w, cut=False) for c, w in zip(r, widths, strict=False)), r[-1]]).rstrip()
            for r in [headers, *rows]]


def parse_time(iso: str | None) -> datetime | None:
    return datetime.fromisoformat(iso) if iso else None


def span(seconds: float) -> str:
    """`1.2s`, `3m4s`, `2h5m`, `3d4h`."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    for unit, size, smaller, smaller_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if whole >= size:
            rest = (whole % size) // smaller_size
            return f"{whole // size}{unit}" + (f"{rest}{smaller}" if rest else "")
    return f"{whole}s"  # not reached


def age(iso: str | None, now: datetime | None = None) -> str:
    """How long ago: `45s`, `3m`, `2h`, `5d`."""
    at = parse_time(iso)
    if at is None:
        return ""
    seconds = max(0.0, ((now or datetime.now(UTC)) - at).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def elapsed(started: str | None, finished: str | None, now: datetime | None = None) -> str:
    """From start to finish, or to now while it runs; empty before it starts."""
    start = parse_time(started)
    if start is None:
        return ""
    end = parse_time(finished) or now or datetime.now(UTC)
    return span(max(0.0, (end - start).total_seconds()))
