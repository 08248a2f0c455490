"""Each storage backend, driven directly: layout, hashing, ranges, listing, validation, atomicity;
and what only LocalStorage has: sidecars and symbolic links."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellar_svc.storage import FileRef, LocalStorage, Storage
from donut_common.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied

from .conftest import Backend, all_files


def cache(path: str, scope: str = "up1") -> FileRef:
    return FileRef("cache", scope, "", path)


def result(job: str, path: str, scope: str = "wf1") -> FileRef:
    return FileRef("result", scope, job, path)


def read(storage: Storage, ref: FileRef, offset: int = 0, length: int = 0) -> bytes:
    _, chunks = storage.open(ref, offset, length)
    return b"".join(chunks)


def test_round_trip_hashes_while_streaming_and_lays_files_out_by_ref(storage: Storage, backend: Backend) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    chunks = [data[i : i + 100_000] for i in range(0, len(data), 100_000)]

    info = storage.put(result("train", "out/model.bin"), chunks)

    assert info.ref == result("train", "out/model.bin")
    assert info.size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert [f for f in backend.everything() if f.endswith("result/wf1/train/out/model.bin")]
    assert read(storage, info.ref) == data
    opened, _ = storage.open(info.ref)
    assert opened == info == storage.stat(info.ref)


def test_empty_file(storage: Storage) -> None:
    info = storage.put(cache("empty"), [])
    assert (info.size, info.sha256) == (0, hashlib.sha256(b"").hexdigest())
    assert read(storage, cache("empty")) == b""


def test_ranges(storage: Storage) -> None:
    data = bytes(range(256)) * 10_000
    storage.put(cache("f"), [data])
    assert read(storage, cache("f"), 1000, 5000) == data[1000:6000]
    assert read(storage, cache("f"), 1000) == data[1000:]
    assert read(storage, cache("f"), len(data) - 3, 100) == data[-3:]
    assert read(storage, cache("f"), len(data)) == b""
    info, _ = storage.open(cache("f"), 10, 10)
    assert info.size == len(data)  # the info describes the whole file


@pytest.mark.parametrize(
    ("offset", "length", "place"), [(2561, 0, "offset"), (-1, 0, "offset"), (0, -1, "length")]
)
def test_bad_ranges(storage: Storage, offset: int, length: int, place: str) -> None:
    storage.put(cache("f"), [b"x" * 2560])
    with pytest.raises(InvalidArgument) as e:
        storage.open(cache("f"), offset, length)
    assert [p.place for p in e.value.problems] == [place]


def test_stat_uses_the_sidecar_instead_of_rehashing(local_storage: LocalStorage, root: Path) -> None:
    local_storage.put(cache("a/b.txt"), [b"hello"])
    meta_path = root / ".meta" / "cache" / "up1" / "a" / "b.txt"
    meta = json.loads(meta_path.read_text())
    assert meta["sha256"] == hashlib.sha256(b"hello").hexdigest()

    meta["sha256"] = "f" * 64  # a re-hash would not return this
    meta_path.write_text(json.dumps(meta))
    assert local_storage.stat(cache("a/b.txt")).sha256 == "f" * 64


@pytest.mark.parametrize("damage", ["delete", "garbage", "replace data"])
def test_a_missing_or_stale_sidecar_is_rebuilt(
    local_storage: LocalStorage, root: Path, damage: str
) -> None:
    local_storage.put(cache("f"), [b"old"], owner="u1")
    meta_path = root / ".meta" / "cache" / "up1" / "f"
    expected = b"old"
    if damage == "delete":
        meta_path.unlink()
    elif damage == "garbage":
        meta_path.write_text("{not json")
    else:  # another version appeared behind the sidecar's back (new inode and size)
        expected = b"newer"
        (root / "cache" / "up1" / "g").write_bytes(expected)
        os.replace(root / "cache" / "up1" / "g", root / "cache" / "up1" / "f")

    info = local_storage.stat(cache("f"))

    assert (info.size, info.sha256) == (len(expected), hashlib.sha256(expected).hexdigest())
    if damage == "replace data":
        # a reader never overwrites a sidecar (it may be a writer's, about to match), and
        # the path keeps its owner
        assert info.owner == "u1"
        assert json.loads(meta_path.read_text())["sha256"] == hashlib.sha256(b"old").hexdigest()
    else:
        assert json.loads(meta_path.read_text())["sha256"] == info.sha256


def test_overwrite_replaces_content_and_info(storage: Storage) -> None:
    first = storage.put(cache("f"), [b"first version"])
    second = storage.put(cache("f"), [b"second"])
    assert read(storage, cache("f")) == b"second"
    assert storage.stat(cache("f")) == second
    assert second.sha256 != first.sha256
    assert [i.ref.path for i in storage.list("cache", "up1")] == ["f"]


def test_list_by_kind_scope_and_job(storage: Storage) -> None:
    storage.put(result("train", "model.bin"), [b"m"])
    storage.put(result("train", "logs/train.log"), [b"l"])
    storage.put(result("eval", "score.json"), [b"s"])
    storage.put(result("eval", "x", scope="wf2"), [b"other workflow"])
    storage.put(cache("model.bin", scope="wf1"), [b"same scope, other kind"])
    storage.put(FileRef("log", "wf1", "train", "1.log"), [b"a job's log"])

    def listed(kind: str, scope: str, job: str = "") -> set[tuple[str, str]]:
        return {(i.ref.job, i.ref.path) for i in storage.list(kind, scope, job)}

    assert listed("result", "wf1") == {
        ("train", "model.bin"),
        ("train", "logs/train.log"),
        ("eval", "score.json"),
    }
    assert listed("result", "wf1", "train") == {("train", "model.bin"), ("train", "logs/train.log")}
    assert listed("result", "wf2") == {("eval", "x")}
    assert listed("cache", "wf1") == {("", "model.bin")}
    assert listed("archive", "wf1") == set()
    assert listed("log", "wf1") == {("train", "1.log")}
    assert listed("result", "nope") == set()
    assert listed("result", "wf1", "nojob") == set()
    info = next(i for i in storage.list("result", "wf1", "eval"))
    assert info == storage.stat(result("eval", "score.json"))


def test_not_found_names_the_file(storage: Storage) -> None:
    storage.put(cache("dir/f"), [b"x"])
    for ref in (cache("missing.txt"), cache("dir"), cache("dir/f/g"), result("j", "x")):
        with pytest.raises(NotFound, match=str(ref)):
            storage.stat(ref)
        with pytest.raises(NotFound, match=str(ref)):
            storage.open(ref)


@pytest.mark.parametrize(
    ("ref", "places"),
    [
        (cache("../x"), ["path"]),
        (cache("a/../../x"), ["path"]),
        (cache("/abs"), ["path"]),
        (cache(""), ["path"]),
        (cache("a\0b"), ["path"]),
        (cache("a//b"), ["path"]),
        (cache("./a"), ["path"]),
        (cache("a/"), ["path"]),
        (cache("a/.cellar-tmp-x"), ["path"]),
        (cache("x" * 256), ["path"]),
        (cache("f", scope=""), ["scope"]),
        (cache("f", scope="../up"), ["scope"]),
        (cache("f", scope="has space"), ["scope"]),
        (cache("f", scope=".hidden"), ["scope"]),
        (cache("f", scope="x" * 129), ["scope"]),
        (FileRef("cache", "up1", "job", "f"), ["job"]),
        (result("", "f"), ["job"]),
        (result("../j", "f"), ["job"]),
        (FileRef("temp", "up1", "", "f"), ["kind"]),
        (FileRef("cache", "bad scope", "", "../x"), ["scope", "path"]),
    ],
)
def test_invalid_refs_name_the_field(storage: Storage, backend: Backend, ref: FileRef, places: list[str]) -> None:
    for call in (
        lambda: storage.put(ref, [b"x"]),
        lambda: storage.stat(ref),
        lambda: storage.open(ref),
    ):
        with pytest.raises(InvalidArgument) as e:
            call()
        assert [p.place for p in e.value.problems] == places
        assert str(e.value).startswith(f"{places[0]}: ")
    assert backend.everything() == []


@pytest.mark.parametrize(
    ("kind", "scope", "job", "place"),
    [("cache", "up1", "j", "job"), ("result", "../x", "", "scope"), ("", "up1", "", "kind")],
)
def test_invalid_listings(
    storage: Storage, kind: str, scope: str, job: str, place: str
) -> None:
    with pytest.raises(InvalidArgument) as e:
        storage.list(kind, scope, job)
    assert [p.place for p in e.value.problems] == [place]


def test_an_interrupted_put_leaves_nothing_and_keeps_the_old_version(storage: Storage, backend: Backend) -> None:
    storage.put(cache("kept"), [b"old"])

    def failing() -> Iterator[bytes]:
        yield b"partial data"
        if backend.name == "local":  # S3 holds a first part in memory (see test_s3.py for larger ones)
            assert backend.temporaries(), "the data should be going to a temp file"
        raise ConnectionError("client went away")

    for path in ("kept", "new/file"):
        with pytest.raises(ConnectionError):
            storage.put(cache(path), failing())

    assert read(storage, cache("kept")) == b"old"
    with pytest.raises(NotFound):
        storage.stat(cache("new/file"))
    assert backend.temporaries() == []
    assert [i.ref.path for i in storage.list("cache", "up1")] == ["kept"]


def test_a_put_meeting_the_deletion_of_its_scope_stores_nothing(local_storage: LocalStorage, root: Path) -> None:
    local_storage.put(result("train", "kept.bin", scope="wf2"), [b"another workflow's"])
    before = all_files(root)
    local_storage.put(result("train", "old.bin"), [b"old"])

    def chunks() -> Iterator[bytes]:
        yield b"half"
        local_storage.delete("result", "wf1")  # e.g. the workflow deleted while a copy is made
        yield b" and the rest"

    with pytest.raises(FailedPrecondition, match="deleted during the upload"):
        local_storage.put(result("train", "new.bin"), chunks(), owner="alice")
    assert all_files(root) == before
    assert local_storage.list("result", "wf1") == []
    assert local_storage.usage("alice") == 0


def test_a_failed_write_stops_the_upload_and_leaves_nothing(local_storage: LocalStorage, root: Path) -> None:
    local_storage.put(cache("f"), [b"old"])
    before = all_files(root)
    received: list[bytes] = []

    def chunks() -> Iterator[bytes]:
        yield b"fine"
        yield "not bytes: the writing thread fails on it"  # type: ignore[misc]
        for _ in range(100):
            received.append(b"more")
            yield b"more"

    with pytest.raises(TypeError):
        local_storage.put(cache("f"), chunks())
    assert len(received) < 100  # the upload stopped being read
    assert all_files(root) == before
    assert read(local_storage, cache("f")) == b"old"


def test_temp_files_are_not_listed(local_storage: LocalStorage, root: Path) -> None:
    local_storage.put(cache("f"), [b"x"])
    (root / "cache" / "up1" / ".cellar-tmp-abc").write_bytes(b"half")
    assert [i.ref.path for i in local_storage.list("cache", "up1")] == ["f"]


def test_a_file_and_a_directory_of_the_same_name_clash(storage: Storage) -> None:
    storage.put(cache("a/b"), [b"x"])
    with pytest.raises(FailedPrecondition):
        storage.put(cache("a"), [b"y"])
    with pytest.raises(FailedPrecondition):
        storage.put(cache("a/b/c"), [b"y"])
    assert read(storage, cache("a/b")) == b"x"


def test_a_linked_directory_does_not_let_writes_escape(
    local_storage: LocalStorage, root: Path, outside: Path
) -> None:
    (root / "cache" / "up1").mkdir(parents=True)
    (root / "cache" / "up1" / "evil").symlink_to(outside)
    (root / "cache" / "up2").symlink_to(outside)

    for ref in (cache("evil/planted"), cache("evil/sub/planted"), cache("planted", scope="up2")):
        with pytest.raises(PermissionDenied, match="symbolic link"):
            local_storage.put(ref, [b"x"])
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


def test_a_linked_file_does_not_let_reads_escape(
    local_storage: LocalStorage, root: Path, outside: Path
) -> None:
    local_storage.put(cache("ok"), [b"fine"])
    (root / "cache" / "up1" / "leak").symlink_to(outside / "secret.txt")
    (root / "cache" / "up1" / "leakdir").symlink_to(outside)
    (root / "cache" / "up2").symlink_to(outside)

    for ref in (cache("leak"), cache("leakdir/secret.txt"), cache("secret.txt", scope="up2")):
        with pytest.raises(PermissionDenied):
            local_storage.open(ref)
        with pytest.raises(PermissionDenied):
            local_storage.stat(ref)
    assert [i.ref.path for i in local_storage.list("cache", "up1")] == ["ok"]
    assert local_storage.list("cache", "up2") == []
    assert (outside / "secret.txt").read_text() == "secret"


def test_owners_are_the_users_who_stored_in_the_scope(storage: Storage) -> None:
    assert storage.owners("cache", "up1") == set()
    storage.put(cache("a"), [b"1"], owner="u1")
    storage.put(cache("deep/b"), [b"2"], owner="u1")
    assert storage.owners("cache", "up1") == {"u1"}

    def broken() -> Iterator[bytes]:
        yield b"partial"
        raise OSError("cut off")

    with pytest.raises(OSError):
        storage.put(cache("c"), broken(), owner="u2")
    assert storage.owners("cache", "up1") == {"u1"}  # an upload that failed stored nothing
    storage.put(cache("c"), [b"3"], owner="u2")
    assert storage.owners("cache", "up1") == {"u1", "u2"}
    assert storage.owners("cache", "up2") == set()


def test_deleting_a_scope_leaves_nothing_of_it_and_follows_no_link(
    local_storage: LocalStorage, root: Path, outside: Path
) -> None:
    local_storage.put(cache("a.csv"), [b"1"], owner="alice")
    local_storage.put(cache("deep/b.csv"), [b"2"], owner="alice")
    local_storage.put(cache("kept.csv", scope="up2"), [b"3"], owner="alice")
    (root / "cache" / "up1" / "deep" / "out").symlink_to(outside)
    local_storage.delete("cache", "up1")
    assert [p for p in all_files(root) if "up1" in p] == []
    assert not (root / "cache" / "up1").exists() and local_storage.owners("cache", "up1") == set()
    assert [i.ref.path for i in local_storage.list("cache", "up2")] == ["kept.csv"]
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    local_storage.delete("cache", "never-there")
    (root / "cache" / "up3").symlink_to(outside)
    with pytest.raises(PermissionDenied, match="symbolic link"):
        local_storage.delete("cache", "up3")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    with pytest.raises(InvalidArgument, match="scope"):
        local_storage.delete("cache", "../up2")


def test_deleting_a_scope_leaves_nothing_of_it(storage: Storage, backend: Backend) -> None:
    storage.put(cache("a.csv"), [b"1"], owner="alice")
    storage.put(cache("deep/b.csv"), [b"2"], owner="bob")
    storage.put(cache("kept.csv", scope="up2"), [b"3"], owner="alice")
    storage.put(result("j", "kept.csv", scope="up1"), [b"4"], owner="alice")
    storage.delete("cache", "up1")
    assert [p for p in backend.everything() if "cache/up1/" in p] == []
    assert storage.owners("cache", "up1") == set() and storage.list("cache", "up1") == []
    assert [i.ref.path for i in storage.list("cache", "up2")] == ["kept.csv"]
    assert [i.ref.path for i in storage.list("result", "up1")] == ["kept.csv"]
    storage.delete("cache", "never-there")
    with pytest.raises(InvalidArgument, match="scope"):
        storage.delete("cache", "../up2")


def test_usage_counts_the_bytes_of_the_files_stored_with_an_owner(storage: Storage) -> None:
    assert storage.usage("u1") == 0
    storage.put(cache("a"), [b"123"], owner="u1")
    storage.put(result("j", "b"), [b"12345"], owner="u1")
    storage.put(cache("c", scope="up2"), [b"1234567"], owner="u2")
    assert (storage.usage("u1"), storage.usage("u2")) == (8, 7)
    storage.put(cache("a"), [b"1234567890"], owner="u2")  # now u2's
    assert (storage.usage("u1"), storage.usage("u2")) == (5, 17)
    storage.delete("result", "wf1")
    storage.delete("cache", "up2")
    assert (storage.usage("u1"), storage.usage("u2")) == (0, 10)


def test_sweep_removes_only_stale_temporary_files(local_storage: LocalStorage, root: Path) -> None:
    local_storage.put(cache("f"), [b"kept"])
    stale, fresh = root / "cache" / "up1" / ".cellar-tmp-stale", root / "cache" / "up1" / ".cellar-tmp-fresh"
    stale.write_bytes(b"left by a crash")
    fresh.write_bytes(b"an upload in progress")
    day_ago = os.stat(stale).st_mtime - 86400
    os.utime(stale, (day_ago, day_ago))
    before = all_files(root)

    assert local_storage.sweep(older_than=3600) == 1

    assert all_files(root) == [f for f in before if not f.endswith("stale")]
    assert read(local_storage, cache("f")) == b"kept"
