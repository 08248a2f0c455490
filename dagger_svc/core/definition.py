"""Parses and validates workflow definitions (YAML or JSON) into typed, immutable specs.

Pure: no I/O beyond the text it is given. Every problem is collected with its place
(`jobs[2].args`, `neighbors.banana`, `cycle`) and raised together as InvalidArgument, so
a user fixes a definition in one round; nothing else ever escapes, whatever the input.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import yaml

from donut.errors import InvalidArgument, Problem

MAX_DEFINITION_BYTES = 4 * 1024 * 1024
MAX_JOBS = 10_000
MAX_RETRIES = 100
NAME_PATTERN = r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$"
_NAME = re.compile(NAME_PATTERN)
_JOB_FIELDS = ("name", "image", "cmd", "args", "workdir_prefix", "inputs", "outputs", "retries", "timeout")
_TOP_FIELDS = ("jobs", "neighbors")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class InputSpec:
    local: str
    origin: str = ""
    cache: str = ""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"local": self.local}
        if self.origin:
            d["origin"] = self.origin
        if self.cache:
            d["cache"] = self.cache
        return d


@dataclass(frozen=True)
class OutputSpec:
    local: str
    save: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"local": self.local, "save": True} if self.save else {"local": self.local}


@dataclass(frozen=True)
class JobSpec:
    name: str
    image: str
    cmd: str
    args: tuple[str, ...]
    workdir_prefix: str = ""
    inputs: tuple[InputSpec, ...] = ()
    outputs: tuple[OutputSpec, ...] = ()
    retries: int = 0
    timeout: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "image": self.image, "cmd": self.cmd, "args": list(self.args)}
        if self.workdir_prefix:
            d["workdir_prefix"] = self.workdir_prefix
        if self.inputs:
            d["inputs"] = [i.to_dict() for i in self.inputs]
        if self.outputs:
            d["outputs"] = [o.to_dict() for o in self.outputs]
        if self.retries:
            d["retries"] = self.retries
        if self.timeout is not None:
            d["timeout"] = self.timeout
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JobSpec:
        return cls(
            name=d["name"], image=d["image"], cmd=d["cmd"], args=tuple(d["args"]),
            workdir_prefix=d.get("workdir_prefix", ""),
            inputs=tuple(InputSpec(**i) for i in d.get("inputs", ())),
            outputs=tuple(OutputSpec(**o) for o in d.get("outputs", ())),
            retries=d.get("retries", 0), timeout=d.get("timeout"),
        )


@dataclass(frozen=True)
class Definition:
    jobs: dict[str, JobSpec]
    children: dict[str, tuple[str, ...]]
    parents: dict[str, tuple[str, ...]]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"jobs": [spec.to_dict() for spec in self.jobs.values()]}
        neighbors = {name: list(kids) for name, kids in self.children.items() if kids}
        if neighbors:
            d["neighbors"] = neighbors
        return d


def parse_definition(text: str | bytes) -> Definition:
    """The definition in `text`, or InvalidArgument naming every problem."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    if len(raw) > MAX_DEFINITION_BYTES:
        _refuse("definition", f"too large ({len(raw)} bytes; the limit is 4 MiB)")
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        _refuse("definition", f"not UTF-8 text (byte {e.start})")
    if "\x00" in decoded:
        _refuse("definition", "contains a NUL character")
    try:
        if decoded.lstrip()[:1] == "{":
            document = json.loads(decoded)
        else:
            document = yaml.load(decoded, Loader=_Loader)  # noqa: S506 - a safe loader
    except json.JSONDecodeError as e:
        _refuse("definition", f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}")
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        _refuse("definition", f"not valid YAML: {getattr(e, 'problem', None) or e}{where}")
    except (RecursionError, ValueError, OverflowError) as e:
        _refuse("definition", f"cannot be read: {type(e).__name__}")
    return validate_document(document)


def validate_document(document: object) -> Definition:
    """The same checks on already-loaded data (dicts and lists)."""
    problems: list[Problem] = []
    if not isinstance(document, dict):
        _refuse("definition", "must be a mapping with 'jobs' (and optionally 'neighbors')")
    for key in document:
        if key not in _TOP_FIELDS:
            problems.append(Problem(_text(key), "unknown field (expected jobs, neighbors)"))
    raw_jobs = document.get("jobs")
    jobs: dict[str, JobSpec] = {}
    if raw_jobs is None:
        problems.append(Problem("jobs", "required: a list of jobs"))
    elif not isinstance(raw_jobs, list) or not raw_jobs:
        problems.append(Problem("jobs", "must be a non-empty list of jobs"))
    elif len(raw_jobs) > MAX_JOBS:
        problems.append(Problem("jobs", f"too many jobs ({len(raw_jobs)}; the limit is {MAX_JOBS})"))
    else:
        first_place: dict[str, int] = {}
        for index, raw in enumerate(raw_jobs):
            spec = _job(raw, f"jobs[{index}]", problems)
            if spec is None:
                continue
            if spec.name in first_place:
                problems.append(Problem(f"jobs[{index}].name",
                                        f"duplicate job name '{spec.name}' (also jobs[{first_place[spec.name]}])"))
                continue
            first_place[spec.name] = index
            jobs[spec.name] = spec
    children = _neighbors(document.get("neighbors"), jobs, problems)
    if problems:
        raise InvalidArgument(problems)
    cycle = _find_cycle(children)
    if cycle:
        raise InvalidArgument([Problem("cycle", " -> ".join(cycle))])
    parents: dict[str, list[str]] = {name: [] for name in jobs}
    for name, kids in children.items():
        for kid in kids:
            parents[kid].append(name)
    return Definition(jobs=jobs, children=children, parents={n: tuple(p) for n, p in parents.items()})


def _refuse(place: str, message: str) -> Any:
    raise InvalidArgument([Problem(place, message)])


def _text(value: object) -> str:
    return value if isinstance(value, str) else repr(value)


def _job(raw: object, place: str, problems: list[Problem]) -> JobSpec | None:
    if not isinstance(raw, dict):
        problems.append(Problem(place, "must be a mapping (name, image, cmd, args, ...)"))
        return None
    before = len(problems)
    for key in raw:
        if key not in _JOB_FIELDS:
            problems.append(Problem(f"{place}.{_text(key)}", "unknown field"))
    name = raw.get("name")
    if name is None:
        problems.append(Problem(f"{place}.name", "required"))
    elif not isinstance(name, str) or not _NAME.match(name):
        problems.append(Problem(f"{place}.name", f"must match {NAME_PATTERN} (lower-case letters, digits, "
                                                 "'-' and '_', at most 63 characters)"))
    for key in ("image", "cmd"):
        value = raw.get(key)
        if value is None:
            problems.append(Problem(f"{place}.{key}", "required"))
        elif not isinstance(value, str) or not value.strip():
            problems.append(Problem(f"{place}.{key}", "must be a non-empty string"))
    args = raw.get("args")
    if args is None:
        problems.append(Problem(f"{place}.args", "required (a list of strings; [] for none)"))
    elif not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        problems.append(Problem(f"{place}.args", "must be a list of strings"))
    elif any("\x00" in a for a in args):
        problems.append(Problem(f"{place}.args", "must not contain NUL characters"))
    prefix = raw.get("workdir_prefix", "")
    if prefix != "" and _path_problem(prefix, "") is not None:
        problems.append(Problem(f"{place}.workdir_prefix", _path_problem(prefix, "") or ""))
        prefix = ""
    inputs = _inputs(raw.get("inputs"), f"{place}.inputs", prefix if isinstance(prefix, str) else "", problems)
    outputs = _outputs(raw.get("outputs"), f"{place}.outputs", prefix if isinstance(prefix, str) else "", problems)
    retries = raw.get("retries", 0)
    if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= MAX_RETRIES:
        problems.append(Problem(f"{place}.retries", f"must be an integer from 0 to {MAX_RETRIES}"))
    timeout = raw.get("timeout")
    if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool)
                                or not 0 < timeout < float("inf")):
        problems.append(Problem(f"{place}.timeout", "must be a number of seconds > 0"))
    if len(problems) > before:
        return None
    return JobSpec(name=name, image=raw["image"], cmd=raw["cmd"], args=tuple(args), workdir_prefix=prefix,
                   inputs=inputs, outputs=outputs, retries=retries,
                   timeout=float(timeout) if timeout is not None else None)


def _path_problem(path: object, prefix: str) -> str | None:
    """Why `path` (relative to the job's work dir `prefix`) is unacceptable, if it is."""
    if not isinstance(path, str) or not path:
        return "must be a non-empty relative path"
    if "\x00" in path:
        return "must not contain NUL characters"
    if path.startswith("/"):
        return "must be relative (inside the workflow directory)"
    joined = posixpath.normpath(posixpath.join(prefix, path))
    if joined == ".." or joined.startswith("../"):
        return "must stay inside the workflow directory"
    return None


def _inputs(raw: object, place: str, prefix: str, problems: list[Problem]) -> tuple[InputSpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.append(Problem(place, "must be a list of inputs"))
        return ()
    specs = []
    for i, item in enumerate(raw):
        here = f"{place}[{i}]"
        if not isinstance(item, dict):
            problems.append(Problem(here, "must be a mapping with local (and origin or cache)"))
            continue
        for key in item:
            if key not in ("local", "origin", "cache"):
                problems.append(Problem(f"{here}.{_text(key)}", "unknown field"))
        local, origin, cache = item.get("local"), item.get("origin", ""), item.get("cache", "")
        if "origin" in item and "cache" in item:
            problems.append(Problem(here, "give at most one of origin, cache"))
        if local is None:
            problems.append(Problem(f"{here}.local", "required"))
        elif (why := _path_problem(local, prefix)) is not None:
            problems.append(Problem(f"{here}.local", why))
        if "origin" in item and not _is_http_url(origin):
            problems.append(Problem(f"{here}.origin", "must be an http(s) URL"))
        if "cache" in item and (why := _path_problem(cache, "")) is not None:
            problems.append(Problem(f"{here}.cache", why))
        specs.append(InputSpec(local=local if isinstance(local, str) else "",
                               origin=origin if isinstance(origin, str) else "",
                               cache=cache if isinstance(cache, str) else ""))
    return tuple(specs)


def _outputs(raw: object, place: str, prefix: str, problems: list[Problem]) -> tuple[OutputSpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.append(Problem(place, "must be a list of outputs"))
        return ()
    specs = []
    for i, item in enumerate(raw):
        here = f"{place}[{i}]"
        if not isinstance(item, dict):
            problems.append(Problem(here, "must be a mapping with local (and save)"))
            continue
        for key in item:
            if key not in ("local", "save"):
                problems.append(Problem(f"{here}.{_text(key)}", "unknown field"))
        local, save = item.get("local"), item.get("save", False)
        if local is None:
            problems.append(Problem(f"{here}.local", "required"))
        elif (why := _path_problem(local, prefix)) is not None:
            problems.append(Problem(f"{here}.local", why))
        if not isinstance(save, bool):
            problems.append(Problem(f"{here}.save", "must be true or false"))
        specs.append(OutputSpec(local=local if isinstance(local, str) else "", save=save is True))
    return tuple(specs)


def _is_http_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        url = urlparse(value)
    except ValueError:
        return False
    return url.scheme in ("http", "https") and bool(url.netloc)


def _neighbors(raw: object, jobs: dict[str, JobSpec], problems: list[Problem]) -> dict[str, tuple[str, ...]]:
    children: dict[str, list[str]] = {name: [] for name in jobs}
    if raw is None:
        return {name: () for name in jobs}
    if not isinstance(raw, dict):
        problems.append(Problem("neighbors", "must be a mapping of job -> list of jobs"))
        return {name: () for name in jobs}
    for key, value in raw.items():
        place = f"neighbors.{_text(key)}"
        if not isinstance(key, str) or key not in jobs:
            problems.append(Problem(place, f"unknown job '{_text(key)}'"))
            continue
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(Problem(place, "must be a list of job names"))
            continue
        seen: set[str] = set()
        for kid in value:
            if kid not in jobs:
                problems.append(Problem(place, f"unknown job '{kid}'"))
            elif kid not in seen:
                seen.add(kid)
                children[key].append(kid)
    return {name: tuple(kids) for name, kids in children.items()}


def _find_cycle(children: Mapping[str, tuple[str, ...]]) -> list[str]:
    """One cycle as a closed path (a -> b -> a), or []; iterative, O(jobs + edges)."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(children, WHITE)
    for root in children:
        if colour[root] != WHITE:
            continue
        path = [root]
        stack = [iter(children[root])]
        colour[root] = GREY
        while stack:
            kid = next(stack[-1], None)
            if kid is None:
                stack.pop()
                colour[path.pop()] = BLACK
            elif colour[kid] == GREY:
                return [*path[path.index(kid):], kid]
            elif colour[kid] == WHITE:
                colour[kid] = GREY
                path.append(kid)
                stack.append(iter(children[kid]))
    return []
