"""The object store behind the test Kubernetes API server: namespaced Jobs, Pods and
Secrets with the bookkeeping a real API server does (uid, resourceVersion,
creationTimestamp, label selectors, a history of events for watches, cascading deletes
through ownerReferences), so the HTTP layer and the test kubelet share one truth."""

from __future__ import annotations

import base64
import bisect
import copy
import itertools
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    """One resource type the server knows."""

    plural: str
    kind: str
    api_version: str


KINDS = {
    "pods": Kind("pods", "Pod", "v1"),
    "secrets": Kind("secrets", "Secret", "v1"),
    "jobs": Kind("jobs", "Job", "batch/v1"),
}


class ApiError(Exception):
    """An answer other than success, carried to the HTTP layer as a `Status` object."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Event:
    """One change, as a watch sends it; `old` is the object before a MODIFIED."""

    revision: int
    plural: str
    type: str
    obj: Obj
    old: Obj | None


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- selectors --------------------------------------------------------------------------

_SET_REQUIREMENT = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_requirements(selector: str) -> list[str]:
    """Splits on the commas that are not inside `in (a,b)` parentheses."""
    parts, depth, current = [], 0, ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part.strip() for part in parts if part.strip()]


def label_selector_matches(selector: str | None, labels: dict[str, str]) -> bool:
    """Kubernetes label selector syntax: `a=b`, `a==b`, `a!=b`, `a`, `!a`, `a in (x,y)`,
    `a notin (x,y)`, comma meaning and."""
    if not selector:
        return True
    for requirement in _split_requirements(selector):
        set_match = _SET_REQUIREMENT.match(requirement)
        if set_match:
            key, operator, values = set_match.groups()
            choices = {value.strip() for value in values.split(",")}
            if operator == "in" and labels.get(key) not in choices:
                return False
            if operator == "notin" and key in labels and labels[key] in choices:
                return False
        elif "!=" in requirement:
            key, value = (part.strip() for part in requirement.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in requirement:
            key, value = (part.strip() for part in requirement.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif requirement.startswith("!"):
            if requirement[1:].strip() in labels:
                return False
        elif requirement not in labels:
            return False
    return True


def field_selector_matches(selector: str | None, obj: Obj) -> bool:
    """Field selectors by dotted path (`metadata.name=x`, `status.phase!=Running`)."""
    if not selector:
        return True
    for requirement in _split_requirements(selector):
        negate = "!=" in requirement
        path, value = (part.strip() for part in requirement.replace("!=", "=").replace("==", "=").split("=", 1))
        current: Any = obj
        for step in path.split("."):
            current = current.get(step) if isinstance(current, dict) else None
        if (str(current) == value if current is not None else value == "") == negate:
            return False
    return True


def _require_containers(kind: Kind, obj: Obj) -> None:
    """The one validation the kubelet relies on: a pod spec with a named container and an image."""
    if kind.plural == "secrets":
        return
    path = "spec.template.spec" if kind.plural == "jobs" else "spec"
    spec: Any = obj
    for step in path.split("."):
        spec = spec.get(step) if isinstance(spec, dict) else None
    containers = spec.get("containers") if isinstance(spec, dict) else None
    if not containers:
        raise ApiError(422, "Invalid", f"{kind.kind} is invalid: {path}.containers: Required value")
    for index, container in enumerate(containers):
        for field_name in ("name", "image"):
            if not container.get(field_name):
                raise ApiError(422, "Invalid", f"{kind.kind} is invalid: {path}.containers[{index}].{field_name}: "
                                               "Required value")


def _fold_string_data(secret: Obj) -> None:
    """stringData is write-only: the API server stores it base64-encoded in data."""
    for key, value in (secret.pop("stringData", None) or {}).items():
        secret.setdefault("data", {})[key] = base64.b64encode(str(value).encode()).decode()


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (also used for strategic merge patches: lists replace)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# -- the store --------------------------------------------------------------------------


class Store:
    """Objects by (plural, namespace, name), every change numbered by one resourceVersion
    counter and kept in a history that watches replay from."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self._objects: dict[tuple[str, str, str], Obj] = {}
        self._history: list[Event] = []
        # a real server's revisions never start at 0, which a watch reads as "from now"
        self._revisions = itertools.count(101)
        self.revision = 100
        self.compacted_revision = 100
        self.closed = False
        self._listeners: list[Callable[[Event], None]] = []

    # listeners run under the store's lock, in order of the changes
    def subscribe(self, listener: Callable[[Event], None]) -> None:
        with self.changed:
            self._listeners.append(listener)

    def close(self) -> None:
        with self.changed:
            self.closed = True
            self.changed.notify_all()

    def compact(self) -> None:
        """Forgets the history: a watch from any earlier resourceVersion gets 410 Gone."""
        with self.changed:
            self.compacted_revision = self.revision
            self._history.clear()

    def _record(self, plural: str, type_: str, obj: Obj, old: Obj | None) -> None:
        event = Event(self.revision, plural, type_, copy.deepcopy(obj), old)
        self._history.append(event)
        for listener in self._listeners:
            listener(event)
        self.changed.notify_all()

    def _bump(self, obj: Obj) -> None:
        self.revision = next(self._revisions)
        obj["metadata"]["resourceVersion"] = str(self.revision)

    def create(self, plural: str, namespace: str, body: Obj) -> Obj:
        kind = KINDS[plural]
        obj = copy.deepcopy(body)
        metadata = obj.setdefault("metadata", {}) or {}
        obj["metadata"] = metadata
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = metadata["generateName"] + uuid.uuid4().hex[:5]
        name = metadata.get("name")
        if not name:
            raise ApiError(422, "Invalid", f"{kind.kind} is invalid: metadata.name: Required value: "
                                           "name or generateName is required")
        if metadata.get("namespace") not in (None, namespace):
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the namespace "
                                              "sent on the request")
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        metadata.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=now_iso(), generation=1)
        metadata.pop("deletionTimestamp", None)
        _require_containers(kind, obj)
        if plural == "jobs":
            self._default_job(obj)
        elif plural == "secrets":
            _fold_string_data(obj)
        else:
            obj.setdefault("status", {})
        with self.changed:
            key = (plural, namespace, name)
            if key in self._objects:
                resource = plural + ("." + kind.api_version.split("/")[0] if "/" in kind.api_version else "")
                raise ApiError(409, "AlreadyExists", f'{resource} "{name}" already exists')
            self._bump(obj)
            self._objects[key] = obj
            self._record(plural, "ADDED", obj, None)
            return copy.deepcopy(obj)

    @staticmethod
    def _default_job(job: Obj) -> None:
        """The defaults and the selector the API server adds to a Job."""
        uid = job["metadata"]["uid"]
        spec = job.setdefault("spec", {})
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completions", 1)
        spec.setdefault("parallelism", 1)
        spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
        template = spec.setdefault("template", {})
        labels = template.setdefault("metadata", {}).setdefault("labels", {})
        labels.update({"batch.kubernetes.io/controller-uid": uid, "controller-uid": uid,
                       "batch.kubernetes.io/job-name": job["metadata"]["name"], "job-name": job["metadata"]["name"]})
        job.setdefault("status", {})

    def get(self, plural: str, namespace: str, name: str) -> Obj:
        with self.changed:
            obj = self._objects.get((plural, namespace, name))
            if obj is None:
                raise ApiError(404, "NotFound", f'{plural} "{name}" not found')
            return copy.deepcopy(obj)

    def find(self, plural: str, namespace: str, name: str) -> Obj | None:
        try:
            return self.get(plural, namespace, name)
        except ApiError:
            return None

    def list(self, plural: str, namespace: str | None, label_selector: str | None = None,
             field_selector: str | None = None) -> tuple[list[Obj], int]:
        with self.changed:
            items = [copy.deepcopy(obj) for (kind, ns, _), obj in sorted(self._objects.items())
                     if kind == plural and namespace in (None, ns)
                     and label_selector_matches(label_selector, obj["metadata"].get("labels") or {})
                     and field_selector_matches(field_selector, obj)]
            return items, self.revision

    def update(self, plural: str, namespace: str, name: str, change: Callable[[Obj], Obj],
               expected_revision: str | None = None) -> Obj:
        """Replaces an object by `change(current copy)`; a no-op change records nothing."""
        with self.changed:
            key = (plural, namespace, name)
            current = self._objects.get(key)
            if current is None:
                raise ApiError(404, "NotFound", f'{plural} "{name}" not found')
            if expected_revision and expected_revision != current["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {plural} "{name}": the object has '
                                                "been modified; please apply your changes to the latest version "
                                                "and try again")
            updated = change(copy.deepcopy(current))
            if plural == "secrets":
                _fold_string_data(updated)
            for fixed in ("name", "namespace", "uid", "creationTimestamp"):
                updated["metadata"][fixed] = current["metadata"][fixed]
            updated["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            if updated == current:
                return copy.deepcopy(current)
            if updated.get("spec") != current.get("spec"):
                updated["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
            self._bump(updated)
            self._objects[key] = updated
            self._record(plural, "MODIFIED", updated, copy.deepcopy(current))
            return copy.deepcopy(updated)

    def delete(self, plural: str, namespace: str, name: str, propagation: str | None = None) -> Obj:
        """Deletes at once; Foreground and Background also delete what the object owns
        (ownerReferences), recursively, Orphan and none leave it (as for a batch/v1 Job)."""
        with self.changed:
            obj = self._objects.pop((plural, namespace, name), None)
            if obj is None:
                raise ApiError(404, "NotFound", f'{plural} "{name}" not found')
            obj["metadata"]["deletionTimestamp"] = now_iso()
            self._bump(obj)
            self._record(plural, "DELETED", obj, None)
            if propagation in ("Foreground", "Background"):
                uid = obj["metadata"]["uid"]
                for (dependent_plural, ns, dependent_name), dependent in list(self._objects.items()):
                    owners = dependent["metadata"].get("ownerReferences") or []
                    if ns == namespace and any(owner.get("uid") == uid for owner in owners):
                        self.delete(dependent_plural, ns, dependent_name, propagation)
            return copy.deepcopy(obj)

    def events_after(self, revision: int) -> Iterator[Event]:
        """The recorded events after `revision` (call under `changed`)."""
        start = bisect.bisect_right(self._history, revision, key=lambda event: event.revision)
        yield from self._history[start:]
