"""Pod settings a definition may give its jobs: the restricted `kubernetes:` part.

A definition may set a few pod fields for every job (a top-level `kubernetes:` mapping) and
for one job (a `kubernetes:` mapping on the job). Only fields that can't break the job
runner or reach past the job's own pod are allowed, each checked as Kubernetes checks it, so
a bad value is refused when the workflow is submitted (with its place) rather than when a
pod is created. The labels, annotations and environment variables donut sets itself are
reserved. The result is one plain dict per job in Kubernetes field names, which the
Kubernetes executor copies into the pod; the local executor ignores it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from dagger_svc.core.documents import brief, describe, duplicate_keys, quote
from dagger_svc.core.limits import (
    LABEL_KEY_RULE,
    LABEL_VALUE_RULE,
    is_dns_subdomain,
    is_label_key,
    is_label_value,
)

FIELDS: Final = (
    "resources", "nodeSelector", "tolerations", "labels", "annotations",
    "serviceAccountName", "imagePullSecrets", "env",
)
"""The fields a `kubernetes:` mapping may give."""

RESOURCES: Final = ("cpu", "memory", "nvidia.com/gpu")
"""The resources a job may request or be limited to."""

_RESOURCE_KINDS: Final = ("requests", "limits")
_TOLERATION_FIELDS: Final = ("key", "operator", "value", "effect", "tolerationSeconds")
_OPERATORS: Final = ("Exists", "Equal")
_EFFECTS: Final = ("NoSchedule", "PreferNoSchedule", "NoExecute")
_RESERVED_PREFIX: Final = "donut/"  # labels and annotations donut sets on its pods
_RESERVED_ENV: Final = "DONUT_"  # variables the job wrapper is given
_QUANTITY: Final = re.compile(r"(\d+(\.\d*)?|\.\d+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?\d+)?")
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DNS_RULE: Final = ("must be a DNS-1123 subdomain (up to 253 lowercase letters, digits, '-' or '.', "
                    "starting and ending with a letter or digit)")

Report = Callable[[str, str], None]
"""Records one problem: (place, message)."""


def check_settings(value: object, place: str, report: Report) -> dict[str, Any] | None:
    """The `kubernetes:` mapping at `place`, checked: its fields in the definition format
    (quantities as strings, `env` a mapping), or None after reporting every problem."""
    return _Checker(report).settings(value, place)


def merged(workflow: Mapping[str, Any], job: Mapping[str, Any]) -> dict[str, Any]:
    """A job's checked settings over its workflow's: mappings merged key by key (and the
    resource requests and limits resource by resource), lists and strings replaced."""
    result: dict[str, Any] = dict(workflow)
    for field, value in job.items():
        if field == "resources":
            before = workflow.get(field, {})
            result[field] = {kind: {**before.get(kind, {}), **value.get(kind, {})}
                             for kind in _RESOURCE_KINDS if kind in before or kind in value}
        elif isinstance(value, dict):
            result[field] = {**workflow.get(field, {}), **value}
        else:
            result[field] = value
    return result


def pod_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings in the definition format as the Kubernetes executor takes them: Kubernetes
    field names, only the fields that say something, `env` a list of `{name, value}`
    sorted by name. For trusted input (checked or stored settings); it does not validate."""
    result: dict[str, Any] = {}
    for field in FIELDS:
        value = settings.get(field)
        if field == "resources" and value:
            value = {kind: dict(value[kind]) for kind in _RESOURCE_KINDS if value.get(kind)}
        if field == "env" and value:
            value = [{"name": name, "value": value[name]} for name in sorted(value)]
        if value:
            result[field] = value
    return result


def definition_settings(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of `pod_settings`: how the settings are written in a definition."""
    result = dict(pod)
    if "env" in result:
        result["env"] = {item["name"]: item["value"] for item in result["env"]}
    return result


def settings_json(pod: Mapping[str, Any]) -> str:
    """Pod settings as one canonical JSON text ("" for none), equal settings giving equal text."""
    return json.dumps(pod, sort_keys=True, separators=(",", ":")) if pod else ""


class _Checker:
    def __init__(self, report: Report) -> None:
        self.report = report

    def settings(self, value: object, place: str) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.report(place, f"must be a mapping of {', '.join(FIELDS)}")
            return None
        ok = self.unique(value, place)
        result: dict[str, Any] = {}
        for field, raw in value.items():
            where = f"{place}.{brief(field)}" if isinstance(field, str) else place
            checked: object = None
            if field == "resources":
                checked = self.resources(raw, where)
            elif field in ("nodeSelector", "labels"):
                checked = self.mapping(raw, where, self.label_entry, reserve=field == "labels")
            elif field == "annotations":
                checked = self.mapping(raw, where, self.annotation_entry, reserve=True)
            elif field == "tolerations":
                checked = self.listed(raw, where, self.toleration)
            elif field == "serviceAccountName":
                checked = self.dns_name(raw, where)
            elif field == "imagePullSecrets":
                checked = self.listed(raw, where, self.dns_name)
            elif field == "env":
                checked = self.mapping(raw, where, self.env_entry, reserve=False)
            else:
                self.not_allowed(field, place, FIELDS)
            if checked is None:
                ok = False
            else:
                result[str(field)] = checked
        return result if ok else None

    # ------------------------------------------------------------- fields

    def resources(self, value: object, place: str) -> dict[str, dict[str, str]] | None:
        if not isinstance(value, dict):
            self.report(place, "must be a mapping with requests and/or limits")
            return None
        ok = self.unique(value, place)
        result: dict[str, dict[str, str]] = {}
        for kind, amounts in value.items():
            if kind not in _RESOURCE_KINDS:
                ok = self.not_allowed(kind, place, _RESOURCE_KINDS)
                continue
            where = f"{place}.{kind}"
            if not isinstance(amounts, dict):
                self.report(where, f"must be a mapping of resource ({', '.join(RESOURCES)}) to quantity")
                ok = False
                continue
            ok = self.unique(amounts, where) and ok
            result[kind] = {}
            for resource, amount in amounts.items():
                if resource not in RESOURCES:
                    shown = quote(resource) if isinstance(resource, str) else describe(resource)
                    self.report(where, f"unknown resource {shown} (allowed: {', '.join(RESOURCES)})")
                    ok = False
                    continue
                quantity = _quantity(amount)
                if quantity is None:
                    self.report(f"{where}[{resource}]", "must be a Kubernetes quantity such as 500m, 2, 1.5 or 4Gi, "
                                                        f"not {describe(amount)}")
                    ok = False
                    continue
                if resource == "nvidia.com/gpu" and not quantity.isdigit():
                    self.report(f"{where}[{resource}]", f"must be a whole number of GPUs, not {describe(amount)}")
                    ok = False
                    continue
                result[kind][resource] = quantity
        return result if ok else None

    def toleration(self, value: object, place: str) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.report(place, f"must be a mapping of {', '.join(_TOLERATION_FIELDS)}")
            return None
        ok = self.unique(value, place)
        for field in value:
            if field not in _TOLERATION_FIELDS:
                ok = self.not_allowed(field, place, _TOLERATION_FIELDS)
        result: dict[str, Any] = {}
        for field in ("key", "operator", "value", "effect"):
            raw = value.get(field)
            if raw is None:
                continue
            if not isinstance(raw, str):
                self.report(f"{place}.{field}", f"must be a string, not {describe(raw)}")
                ok = False
            elif field == "key" and raw and not is_label_key(raw):
                self.report(f"{place}.{field}", LABEL_KEY_RULE)
                ok = False
            elif field == "value" and not is_label_value(raw):
                self.report(f"{place}.{field}", LABEL_VALUE_RULE)
                ok = False
            elif field == "operator" and raw not in _OPERATORS:
                self.report(f"{place}.{field}", f"must be one of {', '.join(_OPERATORS)}, not {quote(raw)}")
                ok = False
            elif field == "effect" and raw not in _EFFECTS:
                self.report(f"{place}.{field}", f"must be one of {', '.join(_EFFECTS)}, not {quote(raw)}")
                ok = False
            else:
                result[field] = raw
        seconds = value.get("tolerationSeconds")
        if seconds is not None:
            if type(seconds) is not int or abs(seconds) >= 2**63:
                self.report(f"{place}.tolerationSeconds", f"must be a whole number of seconds, not {describe(seconds)}")
                ok = False
            elif value.get("effect") != "NoExecute":
                self.report(f"{place}.tolerationSeconds", "needs effect NoExecute")
                ok = False
            else:
                result["tolerationSeconds"] = seconds
        if not ok:
            return None
        if result.get("operator") == "Exists" and result.get("value"):
            self.report(f"{place}.value", "must be empty when the operator is Exists")
            return None
        if not result.get("key") and result.get("operator") != "Exists":
            self.report(f"{place}.operator", "must be Exists when no key is given")
            return None
        return result

    def dns_name(self, value: object, place: str) -> str | None:
        if not isinstance(value, str) or not is_dns_subdomain(value):
            self.report(place, _DNS_RULE if isinstance(value, str) else f"must be a string, not {describe(value)}")
            return None
        return value

    # ------------------------------------------------------------- mapping entries

    def label_entry(self, key: str, value: object, place: str) -> str | None:
        if not isinstance(value, str):
            self.report(place, f"must be a string, not {describe(value)}")
            return None
        ok = self.label_key(key, place)
        if not is_label_value(value):
            self.report(place, f"the value {LABEL_VALUE_RULE}")
            ok = False
        return value if ok else None

    def annotation_entry(self, key: str, value: object, place: str) -> str | None:
        if not isinstance(value, str):
            self.report(place, f"must be a string, not {describe(value)}")
            return None
        ok = self.label_key(key, place)
        if "\x00" in value or not _valid_unicode(value):
            self.report(place, "the value must be text (no NUL characters or lone surrogates)")
            ok = False
        return value if ok else None

    def env_entry(self, name: str, value: object, place: str) -> str | None:
        ok = True
        if not _ENV_NAME.fullmatch(name):
            self.report(place, "the name must be letters, digits and '_', not starting with a digit")
            ok = False
        elif name.startswith(_RESERVED_ENV):
            self.report(place, f"names starting with {_RESERVED_ENV} are donut's own")
            ok = False
        if not isinstance(value, str):
            self.report(place, f"must be a string, not {describe(value)} (quote numbers and booleans)")
            return None
        if "\x00" in value or not _valid_unicode(value):
            self.report(place, "the value must be text (no NUL characters or lone surrogates)")
            ok = False
        return value if ok else None

    def label_key(self, key: str, place: str) -> bool:
        if not is_label_key(key):
            self.report(place, f"the key {LABEL_KEY_RULE}")
            return False
        if key.startswith(_RESERVED_PREFIX):
            self.report(place, f"keys under {_RESERVED_PREFIX} are donut's own")
            return False
        return True

    # ------------------------------------------------------------- shapes

    def mapping(
        self, value: object, place: str, entry: Callable[[str, object, str], str | None], *, reserve: bool
    ) -> dict[str, str] | None:
        if not isinstance(value, dict):
            self.report(place, "must be a mapping of strings to strings")
            return None
        ok = self.unique(value, place)
        result: dict[str, str] = {}
        for key, raw in value.items():
            if not isinstance(key, str):
                self.report(place, f"keys must be strings, not {describe(key)}")
                ok = False
                continue
            checked = entry(key, raw, f"{place}[{brief(key, 80)}]")
            if checked is None:
                ok = False
            else:
                result[key] = checked
        return result if ok else None

    def listed(self, value: object, place: str, item: Callable[[object, str], Any]) -> list[Any] | None:
        if not isinstance(value, (list, tuple)):
            self.report(place, "must be a list")
            return None
        result = [item(raw, f"{place}[{index}]") for index, raw in enumerate(value)]
        return None if any(checked is None for checked in result) else result

    def unique(self, value: object, place: str) -> bool:
        """Whether the mapping gave each key once (a problem for each key given more often)."""
        twice = list(dict.fromkeys(duplicate_keys(value)))
        for key in twice:
            self.report(f"{place}.{brief(key)}" if isinstance(key, str) else place, "given more than once")
        return not twice

    def not_allowed(self, key: object, place: str, allowed: tuple[str, ...]) -> bool:
        """Reports a field that isn't one of `allowed`; False, for `ok = self.not_allowed(...)`."""
        rule = f"not allowed (allowed: {', '.join(allowed)})"
        if isinstance(key, str):
            self.report(f"{place}.{brief(key)}", rule)
        else:
            self.report(place, f"{describe(key)} {rule}")
        return False


def _quantity(value: object) -> str | None:
    """A resource amount as the Kubernetes quantity text, if it is one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        text = str(value) if 0 <= value < 10**30 else ""
    elif isinstance(value, float):
        text = repr(value) if math.isfinite(value) and value >= 0 else ""
    elif isinstance(value, str):
        text = value
    else:
        return None
    return text if len(text) <= 64 and _QUANTITY.fullmatch(text) else None


def _valid_unicode(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
