"""Documents: definition text (YAML, or JSON) turned into plain Python data, safely.

A workflow definition arrives as untrusted text, and before `definition.py` can check it,
it has to become dicts, lists and scalars. `load_document` does that, raising only
`InvalidArgument` (with the line and column of a syntax error, where there is one). The
text is capped at `MAX_DEFINITION_BYTES` and must be UTF-8. YAML is built iteratively from
libyaml's events, with nesting capped (libyaml's C composer recurses and its scanner is
quadratic in flow depth), only SafeLoader's tags, one document, and aliases resolved to
shared objects, so alias cycles are harmless; the validator budgets their expanded size.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Final

import yaml
from yaml.constructor import SafeConstructor

from dagger_svc.core.limits import MAX_DEFINITION_BYTES
from donut_common.errors import InvalidArgument, Problem

_MAX_YAML_DEPTH: Final = 100
"""A valid definition nests 5 deep; far deeper YAML is rejected before libyaml chokes on it."""


class LoadedMapping(dict[object, object]):
    """A mapping as loaded, with the keys it gave more than once (the last value is kept;
    the validator refuses the document, naming each one by its place)."""

    def __init__(self) -> None:
        super().__init__()
        self.duplicates: list[object] = []


def duplicate_keys(value: object) -> list[object]:
    """The keys a loaded mapping gave more than once."""
    return value.duplicates if isinstance(value, LoadedMapping) else []


def load_document(text: str | bytes) -> object:
    """Load definition text (YAML, or JSON when it starts with `{`) as plain Python data.

    Raises InvalidArgument (one problem at place "definition"); never any other exception.
    """
    if isinstance(text, str):
        size = len(text.encode("utf-8", "surrogatepass"))
    elif isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text)
        size = len(text)
    else:
        raise InvalidArgument([Problem("definition", "must be text (str or bytes)")])
    if size > MAX_DEFINITION_BYTES:
        raise InvalidArgument(
            [Problem("definition", f"too large ({size} bytes; the limit is 4 MiB)")]
        )
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as error:
            raise InvalidArgument(
                [Problem("definition", f"not valid UTF-8 (bad byte at offset {error.start})")]
            ) from None
    elif not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise InvalidArgument(
                [Problem("definition", f"not valid UTF-8 (lone surrogate at {error.start})")]
            ) from None
    assert isinstance(text, str)
    if text.startswith("\ufeff"):
        text = text[1:]
    if text.lstrip().startswith("{"):
        return _load_json(text)
    return _load_yaml(text)


def _json_mapping(pairs: list[tuple[str, object]]) -> LoadedMapping:
    mapping = LoadedMapping()
    for key, value in pairs:
        if key in mapping:
            mapping.duplicates.append(key)
        mapping[key] = value
    return mapping


def _load_json(text: str) -> object:
    try:
        return json.loads(text, object_pairs_hook=_json_mapping)
    except json.JSONDecodeError as error:
        message = f"not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})"
    except RecursionError:
        message = "not valid JSON: nested too deeply"
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - e.g. an integer literal with too many digits
        message = f"not valid JSON: {brief(str(error))}"
    raise InvalidArgument([Problem("definition", message)])


class _YamlProblem(Exception):
    def __init__(self, message: str, mark: Any) -> None:
        super().__init__(message)
        self.message = message
        self.mark = mark


def _load_yaml(text: str) -> object:
    try:
        return _build_yaml(text)
    except _YamlProblem as error:
        message = _with_mark(error.message, error.mark)
    except yaml.MarkedYAMLError as error:
        what = error.problem or error.context or "syntax error"
        message = _with_mark(what, error.problem_mark or error.context_mark)
    except yaml.YAMLError as error:
        message = brief(str(error))
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - a scalar constructor's ValueError and the like
        message = brief(str(error)) or type(error).__name__
    raise InvalidArgument([Problem("definition", f"not valid YAML: {message}")])


def _with_mark(message: str, mark: Any) -> str:
    message = brief(message)
    if mark is None:
        return message
    return f"{message} (line {mark.line + 1}, column {mark.column + 1})"


_YAML_LOADER: Final[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR_TAG: Final = "tag:yaml.org,2002:str"
_SEQ_TAGS: Final = frozenset((None, "!", "tag:yaml.org,2002:seq"))
_MAP_TAGS: Final = frozenset((None, "!", "tag:yaml.org,2002:map"))
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"
_VALUE_TAG: Final = "tag:yaml.org,2002:value"
_SCALAR_CONSTRUCTORS: Final[dict[str, Callable[[Any, Any], object]]] = {
    tag: SafeConstructor.yaml_constructors[tag]
    for tag in (
        "tag:yaml.org,2002:null",
        "tag:yaml.org,2002:bool",
        "tag:yaml.org,2002:int",
        "tag:yaml.org,2002:float",
        "tag:yaml.org,2002:timestamp",
        "tag:yaml.org,2002:binary",
    )
}


class _Merge:
    """Marks a `<<` key: its value's mappings are merged into the enclosing mapping."""


_MERGE_KEY: Final = _Merge()
_NO_KEY: Final = object()


class _Frame:
    __slots__ = ("container", "key", "merges", "mark")

    def __init__(self, container: list[object] | LoadedMapping, mark: Any) -> None:
        self.container = container
        self.key: object = _NO_KEY
        self.merges: list[object] = []
        self.mark = mark


def _build_yaml(text: str) -> object:
    """Build Python data from libyaml's event stream, iteratively.

    PyYAML's own composer (in C for CSafeLoader) recurses per nesting level and builds a
    node tree with marks before constructing anything, which is both a crash risk on deep
    input and most of the load time. Building straight from events keeps SafeLoader's
    meaning — the same implicit types, anchors and aliases as shared objects, `<<` merge
    keys — while bounding depth, and it is several times faster (10,000 jobs: ~0.4 s, not ~1.7 s).
    """
    loader = _YAML_LOADER(text)
    try:
        resolvers: dict[Any, list[tuple[str, re.Pattern[str]]]] = loader.yaml_implicit_resolvers
        wildcard = resolvers.get(None, [])
        constructor = SafeConstructor()
        anchors: dict[str, object] = {}
        stack: list[_Frame] = []
        root: object = None
        documents = 0
        get_event = loader.get_event
        while True:
            event = get_event()
            kind = type(event)
            is_merge = False
            value: object
            if kind is yaml.ScalarEvent:
                tag = event.tag
                text_value: str = event.value
                if tag is None or tag == "!":
                    tag = _STR_TAG
                    if event.implicit[0]:
                        for candidate, pattern in resolvers.get(text_value[:1], wildcard):
                            if pattern.match(text_value):
                                tag = candidate
                                break
                if tag == _STR_TAG:
                    value = text_value
                elif tag == _MERGE_TAG:
                    value, is_merge = "<<", True
                elif tag == _VALUE_TAG:
                    value = "="
                else:
                    construct = _SCALAR_CONSTRUCTORS.get(tag)
                    if construct is None:
                        raise _YamlProblem(f"unsupported tag {quote(tag)}", event.start_mark)
                    node = yaml.ScalarNode(tag, text_value, event.start_mark, event.end_mark)
                    value = construct(constructor, node)
                if event.anchor is not None:
                    anchors[event.anchor] = value
            elif kind is yaml.AliasEvent:
                if event.anchor not in anchors:
                    raise _YamlProblem(
                        f"found undefined alias {quote(event.anchor)}", event.start_mark
                    )
                value = anchors[event.anchor]
            elif kind is yaml.SequenceStartEvent or kind is yaml.MappingStartEvent:
                is_sequence = kind is yaml.SequenceStartEvent
                if event.tag not in (_SEQ_TAGS if is_sequence else _MAP_TAGS):
                    raise _YamlProblem(f"unsupported tag {quote(event.tag)}", event.start_mark)
                if len(stack) >= _MAX_YAML_DEPTH:
                    raise _YamlProblem(
                        f"nested more than {_MAX_YAML_DEPTH} levels deep", event.start_mark
                    )
                value = [] if is_sequence else LoadedMapping()
                if event.anchor is not None:
                    anchors[event.anchor] = value
            elif kind is yaml.SequenceEndEvent:
                stack.pop()
                continue
            elif kind is yaml.MappingEndEvent:
                frame = stack.pop()
                if frame.merges:
                    _apply_merges(frame)
                continue
            elif kind is yaml.DocumentStartEvent:
                documents += 1
                if documents > 1:
                    raise _YamlProblem(
                        "expected a single document, found another", event.start_mark
                    )
                continue
            elif kind is yaml.StreamEndEvent:
                return root
            else:  # StreamStartEvent, DocumentEndEvent
                continue

            if not stack:
                root = value
            else:
                frame = stack[-1]
                container = frame.container
                if type(container) is list:
                    container.append(value)
                elif frame.key is _NO_KEY:
                    if is_merge:
                        frame.key = _MERGE_KEY
                    else:
                        try:
                            hash(value)
                        except TypeError:
                            raise _YamlProblem(
                                "found a mapping key that is a list or mapping", event.start_mark
                            ) from None
                        frame.key = value
                else:
                    assert isinstance(container, LoadedMapping)
                    if frame.key is _MERGE_KEY:
                        frame.merges.append(value)
                    else:
                        if frame.key in container:
                            container.duplicates.append(frame.key)
                        container[frame.key] = value
                    frame.key = _NO_KEY
            if kind is yaml.SequenceStartEvent or kind is yaml.MappingStartEvent:
                assert isinstance(value, (list, LoadedMapping))
                stack.append(_Frame(value, event.start_mark))
    finally:
        loader.dispose()


def _apply_merges(frame: _Frame) -> None:
    """`<<` merge keys as SafeLoader does them: own keys win, then earlier merged mappings."""
    sources: list[dict[object, object]] = []
    for merged in frame.merges:
        if isinstance(merged, dict):
            sources.append(merged)
        elif isinstance(merged, list) and all(isinstance(item, dict) for item in merged):
            sources.extend(reversed(merged))
        else:
            raise _YamlProblem(
                "expected a mapping or list of mappings for merging (<<)", frame.mark
            )
    target = frame.container
    assert isinstance(target, dict)
    own = dict(target)
    target.clear()
    for source in sources:
        target.update(source)
    target.update(own)


def brief(text: str, limit: int = 200) -> str:
    """`text`, cut short for a message if it is long."""
    return text if len(text) <= limit else text[:limit] + "…"


def quote(text: str | None) -> str:
    """`text` (briefly) in quotes, for a message."""
    return repr(brief(text or "", 80))


def describe(value: object) -> str:
    """A short, safe rendering of any key or value (never a huge or recursive repr)."""
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**50:
        return "(a huge integer)"
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"(a {type(value).__name__})"
