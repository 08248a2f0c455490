"""Workflow definitions: the checked, typed DAG that a user's definition text must become.

A definition arrives as untrusted text (from the CLI, over gRPC) and everything downstream —
storage, the scheduler, the job runner — needs a shape it can trust. This module is that
single gate: `parse_definition` loads the text (see `documents`) and checks it, returning a
`Definition` (frozen job specs in document order plus the DAG's children and parents) or
raising one `InvalidArgument` that lists *every* problem by place (`jobs[2].args: must be a
list of strings`), so a user can fix a definition in one round trip. It is pure, so the
services and the CLI share it, and `InvalidArgument` is the only exception it raises.
Hostile input is bounded: the size once YAML aliases are expanded is budgeted, the number
of reported problems is capped, and the cycle check is iterative.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypedDict, TypeVar
from urllib.parse import urlsplit

from dagger_svc.core.documents import brief, describe, duplicate_keys, load_document, quote
from dagger_svc.core.graph import find_cycles
from dagger_svc.core.kubernetes import (
    check_settings,
    definition_settings,
    merged,
    pod_settings,
    settings_json,
)
from dagger_svc.core.limits import (
    MAX_DEFINITION_BYTES,
    MAX_JOB_BYTES,
    MAX_JOBS,
    MAX_KUBERNETES_BYTES,
    MAX_RETRIES,
)
from donut_common import names
from donut_common.errors import InvalidArgument, Problem

NAME_PATTERN: Final = f"^{names.JOB_NAME}$"
"""What a job name must match (at most 63 characters)."""

_CYCLE_SHOWN: Final = 12  # jobs of a longer cycle shown (the rest counted)

MAX_PROBLEMS: Final = 1000
"""Reporting stops after this many problems (a pathological document could produce millions)."""

_EXPANSION_BUDGET: Final = 2 * MAX_DEFINITION_BYTES
"""Characters plus list items the checked definition may hold once YAML aliases are expanded.

Text without aliases cannot come near it; a document that reuses one big anchored list or
string thousands of times (a "billion laughs") hits it instead of flooding storage later.
"""

_NAME_RE: Final = re.compile(NAME_PATTERN)
_NAME_RULE: Final = (
    f"must match {NAME_PATTERN} (1 to 63 lowercase letters, digits, '-' or '_', "
    "starting and ending with a letter or digit)"
)
_TOP_FIELDS: Final = ("jobs", "neighbors", "kubernetes")
_JOB_FIELDS: Final = frozenset(
    ("name", "image", "cmd", "args", "workdir_prefix", "inputs", "outputs", "retries", "timeout",
     "kubernetes")
)
_INPUT_FIELDS: Final = frozenset(("origin", "cache", "local"))
_OUTPUT_FIELDS: Final = frozenset(("local", "save"))
_OUTSIDE: Final = "must stay inside the workflow directory"
_T = TypeVar("_T")


# --------------------------------------------------------------------------- the result


@dataclass(frozen=True)
class InputSpec:
    """A file a job needs before it starts, at `local` (relative to the job's work dir).

    With `origin` it is downloaded from that http(s) URL; with `cache` it is copied from the
    files uploaded with the workflow; with neither it must already exist (another job made it).
    """

    local: str
    origin: str = ""
    cache: str = ""

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {}
        if self.origin:
            result["origin"] = self.origin
        if self.cache:
            result["cache"] = self.cache
        result["local"] = self.local
        return result


@dataclass(frozen=True)
class OutputSpec:
    """A file a job produces at `local`; `save` keeps it as a result of the workflow."""

    local: str
    save: bool = False

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {"local": self.local}
        if self.save:
            result["save"] = True
        return result


@dataclass(frozen=True)
class JobSpec:
    """One checked job: a container `image` running `cmd` with `args` in its work dir.

    Paths are normalised (`./a/../b` becomes `b`); `workdir_prefix` is "" for the workflow
    dir itself. `timeout` is in seconds, None for no limit. `kubernetes_json` holds the pod
    settings (the workflow's merged with the job's) as canonical JSON, "" for none; read them
    as `kubernetes`.
    """

    name: str
    image: str
    cmd: str
    args: tuple[str, ...]
    workdir_prefix: str = ""
    inputs: tuple[InputSpec, ...] = ()
    outputs: tuple[OutputSpec, ...] = ()
    retries: int = 0
    timeout: float | None = None
    kubernetes_json: str = ""

    @property
    def kubernetes(self) -> dict[str, Any]:
        """The pod settings in Kubernetes field names, only those given (see `kubernetes.pod_settings`):
        `resources`, `nodeSelector`, `tolerations`, `labels`, `annotations`, `serviceAccountName`,
        `imagePullSecrets` (names), `env` (`{name, value}` sorted by name). Empty when none."""
        settings: dict[str, Any] = json.loads(self.kubernetes_json) if self.kubernetes_json else {}
        return settings

    def to_dict(self) -> dict[str, Any]:
        """This job in the definition format, JSON-able, leaving out fields at their defaults."""
        result: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "cmd": self.cmd,
            "args": list(self.args),
        }
        if self.workdir_prefix:
            result["workdir_prefix"] = self.workdir_prefix
        if self.inputs:
            result["inputs"] = [spec.to_dict() for spec in self.inputs]
        if self.outputs:
            result["outputs"] = [spec.to_dict() for spec in self.outputs]
        if self.retries:
            result["retries"] = self.retries
        if self.timeout is not None:
            whole = self.timeout.is_integer() and abs(self.timeout) < 2**53
            result["timeout"] = int(self.timeout) if whole else self.timeout
        if self.kubernetes_json:
            result["kubernetes"] = definition_settings(self.kubernetes)
        return result

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JobSpec:
        """The inverse of `to_dict`, for trusted input (stored specs); it does not validate."""
        timeout = d.get("timeout")
        return cls(
            name=d["name"],
            image=d["image"],
            cmd=d["cmd"],
            args=tuple(d["args"]),
            workdir_prefix=d.get("workdir_prefix") or "",
            inputs=tuple(
                InputSpec(
                    local=item["local"],
                    origin=item.get("origin") or "",
                    cache=item.get("cache") or "",
                )
                for item in d.get("inputs") or ()
            ),
            outputs=tuple(
                OutputSpec(local=item["local"], save=bool(item.get("save", False)))
                for item in d.get("outputs") or ()
            ),
            retries=int(d.get("retries") or 0),
            timeout=None if timeout is None else float(timeout),
            kubernetes_json=settings_json(pod_settings(d.get("kubernetes") or {})),
        )


class StoredJob(TypedDict):
    """One job of a definition as it is kept: its spec, its children, its place in the document."""

    spec: dict[str, Any]
    next: list[str]
    index: int


@dataclass(frozen=True)
class Definition:
    """A checked workflow: its jobs (document order) and the DAG between them.

    Every job is a key of `children` and of `parents` (an empty tuple when it has none).
    Children keep the order the definition listed them in; parents are in document order.
    """

    jobs: dict[str, JobSpec]
    children: dict[str, tuple[str, ...]]
    parents: dict[str, tuple[str, ...]]

    @classmethod
    def of(cls, jobs: Iterable[JobSpec], children: Mapping[str, Iterable[str]]) -> Definition:
        """The DAG of checked jobs (in document order) with their children: the one place
        where parents are derived. Every child must be one of the jobs."""
        specs = {job.name: job for job in jobs}
        kids = {name: tuple(children.get(name, ())) for name in specs}
        parents: dict[str, list[str]] = {name: [] for name in specs}
        for name, its_kids in kids.items():
            for child in its_kids:
                parents[child].append(name)
        return cls(jobs=specs, children=kids, parents={name: tuple(them) for name, them in parents.items()})

    def stored(self) -> Iterator[StoredJob]:
        """Each job as it is kept (one record per job, so no record grows with the DAG)."""
        for index, (name, spec) in enumerate(self.jobs.items()):
            yield StoredJob(spec=spec.to_dict(), next=list(self.children[name]), index=index)

    @classmethod
    def from_stored(cls, stored: Iterable[StoredJob]) -> Definition:
        """The inverse of `stored`, for trusted input, in any order; it does not validate."""
        entries = sorted(stored, key=lambda entry: entry["index"])
        return cls.of((JobSpec.from_dict(entry["spec"]) for entry in entries),
                      {entry["spec"]["name"]: entry["next"] for entry in entries})

    def to_dict(self) -> dict[str, Any]:
        """Back to the definition format; `validate_document` of it gives an equal Definition."""
        return {
            "jobs": [job.to_dict() for job in self.jobs.values()],
            "neighbors": {name: list(kids) for name, kids in self.children.items() if kids},
        }


# --------------------------------------------------------------------------- entry points


def parse_definition(text: str | bytes) -> Definition:
    """Parse definition text (YAML, or JSON when it starts with `{`) and check it.

    Raises InvalidArgument listing every problem; never any other exception.
    """
    return validate_document(load_document(text))


def validate_document(document: object) -> Definition:
    """Check an already-loaded definition (dicts, lists, scalars); raises InvalidArgument."""
    problems = _Problems()
    try:
        definition = _Validator(problems).document(document)
    except _Stop:
        definition = None
    if problems.items or definition is None:
        raise InvalidArgument(problems.items or [Problem("definition", "is not valid")])
    return definition


# --------------------------------------------------------------------------- validating data


class _Stop(Exception):
    """Stops validation early (too many problems, or too big once expanded)."""


class _Problems:
    def __init__(self) -> None:
        self.items: list[Problem] = []
        self._spent = 0

    def add(self, place: str, message: str) -> None:
        self.items.append(Problem(place, message))
        if len(self.items) >= MAX_PROBLEMS:
            self.items.append(
                Problem("definition", f"too many problems; only the first {MAX_PROBLEMS} are shown")
            )
            raise _Stop

    def spend(self, amount: int) -> None:
        """Charge characters and list items kept from the document against the budget."""
        self._spent += amount
        if self._spent > _EXPANSION_BUDGET:
            self.items.append(
                Problem("definition", "too large once YAML aliases are expanded")
            )
            raise _Stop


class _Validator:
    def __init__(self, problems: _Problems) -> None:
        self.problems = problems
        self.add = problems.add

    def document(self, document: object) -> Definition | None:
        if not isinstance(document, dict):
            self.add("definition", "must be a mapping with a jobs list (and optional neighbors, kubernetes)")
            return None
        raw_jobs = document.get("jobs")
        jobs_usable = isinstance(raw_jobs, (list, tuple)) and 0 < len(raw_jobs) <= MAX_JOBS
        # Names any job entry gives, valid or not, so neighbors don't pile on "unknown job".
        mentioned: set[str] = set()
        if jobs_usable:
            assert isinstance(raw_jobs, (list, tuple))
            for raw in raw_jobs:
                if isinstance(raw, dict):
                    name = raw.get("name")
                    if isinstance(name, str):
                        mentioned.add(name)
        if raw_jobs is None:
            self.add("jobs", "required")
        self.duplicates(document, "")
        specs: dict[str, JobSpec] = {}
        named: dict[str, int] = {}  # valid, unique names -> index (the graph's nodes)
        edges: dict[str, tuple[str, ...]] = {}
        raw_settings = document.get("kubernetes")
        settings = {} if raw_settings is None else check_settings(raw_settings, "kubernetes", self.add)
        for key, value in document.items():
            if key == "jobs":
                if raw_jobs is not None:
                    self.jobs(value, specs, named, settings or {})
            elif key == "kubernetes":
                pass
            elif key == "neighbors":
                edges = self.neighbors(value, mentioned if jobs_usable else None)
            else:
                self.unknown_field("", key, f"expected {', '.join(_TOP_FIELDS)}")
        children = {name: edges.get(name, ()) for name in named}
        for cycle in find_cycles(list(named), children):
            self.add("cycle", _shown(cycle))
        if self.problems.items:
            return None
        return Definition.of(specs.values(), children)

    # ----------------------------------------------------------------- jobs

    def jobs(
        self, value: object, specs: dict[str, JobSpec], named: dict[str, int], settings: Mapping[str, Any]
    ) -> None:
        if not isinstance(value, (list, tuple)) or not value:
            self.add("jobs", "must be a non-empty list of jobs")
            return
        if len(value) > MAX_JOBS:
            self.add("jobs", f"too many jobs ({len(value)}; the limit is {MAX_JOBS})")
            return
        for index, raw in enumerate(value):
            place = f"jobs[{index}]"
            if not isinstance(raw, dict):
                self.add(place, "must be a mapping")
                continue
            spec = self.job(raw, place, named, index, settings)
            if spec is not None:
                specs[spec.name] = spec

    def job(
        self, raw: dict[object, object], place: str, named: dict[str, int], index: int,
        workflow_settings: Mapping[str, Any],
    ) -> JobSpec | None:
        count = len(self.problems.items)
        self.duplicates(raw, place)
        for key in raw:
            if key not in _JOB_FIELDS:
                self.unknown_field(place, key)

        name = raw.get("name")
        if name is None:
            self.add(f"{place}.name", "required")
        elif not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            self.add(f"{place}.name", _NAME_RULE)
        elif name in named:
            self.add(
                f"{place}.name", f"duplicate job name {quote(name)} (also jobs[{named[name]}])"
            )
        else:
            named[name] = index

        image = self.required_text(raw, place, "image")
        cmd = self.required_text(raw, place, "cmd")
        args = self.args(raw.get("args"), f"{place}.args")

        prefix = ""
        raw_prefix = raw.get("workdir_prefix")
        prefix_ok = True
        if raw_prefix is not None:
            checked = self.path(raw_prefix, f"{place}.workdir_prefix", "", allow_root=True)
            prefix_ok = checked is not None
            prefix = checked or ""

        inputs = self.items(raw.get("inputs"), f"{place}.inputs", self.input_spec, prefix_ok, prefix)
        outputs = self.items(
            raw.get("outputs"), f"{place}.outputs", self.output_spec, prefix_ok, prefix
        )

        retries = raw.get("retries")
        if retries is None:
            retries = 0
        elif type(retries) is not int or not 0 <= retries <= MAX_RETRIES:
            self.add(f"{place}.retries", f"must be an integer from 0 to {MAX_RETRIES}")

        timeout: float | None = None
        raw_timeout = raw.get("timeout")
        if raw_timeout is not None:
            timeout = _positive_seconds(raw_timeout)
            if timeout is None:
                self.add(f"{place}.timeout", "must be a number of seconds > 0")

        raw_settings = raw.get("kubernetes")
        settings = {} if raw_settings is None else check_settings(raw_settings, f"{place}.kubernetes", self.add)

        if len(self.problems.items) != count:
            return None
        assert isinstance(name, str) and isinstance(retries, int)
        assert image is not None and cmd is not None and args is not None
        assert inputs is not None and outputs is not None and settings is not None
        pod = settings_json(pod_settings(merged(workflow_settings, settings)))
        if len(pod) > MAX_KUBERNETES_BYTES:
            self.add(f"{place}.kubernetes", f"too large ({len(pod)} bytes once merged with the workflow's; "
                                            f"the limit is {MAX_KUBERNETES_BYTES})")
            return None
        self.problems.spend(len(name) + len(image) + len(cmd) + len(prefix) + len(pod) + 4)
        spec = JobSpec(
            name=name,
            image=image,
            cmd=cmd,
            args=args,
            workdir_prefix=prefix,
            inputs=inputs,
            outputs=outputs,
            retries=retries,
            timeout=timeout,
            kubernetes_json=pod,
        )
        size = len(json.dumps(spec.to_dict()))  # as it is kept: one etcd value per job
        if size > MAX_JOB_BYTES:
            self.add(place, f"too large ({size} bytes as kept; one job may take up to {MAX_JOB_BYTES})")
            return None
        return spec

    def required_text(self, raw: dict[object, object], place: str, key: str) -> str | None:
        value = raw.get(key)
        if value is None:
            self.add(f"{place}.{key}", "required")
            return None
        if not isinstance(value, str) or not value:
            self.add(f"{place}.{key}", "must be a non-empty string")
            return None
        trouble = _text_trouble(value)
        if trouble:
            self.add(f"{place}.{key}", trouble)
            return None
        return value

    def args(self, value: object, place: str) -> tuple[str, ...] | None:
        if value is None:
            self.add(place, "required")
            return None
        if not isinstance(value, (list, tuple)):
            self.add(place, "must be a list of strings")
            return None
        self.problems.spend(len(value))
        wrong = [index for index, arg in enumerate(value) if not isinstance(arg, str)]
        for index in wrong:
            self.add(f"{place}[{index}]", f"must be a string, not {describe(value[index])}")
        if wrong:
            return None
        args: tuple[str, ...] = tuple(value)
        self.problems.spend(sum(map(len, args)))
        ok = True
        for index, arg in enumerate(args):
            trouble = _text_trouble(arg)
            if trouble:
                self.add(f"{place}[{index}]", trouble)
                ok = False
        return args if ok else None

    def items(
        self,
        value: object,
        place: str,
        check: Callable[[dict[object, object], str, bool, str], _T | None],
        prefix_ok: bool,
        prefix: str,
    ) -> tuple[_T, ...] | None:
        if value is None:
            return ()
        if not isinstance(value, (list, tuple)):
            self.add(place, "must be a list")
            return None
        self.problems.spend(len(value))
        result: list[_T] = []
        ok = True
        for index, raw in enumerate(value):
            item_place = f"{place}[{index}]"
            if not isinstance(raw, dict):
                self.add(item_place, "must be a mapping")
                ok = False
                continue
            item = check(raw, item_place, prefix_ok, prefix)
            if item is None:
                ok = False
            else:
                result.append(item)
        return tuple(result) if ok else None

    def input_spec(
        self, raw: dict[object, object], place: str, prefix_ok: bool, prefix: str
    ) -> InputSpec | None:
        count = len(self.problems.items)
        self.duplicates(raw, place)
        for key in raw:
            if key not in _INPUT_FIELDS:
                self.unknown_field(place, key)
        raw_origin, raw_cache = raw.get("origin"), raw.get("cache")
        if raw_origin is not None and raw_cache is not None:
            self.add(place, "give at most one of origin, cache")
        local = self.local(raw.get("local"), f"{place}.local", prefix_ok, prefix)
        origin = ""
        if raw_origin is not None:
            if isinstance(raw_origin, str) and _is_http_url(raw_origin):
                origin = raw_origin
                self.problems.spend(len(origin))
            else:
                self.add(f"{place}.origin", "must be an http(s) URL (http://host/...)")
        cache = ""
        if raw_cache is not None:
            cache = self.path(raw_cache, f"{place}.cache", "", allow_root=False) or ""
        if len(self.problems.items) != count or local is None:
            return None
        return InputSpec(local=local, origin=origin, cache=cache)

    def output_spec(
        self, raw: dict[object, object], place: str, prefix_ok: bool, prefix: str
    ) -> OutputSpec | None:
        count = len(self.problems.items)
        self.duplicates(raw, place)
        for key in raw:
            if key not in _OUTPUT_FIELDS:
                self.unknown_field(place, key)
        local = self.local(raw.get("local"), f"{place}.local", prefix_ok, prefix)
        save = raw.get("save")
        if save is None:
            save = False
        elif not isinstance(save, bool):
            self.add(f"{place}.save", "must be true or false")
        if len(self.problems.items) != count or local is None:
            return None
        assert isinstance(save, bool)
        return OutputSpec(local=local, save=save)

    def local(self, value: object, place: str, prefix_ok: bool, prefix: str) -> str | None:
        if value is None:
            self.add(place, "required")
            return None
        # With a broken prefix only the path's own shape can be checked.
        return self.path(value, place, prefix if prefix_ok else None, allow_root=False)

    def path(self, value: object, place: str, base: str | None, *, allow_root: bool) -> str | None:
        """A relative path, normalised; `base` is where it is relative to (None: unknown)."""
        if not isinstance(value, str) or not value:
            self.add(place, "must be a non-empty relative path")
            return None
        trouble = _text_trouble(value)
        if trouble:
            self.add(place, trouble)
            return None
        if value.startswith("/"):
            self.add(place, "must be a relative path (inside the workflow directory)")
            return None
        self.problems.spend(len(value))
        normal = posixpath.normpath(value)
        if base is not None:
            full = posixpath.normpath(posixpath.join(base, normal)) if base else normal
            if full == ".." or full.startswith("../"):
                self.add(place, _OUTSIDE)
                return None
            if not allow_root and full == (base or "."):
                self.add(place, "must name a file or directory, not the directory it is in")
                return None
        if allow_root and normal == ".":
            return ""
        return normal

    # ----------------------------------------------------------------- neighbors

    def neighbors(self, value: object, known: set[str] | None) -> dict[str, tuple[str, ...]]:
        """Edges by parent name; `known` is None when the jobs are too broken to check names."""
        edges: dict[str, tuple[str, ...]] = {}
        if value is None:
            return edges
        if not isinstance(value, dict):
            self.add("neighbors", "must be a mapping of job name to the jobs that run after it")
            return edges
        self.duplicates(value, "neighbors")
        for key, targets in value.items():
            if not isinstance(key, str):
                self.add("neighbors", f"unknown job {describe(key)}")
                continue
            place = f"neighbors.{brief(key)}"
            if known is not None and key not in known:
                self.add(place, f"unknown job {quote(key)}")
                continue
            if targets is None:
                continue
            if not isinstance(targets, (list, tuple)):
                self.add(place, "must be a list of job names")
                continue
            self.problems.spend(len(targets))
            if not all(isinstance(target, str) for target in targets):
                self.add(place, "must be a list of job names")
                continue
            unique: tuple[str, ...] = tuple(dict.fromkeys(targets))
            if len(unique) != len(targets):
                twice = sorted({target for target in targets if targets.count(target) > 1})
                self.add(place, "lists " + ", ".join(quote(t) for t in twice[:5]) + " more than once")
            if known is not None:
                for target in unique:
                    if target not in known:
                        self.add(place, f"unknown job {quote(target)}")
            edges[key] = unique
        return edges

    def duplicates(self, raw: object, place: str) -> None:
        """A problem for every key the mapping gave more than once."""
        for key in dict.fromkeys(duplicate_keys(raw)):
            where = (f"{place}.{brief(key)}" if place else brief(key)) if isinstance(key, str) else place
            self.add(where or "definition", "given more than once" if isinstance(key, str)
                     else f"key {describe(key)} given more than once")

    def unknown_field(self, place: str, key: object, expected: str = "") -> None:
        suffix = f" ({expected})" if expected else ""
        if isinstance(key, str):
            self.add(f"{place}.{brief(key)}" if place else brief(key), f"unknown field{suffix}")
        else:
            self.add(place or "definition", f"unknown field {describe(key)}{suffix}")


# --------------------------------------------------------------------------- small helpers


def _shown(cycle: list[str]) -> str:
    """A cycle as a path, its middle left out when it is long (the first job closes it)."""
    if len(cycle) <= _CYCLE_SHOWN:
        return " -> ".join(cycle)
    hidden = len(cycle) - _CYCLE_SHOWN
    return " -> ".join([*cycle[:_CYCLE_SHOWN - 3], f"... ({hidden} more)", *cycle[-3:]])


def _text_trouble(value: str) -> str | None:
    """Why a string can't be passed on to a container or a file system, if it can't."""
    if "\x00" in value:
        return "must not contain NUL characters"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "must be valid Unicode text (no lone surrogates)"
    return None


def _is_http_url(value: str) -> bool:
    if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in value):
        return False
    if _text_trouble(value):
        return False
    try:
        parts = urlsplit(value)
        return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False


def _positive_seconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    return seconds
