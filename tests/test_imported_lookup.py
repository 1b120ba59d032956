"""Entries imported from persist-to-disk 0.0.7, as the decorator and ``ptd`` see them.

``ptd import-pkl`` stores each entry of a 0.0.7 bucket file under 0.0.7's spelling of the call
(no groupby values, a Namespace as JSON text), marked with the record field ``origin``
(``persist_to_disk.imported``). The decorator's miss path finds such an entry, and only such
an entry, and stores it again under the call's own digest. On disk the mark is what it always
was, a ``+ptd-0.0.7`` suffix of the record's serializer tag, so records imported by earlier
versions stay imported. These tests need no 0.0.7 installation: they write its bucket files
(``pickle.dump({key tuple: result}, protocol=4)``) themselves.
"""

import argparse
import json
import pickle
import sys
from pathlib import Path

import pytest

import persist_to_disk as ptd
from conftest import write_module
from persist_to_disk.cli import main
from persist_to_disk.engine import Record, RecordKind, Store
from persist_to_disk.imported import IMPORTED_ORIGIN, is_imported, legacy_buckets_message
from persist_to_disk.keying import bucket_of, call_digest
from persist_to_disk.serialization import PYTHON_VERSION, dumps, dumps_key

TASKS = """
    import json
    import persist_to_disk as ptd

    COMPUTED = []

    @ptd.persistf(groupby=["dataset"], hashsize=7)
    def score(dataset, x):
        COMPUTED.append(("score", dataset, x))
        return ("computed", dataset, x)

    @ptd.persistf(hashsize=7)
    def train(config, epochs):
        COMPUTED.append(("train", config, epochs))
        return ("computed", str(config), epochs)
"""


@pytest.fixture
def tasks(ptd_env, monkeypatch):
    """The module ``tasks`` (``score`` with groupby, ``train`` without), freshly imported."""
    write_module(ptd_env.project, "tasks.py", TASKS)
    monkeypatch.syspath_prepend(str(ptd_env.project))
    monkeypatch.delitem(sys.modules, "tasks", raising=False)
    import tasks
    yield tasks
    sys.modules.pop("tasks", None)


def write_bucket(leaf: Path, content: dict, bucket: int = 3) -> None:
    """A bucket file as 0.0.7 writes it: the pickled ``{key tuple: result}``, protocol 4."""
    leaf.mkdir(parents=True, exist_ok=True)
    with open(leaf / f"{bucket}.pkl", "wb") as handle:
        pickle.dump(content, handle, protocol=4)


def import_pkl(ptd_env, capsys, files: dict) -> Path:
    """Write 0.0.7 bucket files (``{relative leaf: content}``) and ``ptd import-pkl`` them into
    the project's cache; return the project's cache folder."""
    source = ptd_env.tmp / "cache-0.0.7" / "project-1"
    for relative, content in files.items():
        write_bucket(source / relative, content)
    target = Path(ptd.config.get_project_persist_path())
    assert main(["import-pkl", str(source), str(target)]) == 0
    assert f"Imported {sum(map(len, files.values()))} entries" in capsys.readouterr().out
    return target


def records(leaf: Path) -> list:
    """``(digest, record)`` of every live call stored in ``leaf``."""
    return [(digest, record) for _, digest, record in Store(str(leaf)).scan()]


def test_an_imported_entry_is_found_under_0_0_7_spelling_and_stored_again_under_the_call_digest(
        tasks, ptd_env, capsys):
    target = import_pkl(ptd_env, capsys, {"tasks/score/MNIST": {(("x", 1),): ("imported", 1)}})
    leaf = target / "tasks" / "score" / "MNIST"
    [(imported_digest, imported)] = records(leaf)
    assert imported.origin == IMPORTED_ORIGIN and is_imported(imported)
    assert imported.serializer.startswith("pickle:") and "+" not in imported.serializer
    assert imported_digest == call_digest((), (("x", 1),))  # 0.0.7's spelling: no groupby value

    assert tasks.score("MNIST", 1) == ("imported", 1)
    assert tasks.COMPUTED == []
    stored_again = [(digest, record) for digest, record in records(leaf)
                    if digest != imported_digest]
    assert len(stored_again) == 1
    assert stored_again[0][1].origin == "" and not is_imported(stored_again[0][1])
    assert pickle.loads(stored_again[0][1].value_blob) == ("imported", 1)
    assert tasks.score.is_cached("MNIST", 1)  # the next call is a plain hit on its own digest
    assert tasks.score("MNIST", 1) == ("imported", 1) and tasks.COMPUTED == []


def test_a_result_the_decorator_stored_for_the_text_20_is_never_returned_for_the_number_20(
        tasks, ptd_env, capsys):
    # 0.0.7 names the folder of both "20" and 20 `20`, so an imported entry of that folder
    # serves either; what the decorator computed for one of them serves only that one.
    import_pkl(ptd_env, capsys, {"tasks/score/20": {(("x", 1),): ("imported", 1)}})
    assert tasks.score("20", 2) == ("computed", "20", 2)

    assert tasks.score(20, 2) == ("computed", 20, 2)
    assert tasks.score(20, 1) == ("imported", 1) and tasks.score("20", 1) == ("imported", 1)
    assert tasks.COMPUTED == [("score", "20", 2), ("score", 20, 2)]


def test_a_result_stored_for_the_json_text_of_a_namespace_is_never_returned_for_the_namespace(
        tasks):
    # 0.0.7 spells a Namespace argument as its JSON text, so the look-up under 0.0.7's
    # spelling of train(Namespace) reaches the record of train(<that text>): it is not
    # imported, so it is not taken.
    namespace = argparse.Namespace(lr=0.1, layers=[64, 32])
    text = json.dumps(vars(namespace))
    assert tasks.train(text, 3) == ("computed", text, 3)

    assert tasks.train(namespace, 3) == ("computed", str(namespace), 3)
    assert tasks.COMPUTED == [("train", text, 3), ("train", namespace, 3)]


def test_a_record_an_earlier_version_imported_with_the_ptd_0_0_7_tag_is_still_imported(
        tasks, ptd_env, capsys):
    # Earlier versions marked an imported record by appending "+ptd-0.0.7" to its serializer
    # name, and stored those bytes; write such a record the way they did.
    leaf = Path(ptd.config.get_project_persist_path()) / "tasks" / "score" / "MNIST"
    key = (("x", 5),)
    digest = call_digest((), key)
    blob, serializer = dumps(("imported by 0.0.x", 5), "test")
    old = Record(RecordKind.VALUE, 1_600_000_000.0, 0.0, serializer + "+ptd-0.0.7",
                 PYTHON_VERSION, dumps_key(key), blob)
    meta = {"function": None, "hashsize": 500, "hash_method": None, "groupby": None,
            "leaf": None, "imported_from": "persist-to-disk 0.0.7", "source": "old"}
    Store(str(leaf)).append(bucket_of(digest, 500), digest, old, meta=meta)
    assert any(b"+ptd-0.0.7" in path.read_bytes() for path in leaf.rglob("data.mdb"))

    record = Store(str(leaf)).latest(bucket_of(digest, 500), digest)
    assert (record.serializer, record.origin) == (serializer, IMPORTED_ORIGIN)
    assert is_imported(record)
    assert main(["stats", str(leaf.parent), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["imported"] == 1
    assert tasks.score("MNIST", 5) == ("imported by 0.0.x", 5)
    assert tasks.COMPUTED == []


def test_records_imported_now_keep_the_ptd_0_0_7_tag_on_disk(tasks, ptd_env, capsys):
    target = import_pkl(ptd_env, capsys, {"tasks/score/MNIST": {(("x", 1),): ("imported", 1)}})
    leaf = target / "tasks" / "score" / "MNIST"
    assert any(b"+ptd-0.0.7" in path.read_bytes() for path in leaf.rglob("data.mdb"))


def test_a_0_0_7_bucket_folder_is_refused_naming_ptd_import_pkl_before_the_function_computes(
        tasks):
    assert tasks.score("MNIST", 1) == ("computed", "MNIST", 1)  # creates the function's folder
    leaf = Path(tasks.score.cache_folder()) / "CIFAR"
    write_bucket(leaf, {(("x", 1),): ("0.0.7", 1)})
    before = sorted((path.name, path.stat().st_mtime_ns) for path in leaf.iterdir())

    with pytest.raises(ptd.ForeignFolderError, match="ptd import-pkl") as raised:
        tasks.score("CIFAR", 1)
    assert str(leaf) in str(raised.value) and ".pkl bucket files" in str(raised.value)
    assert tasks.COMPUTED == [("score", "MNIST", 1)]
    assert sorted((path.name, path.stat().st_mtime_ns) for path in leaf.iterdir()) == before


def test_only_visible_pkl_files_of_an_existing_folder_make_it_a_0_0_7_folder(tmp_path):
    assert legacy_buckets_message(str(tmp_path / "missing")) is None
    (tmp_path / "file").write_bytes(b"")
    assert legacy_buckets_message(str(tmp_path / "file")) is None  # the engine refuses files
    (tmp_path / ".hidden.pkl").write_bytes(b"")
    (tmp_path / "notes.txt").write_bytes(b"")
    assert legacy_buckets_message(str(tmp_path)) is None
    (tmp_path / "12.pkl").write_bytes(b"")
    message = legacy_buckets_message(str(tmp_path))
    assert message.startswith(f"{tmp_path} holds .pkl bucket files of persist-to-disk 0.0.7")
    assert "ptd import-pkl" in message and "Nothing was changed" in message


def test_ptd_stats_counts_imported_entries(tasks, ptd_env, capsys):
    target = import_pkl(ptd_env, capsys, {
        "tasks/score/MNIST": {(("x", 1),): ("imported", 1), (("x", 2),): ("imported", 2)},
        "tasks/score/CIFAR": {(("x", 1),): ("imported", 3)}})
    function_folder = target / "tasks" / "score"
    tasks.score("MNIST", 9)  # one entry computed here

    assert main(["stats", str(function_folder), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert (document["entries"], document["imported"]) == (4, 3)
    assert [leaf["imported"] for leaf in document["per_leaf"]] == [1, 2]  # CIFAR, MNIST

    assert main(["stats", str(function_folder)]) == 0
    assert "entries:        4 (3 imported from 0.0.7)" in capsys.readouterr().out
