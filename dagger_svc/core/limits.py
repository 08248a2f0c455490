"""Every limit of a submission, in one place: the service enforces them, the CLI checks the
ones it can before it uploads anything, and the README quotes them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from donut_common.errors import Problem

MAX_DEFINITION_BYTES: Final = 4 * 1024 * 1024
"""The largest definition text accepted, in UTF-8 bytes."""

MAX_JOBS: Final = 10_000
"""The most jobs one workflow may have."""

MAX_JOB_BYTES: Final = 1024 * 1024
"""The largest one job's spec may be as kept (JSON): one etcd value, and etcd takes no
request over 1.5 MiB."""

MAX_RETRIES: Final = 100
"""The most automatic retries a job may ask for."""

MAX_KUBERNETES_BYTES: Final = 16 * 1024
"""The largest one job's `kubernetes:` settings may be (JSON, once merged with the workflow's):
they are copied into every job, and into every pod."""

MAX_PARALLELISM: Final = 1000
"""The most jobs of one workflow that may run at once."""

MAX_NAME_LENGTH: Final = 200
"""The longest workflow name."""

MAX_LOG_BYTES: Final = 1024 ** 3
"""Where a job attempt's log is cut by default (`donut up --max-log-bytes`): a note says
so, and later lines are dropped."""


MAX_LABELS: Final = 32
"""The most labels one workflow may carry."""

_LABEL_NAME = re.compile(r"([a-zA-Z0-9]([-_.a-zA-Z0-9]{0,61}[a-zA-Z0-9])?)?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def label_problems(labels: Mapping[str, str]) -> list[Problem]:
    """What is wrong with a workflow's labels (or a label selector), checked as Kubernetes
    checks its labels, each problem at `labels[key]`."""
    problems = []
    if len(labels) > MAX_LABELS:
        problems.append(Problem("labels", f"at most {MAX_LABELS} labels, not {len(labels)}"))
    for key, value in labels.items():
        place = f"labels[{key}]" if key.isprintable() else f"labels[{key!r}]"
        if not is_label_key(key):
            problems.append(Problem(place, f"the key {LABEL_KEY_RULE}"))
        if not is_label_value(value):
            problems.append(Problem(place, f"the value {LABEL_VALUE_RULE}"))
    return problems


LABEL_KEY_RULE: Final = ("must be a name of up to 63 letters, digits, '-', '_' or '.', starting and ending "
                         "with a letter or digit, optionally after a DNS subdomain and '/'")
LABEL_VALUE_RULE: Final = ("must be empty or up to 63 letters, digits, '-', '_' or '.', starting and ending "
                           "with a letter or digit")


def is_label_key(key: str) -> bool:
    """Whether Kubernetes takes `key` as a label key (a qualified name: `[prefix/]name`)."""
    prefix, _, name = key.rpartition("/")
    return bool(name) and bool(_LABEL_NAME.fullmatch(name)) and (
        "/" not in key or is_dns_subdomain(prefix))


def is_label_value(value: str) -> bool:
    """Whether Kubernetes takes `value` as a label value."""
    return bool(_LABEL_NAME.fullmatch(value))


def is_dns_subdomain(name: str) -> bool:
    """Whether `name` is a DNS-1123 subdomain (what Kubernetes names most objects with)."""
    return len(name) <= 253 and bool(_DNS_SUBDOMAIN.fullmatch(name))


def name_problem(name: str) -> str:
    """What is wrong with a workflow name ("" if nothing)."""
    if len(name) > MAX_NAME_LENGTH:
        return f"must be at most {MAX_NAME_LENGTH} characters"
    if not name.isprintable():
        return "must be one line of printable characters"
    return ""


def submission_problems(name: str, parallelism: int, zero_means: str) -> list[Problem]:
    """What is wrong with a submission's name and parallelism (0 stands for `zero_means`)."""
    problems = []
    if not 0 <= parallelism <= MAX_PARALLELISM:
        problems.append(Problem("parallelism", f"must be from 1 to {MAX_PARALLELISM} (0: {zero_means})"))
    if name_problem(name):
        problems.append(Problem("name", name_problem(name)))
    return problems
