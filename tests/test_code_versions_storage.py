"""Code versions in storage (issue 13): every record says which code computed it, and the tools
count, compact and export by it.

* **Record format 3.** A record with code (``Record.code``: the decorator's ``<fingerprint>|
  <version>`` tag) is written as format 3: the 2 spare bytes of format 2 hold the code's
  length, and the code follows the Python version, inside both checksums. A record without
  code is still written as format 2, byte for byte as before; formats 1, 2 and 3 are read.
  A hit on a format-3 record decodes its texts from the cache, as a format-2 hit does.
* **Counting.** ``CallStore.code_versions()`` counts every stored value record per code
  version (superseded ones included) with its last write, and when it last wrote a result
  still current in its call (``last_current``: a record counts as written no earlier than the
  records of its call before it); ``ptd stats`` shows it.
* **Compaction.** ``CompactionPolicy(keep_fingerprint=...)`` drops calls whose newest record
  was written by code with another known fingerprint, whatever its ``version=`` label, and
  keeps those of unknown code (``""``); ``ptd compact --drop-old-code`` keeps per function the
  fingerprint that wrote its last result in any of its groupby leaves, or the one
  ``--keep-code`` names, and drops nothing of a function whose newest code cannot be told
  (a tie, dates ahead of the clock). Each compaction logs INFO lines.
* **Moving results.** The shared tier's objects carry the code, signed with the rest of the
  header; ``ptd export-pkl`` writes, of several results with one 0.0.7 key, the one created last.
"""

import importlib
import io
import json
import logging
import os
import pickle
import struct
import sys
import time
import zlib
from pathlib import Path

import pytest

import persist_to_disk as ptd
from conftest import run_python, write_module
from persist_to_disk.cli import main
from persist_to_disk.cli.units import iso_time
from persist_to_disk.engine import (POOL, CodeVersionStats, CompactionPolicy, LocalStorage,
                                    Record, RecordKind, Store, keys)
from persist_to_disk.engine import records as records_module
from persist_to_disk.engine.records import DamagedRecordError, decode_record, encode_record

PREFIX = keys.record_prefix(7, b"\x11" * 16)
CODE = "0123456789abcdef0123456789abcdef|'v2'"
OTHER_CODE = "fedcba9876543210fedcba9876543210|'v1'"
FINGERPRINT = CODE.partition("|")[0]
NEVER = float("-inf")
SECRET = b"team secret for the code version tests"


def value_record(code: str = "", created: float = 1_700_000_000.5, value: bytes = b"value" * 5,
                 key: bytes = b"key-blob" * 3, sequence: int = 3) -> Record:
    return Record(RecordKind.VALUE, created, 2.25, "pickle:5", "3.11.7", key, value, sequence,
                  code=code)


def format_2_bytes(record: Record, prefix: bytes) -> bytes:
    """A record as the version before code versions wrote it (format 2), built here from the
    format's description, not by the engine."""
    serializer, python = record.serializer.encode(), record.python_version.encode()
    texts = serializer + python
    fields = struct.pack("<BBxxddHHI", 2, int(record.kind), record.created,
                         record.compute_seconds, len(serializer), len(python),
                         len(record.key_blob))
    head_crc = zlib.crc32(texts, zlib.crc32(fields, zlib.crc32(prefix)))
    body = fields + struct.pack("<I", head_crc) + record.key_blob + record.value_blob + texts
    return body + struct.pack("<I", zlib.crc32(body, zlib.crc32(prefix)))


def writer(payload: bytes):
    def write(out):
        out.write(payload)
        return "pickle:5"
    return write


def put_raw(store: Store, bucket: int, digest: bytes, sequence: int, data: bytes) -> None:
    key = keys.record_key(keys.record_prefix(bucket, digest), sequence)
    POOL.write(store.path, store.durability, lambda txn: txn.put(key, data))


def digest_for(name: str) -> bytes:
    return name.encode().rjust(16, b"0")[-16:]


# =================================================================================================
# 1. The record
# =================================================================================================
def test_a_record_with_code_is_format_3_and_one_without_is_format_2_byte_for_byte_as_before():
    plain = value_record()
    assert encode_record(plain, PREFIX) == format_2_bytes(plain, PREFIX)
    assert decode_record(encode_record(plain, PREFIX), 3, True, PREFIX).code == ""

    coded = value_record(CODE)
    data = encode_record(coded, PREFIX)
    assert data[0] == 3 and struct.unpack_from("<H", data, 2) == (len(CODE),)
    assert data[-4 - len(CODE):-4] == CODE.encode()
    assert decode_record(data, 3, True, PREFIX) == coded
    assert decode_record(memoryview(data), 3, True, PREFIX) == coded
    assert decode_record(data, 3, False, PREFIX) == coded._replace(value_blob=b"")
    assert records_module.record_problem(PREFIX, data) is None


def test_every_byte_of_a_format_3_record_is_covered_by_its_checksum():
    """The code is checked like every other byte: a flipped bit in it is a damaged record,
    never a result attributed to other code."""
    data = encode_record(value_record(CODE), PREFIX)
    for offset in range(len(data)):
        for bit in (0, 7):
            damaged = bytearray(data)
            damaged[offset] ^= 1 << bit
            with pytest.raises(DamagedRecordError):
                decode_record(bytes(damaged), 3, True, PREFIX)
            with pytest.raises(DamagedRecordError):
                decode_record(memoryview(bytes(damaged)), 3, True, PREFIX)
            assert records_module.record_problem(PREFIX, bytes(damaged)) is not None


def test_the_header_check_covers_the_code_without_reading_the_value():
    coded = value_record(CODE)
    data = encode_record(coded, PREFIX)
    key_start = data.index(coded.key_blob)
    value_end = data.index(coded.value_blob) + len(coded.value_blob)
    for offset in range(len(data) - 4):
        damaged = bytearray(data)
        damaged[offset] ^= 1
        if key_start <= offset < value_end:
            assert decode_record(bytes(damaged), 3, False, PREFIX).code == CODE
        else:  # the fields, their checksum and the texts, code included
            with pytest.raises(DamagedRecordError):
                decode_record(bytes(damaged), 3, False, PREFIX)


def test_records_of_format_2_still_read_with_unknown_code_beside_format_3_ones(tmp_path):
    store = Store(tmp_path / "leaf", "fast")
    digest = digest_for("old call")
    old = value_record(created=10.0, sequence=0)
    put_raw(store, 0, digest, 0, format_2_bytes(old, keys.record_prefix(0, digest)))

    assert store.latest(0, digest) == old._replace(code="")
    store.append(0, digest, value_record(CODE, created=20.0))
    assert store.latest(0, digest).code == CODE
    assert store.code_versions() == {"": CodeVersionStats(1, 10.0, NEVER),
                                     CODE: CodeVersionStats(1, 20.0, 20.0)}


def test_python_version_and_code_that_run_together_alike_decode_apart():
    """The text cache is keyed by the texts' bytes: it must check where each field ends."""
    one = value_record("0abc")
    other = one._replace(python_version="3.11.70", code="abc")
    for _ in range(2):  # the second round is served by the cache
        assert decode_record(encode_record(one, PREFIX), 3, True, PREFIX) == one
        assert decode_record(encode_record(other, PREFIX), 3, True, PREFIX) == other


def test_a_repeated_hit_on_a_format_3_record_decodes_its_texts_only_once(monkeypatch):
    """What keeps a format-3 hit as cheap as a format-2 one: no text is decoded again."""
    decoded = []
    real = records_module._decode_texts
    monkeypatch.setattr(records_module, "_decode_texts",
                        lambda *args: decoded.append(args) or real(*args))
    records_module._TEXTS.clear()
    data = encode_record(value_record(CODE), PREFIX)
    for _ in range(5):
        assert decode_record(data, 3, True, PREFIX).code == CODE
    assert len(decoded) == 1


def test_a_code_that_is_not_ascii_or_too_long_is_refused_before_anything_is_stored(tmp_path):
    store = Store(tmp_path / "leaf", "fast")
    for code, why in (("naïve", "ASCII"), ("x" * 70_000, "at most 65535")):
        with pytest.raises(ValueError, match=why):
            encode_record(value_record(code), PREFIX)
        with pytest.raises(ValueError, match=why):
            store.append_value(0, digest_for("call"), writer(b"v"), created=1.0,
                               compute_seconds=0.0, python_version="3.11.7", key_blob=b"k",
                               code=code)
    assert not store.exists()


# =================================================================================================
# 2. The store
# =================================================================================================
def test_append_value_stores_the_code_and_append_keeps_a_records_code(tmp_path):
    store = Store(tmp_path / "leaf", "fast")
    sequence = store.append_value(0, digest_for("a"), writer(b"computed"), created=5.0,
                                  compute_seconds=1.0, python_version="3.11.7", key_blob=b"k",
                                  code=CODE)
    found = store.latest(0, digest_for("a"))
    assert (found.code, found.value_blob, found.sequence) == (CODE, b"computed", sequence)
    assert store.load_latest(0, digest_for("a"), lambda r: r.code)[1] == CODE
    store.append(0, digest_for("b"), value_record(OTHER_CODE))
    assert store.latest(0, digest_for("b"), with_value=False).code == OTHER_CODE
    assert [r.code for _, _, r in store.scan(with_values=False)] == [CODE, OTHER_CODE]


def test_code_versions_count_every_stored_result_per_code_with_its_last_write(tmp_path):
    store = Store(tmp_path / "leaf", "fast")
    assert store.code_versions() == {}
    store.append(0, digest_for("a"), value_record(OTHER_CODE, created=100.0))
    store.append(0, digest_for("a"), value_record(CODE, created=200.0))   # supersedes it
    store.append(1, digest_for("b"), value_record(OTHER_CODE, created=150.0))
    store.append(1, digest_for("c"), value_record("", created=50.0))
    store.append(1, digest_for("c"), value_record("", created=60.0))
    store.delete(1, digest_for("b"))                                      # a tombstone

    assert store.code_versions() == {
        "": CodeVersionStats(records=2, last_written=60.0, last_current=NEVER),
        CODE: CodeVersionStats(records=1, last_written=200.0, last_current=200.0),
        OTHER_CODE: CodeVersionStats(records=2, last_written=150.0, last_current=150.0),
    }
    assert LocalStorage().open_store(store.path).code_versions() == store.code_versions()


# =================================================================================================
# 3. Compaction
# =================================================================================================
def _three_codes(store: Store) -> None:
    """Call a: old code then new code; b: old code only; c: unknown code; d: new code."""
    store.append(0, digest_for("a"), value_record(OTHER_CODE, created=100.0))
    store.append(0, digest_for("a"), value_record(CODE, created=300.0))
    store.append(0, digest_for("b"), value_record(OTHER_CODE, created=200.0))
    store.append(0, digest_for("c"), value_record("", created=50.0))
    store.append(0, digest_for("d"), value_record(CODE, created=310.0))


def test_keep_code_drops_calls_of_other_code_and_keeps_unknown_code_dry_run_first(tmp_path):
    store = Store(tmp_path / "leaf", "fast")
    _three_codes(store)
    policy = CompactionPolicy(keep_fingerprint=FINGERPRINT)

    dry = store.compact(policy, dry_run=True)
    assert (dry.kept, dry.old_code, dry.superseded) == (3, 1, 1)
    assert store.stats().versions == 5, "a dry run changes nothing"
    assert store.latest(0, digest_for("b")) is not None

    report = store.compact(policy)
    assert (report.kept, report.old_code, report.superseded) == (3, 1, 1)
    assert store.latest(0, digest_for("b")) is None, "b's only result was old code's"
    assert store.latest(0, digest_for("a")).code == CODE
    assert store.latest(0, digest_for("c")).code == "", "unknown code is kept"
    assert store.code_versions() == {"": CodeVersionStats(1, 50.0, NEVER),
                                     CODE: CodeVersionStats(2, 310.0, 310.0)}


def test_keep_code_keeps_results_written_after_it_was_found_the_newest(tmp_path):
    """A job that started with newer code while ``ptd compact`` decided loses nothing."""
    store = Store(tmp_path / "leaf", "fast")
    _three_codes(store)
    newer = "99999999999999999999999999999999"
    store.append(0, digest_for("e"), value_record(newer, created=400.0))

    report = store.compact(CompactionPolicy(keep_fingerprint=FINGERPRINT,
                                            keep_fingerprint_as_of=310.0))
    assert report.old_code == 1
    assert store.latest(0, digest_for("e")).code == newer
    assert store.latest(0, digest_for("b")) is None


@pytest.mark.parametrize("options", [dict(keep_fingerprint=""), dict(keep_fingerprint=3),
                                     dict(keep_fingerprint=CODE),
                                     dict(keep_fingerprint_as_of=1.0),
                                     dict(keep_fingerprint=FINGERPRINT,
                                          keep_fingerprint_as_of=float("nan"))])
def test_a_policy_that_would_keep_no_code_version_is_refused(options):
    """A whole tag (``fingerprint|label``) is refused too: it would match no record."""
    with pytest.raises(ValueError, match="keep_fingerprint"):
        CompactionPolicy(**options)


def test_compaction_logs_its_start_the_switch_and_what_it_dropped_at_info(tmp_path, caplog):
    store = Store(tmp_path / "leaf", "fast")
    _three_codes(store)
    with caplog.at_level(logging.INFO, logger="persist_to_disk"):
        store.compact(CompactionPolicy(keep_fingerprint=FINGERPRINT), dry_run=True)
        dry_lines = [r.getMessage() for r in caplog.records]
        caplog.clear()
        store.compact(CompactionPolicy(keep_fingerprint=FINGERPRINT))
    lines = [r.getMessage() for r in caplog.records]
    assert all(r.levelno == logging.INFO and r.name == "persist_to_disk"
               for r in caplog.records)
    assert any("dry run started" in line for line in dry_lines)
    assert any("would drop 1 superseded versions, 1 calls of other code versions" in line
               for line in dry_lines)
    started, switched, outcome = lines
    assert store.path in started and "generation 0 into 1" in started
    assert FINGERPRINT in started
    assert "switched from generation 0 to 1" in switched
    assert "dropped 1 superseded versions, 1 calls of other code versions; kept 3 calls" in outcome


def test_a_version_label_alone_never_makes_a_result_old_code(tmp_path):
    """``version=("v2", model)`` selects results as much as it bumps them: of the kept
    fingerprint, every label is kept."""
    store = Store(tmp_path / "leaf", "fast")
    store.append(0, digest_for("bert"), value_record(FINGERPRINT + "|('v2', 'bert')", 100.0))
    store.append(0, digest_for("gpt"), value_record(FINGERPRINT + "|('v2', 'gpt')", 200.0))
    store.append(0, digest_for("old"), value_record(OTHER_CODE, created=300.0))
    report = store.compact(CompactionPolicy(keep_fingerprint=FINGERPRINT))
    assert (report.kept, report.old_code) == (2, 1)
    assert store.latest(0, digest_for("bert")) is not None
    assert store.latest(0, digest_for("old")) is None


def test_a_result_counts_as_written_no_earlier_than_the_records_of_its_call_before_it(tmp_path):
    """A machine whose clock runs an hour ahead wrote the old code's result; the new code
    recomputed the call after it (a higher sequence) with an earlier date. The new code's
    result is the call's current one, written after the old one whatever the dates say."""
    store = Store(tmp_path / "leaf", "fast")
    store.append(0, digest_for("a"), value_record(OTHER_CODE, created=1000.0 + 3600))
    store.append(0, digest_for("a"), value_record(CODE, created=1000.0))
    store.append(0, digest_for("a"), value_record("", created=900.0))  # unknown code: after
    store.append(0, digest_for("b"), value_record(OTHER_CODE, created=500.0))
    store.append(0, digest_for("b"), value_record(CODE, created=600.0))
    store.delete(0, digest_for("b"))
    versions = store.code_versions()
    assert versions[CODE] == CodeVersionStats(2, 1000.0, 1000.0 + 3600)
    assert versions[OTHER_CODE] == CodeVersionStats(2, 1000.0 + 3600, NEVER), \
        "superseded in every call by other code"
    assert versions[""].last_current == NEVER


# =================================================================================================
# 4. The command line, on results the decorator wrote
# =================================================================================================
MODULE = """
import os
import persist_to_disk as ptd

VERSION = os.environ["CODE_VERSION_UNDER_TEST"]

@ptd.persistf(groupby=["dataset"], version=VERSION)
def fit(dataset, x):
    return (dataset, x, VERSION)

@ptd.persistf(version=VERSION)
def square(x):
    return (x * x, VERSION)
"""


@pytest.fixture
def versions(ptd_env, monkeypatch):
    """``versions(label)``: the module ``codever`` imported with ``version=label``."""
    write_module(ptd_env.project, "codever.py", MODULE)
    monkeypatch.syspath_prepend(str(ptd_env.project))

    def load(label: str):
        monkeypatch.setenv("CODE_VERSION_UNDER_TEST", label)
        sys.modules.pop("codever", None)
        return importlib.import_module("codever")

    yield load
    sys.modules.pop("codever", None)


def parse_label(code: str):
    from persist_to_disk.fingerprint import parse_code_tag
    return parse_code_tag(code)[1]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def stored_tags(module) -> dict:
    """``{version label: code tag}`` of the tags stored in ``fit``'s leaf A."""
    from persist_to_disk.fingerprint import parse_code_tag
    store = module.fit.__persisted__.locate(("A", 1), {})[0]
    return {parse_code_tag(tag)[1]: tag for tag in store.code_versions()}


def test_stats_shows_how_many_results_each_code_version_holds_newest_first(versions, capsys):
    v1 = versions("v1")
    v1.fit("A", 1), v1.fit("A", 2), v1.fit("B", 1)
    time.sleep(0.01)
    v2 = versions("v2")
    v2.fit("A", 1)
    tags = stored_tags(v2)

    code, out, _ = run(capsys, "stats", "fit", "--json")
    assert code == 0
    rows = json.loads(out)["code_versions"]
    assert [(row["version"], row["results"]) for row in rows] == [("'v2'", 1), ("'v1'", 3)]
    assert [row["code"] for row in rows] == [tags["'v2'"], tags["'v1'"]]
    assert all(row["code"] == f"{row['fingerprint']}|{row['version']}"
               and len(row["fingerprint"]) == 32 for row in rows)
    assert rows[0]["last_written_epoch"] > rows[1]["last_written_epoch"]
    assert rows[0]["last_written"] == iso_time(rows[0]["last_written_epoch"])

    code, out, _ = run(capsys, "stats", "fit")
    assert code == 0
    table = out[out.index("FINGERPRINT"):].splitlines()
    assert table[0].split() == ["FINGERPRINT", "VERSION", "RESULTS", "LAST", "WRITTEN"]
    assert table[1].split()[:3] == [rows[0]["fingerprint"][:12], "'v2'", "1"]
    assert table[2].split()[:3] == [rows[1]["fingerprint"][:12], "'v1'", "3"]


EDITED = """
import persist_to_disk as ptd

@ptd.persistf(groupby=["dataset"], code_changes="recompute")
def fit(dataset, x):
    return (dataset, x, {k})

@ptd.persistf(code_changes="recompute")
def square(x):
    return (x * x, {k})
"""


@pytest.fixture
def edits(ptd_env, monkeypatch):
    """``edits(k)``: the module ``codeedit`` with its functions' code edited to return ``k``
    (each ``k`` is another code fingerprint; give each a different length so that no
    bytecode or source cache keyed by size and date serves the previous one)."""
    monkeypatch.syspath_prepend(str(ptd_env.project))

    def load(k: int):
        write_module(ptd_env.project, "codeedit.py", EDITED.format(k=k))
        sys.modules.pop("codeedit", None)
        importlib.invalidate_caches()
        return importlib.import_module("codeedit")

    yield load
    sys.modules.pop("codeedit", None)


def fingerprint_of(function) -> str:
    return function.cache_info()["code_fingerprint"]


def test_compact_drop_old_code_keeps_each_functions_newest_code_across_its_groupby_leaves(
        edits, capsys):
    old = edits(1)
    old.fit("A", 1), old.fit("B", 1), old.fit("B", 2)   # leaf B: only the old code wrote there
    old.square(3)
    old_fit, old_square = fingerprint_of(old.fit), fingerprint_of(old.square)
    time.sleep(0.01)
    new = edits(22)
    new.fit("A", 1)                                     # fit's newest code, in leaf A
    new_fit = fingerprint_of(new.fit)
    assert new_fit != old_fit
    leaf_a = new.fit.__persisted__.locate(("A", 1), {})[0].path
    leaf_b = new.fit.__persisted__.locate(("B", 1), {})[0].path
    imported = value_record("", created=1.0)            # a result of unknown code in leaf B
    Store(leaf_b).append(3, digest_for("imported"), imported)
    folder = str(Path(leaf_a).parent.parent)             # the project: both functions

    code, out, _ = run(capsys, "compact", folder, "--drop-old-code", "--dry-run", "--json")
    assert code == 0
    reports = {Path(r["path"]).name: r for r in json.loads(out)}
    assert (reports["A"]["old_code"], reports["A"]["kept"]) == (1, 1)
    assert (reports["B"]["old_code"], reports["B"]["kept"]) == (2, 1)
    assert reports["A"]["keep_fingerprint"] == reports["B"]["keep_fingerprint"] == new_fit
    assert [(row["fingerprint"], row["results"]) for row in reports["B"]["dropped_code"]] == [
        (old_fit, 3)]
    square_report, = [r for name, r in reports.items() if name not in ("A", "B")]
    assert (square_report["old_code"], square_report["kept"]) == (0, 1)
    assert square_report["keep_fingerprint"] == old_square, "its only code"
    assert Store(leaf_b).stats().entries == 3, "a dry run changes nothing"

    code, out, _ = run(capsys, "compact", folder, "--drop-old-code", "--dry-run")
    assert code == 0
    assert f"  would drop code {old_fit[:12]}: 3 stored results, last written " in out

    code, out, _ = run(capsys, "compact", folder, "--drop-old-code")
    assert code == 0
    lines = out.splitlines()
    assert any(line.startswith(f"codeedit.fit: keeping code {new_fit[:12]} (the newest; 1 "
                               "stored results, last written ") for line in lines), out
    assert f"  dropping code {old_fit[:12]}: 3 stored results, last written " in out
    assert any(line.startswith(f"codeedit.square: keeping code {old_square[:12]} ")
               and line.endswith("; no other code to drop") for line in lines), out
    assert any(line.startswith(os.path.join("project-1", "codeedit", "fit", "B") + ": ")
               and line.endswith(", 1 kept, dropped: 2 of old code") for line in lines), out
    assert lines[-1] == "(ptd compact --drop-old-code --dry-run shows this without deleting " \
                        "anything)"
    assert [record.code for _, _, record in Store(leaf_b).scan()] == [""]
    assert [record.code.partition("|")[0] for _, _, record in Store(leaf_a).scan()] == [new_fit]
    assert new.fit("A", 1) == ("A", 1, 22) and new.fit.cache_info()["hits"] == 1

    code, out, _ = run(capsys, "compact", "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "A code version here is the code fingerprint alone" in text
    assert "never drops as such (use --older-than, or f.clear(), for those)" in text
    assert "Results of unknown code" in text and "--keep-code FINGERPRINT-PREFIX" in text


def test_drop_old_code_keeps_the_results_of_every_version_of_the_code_in_use(versions, capsys):
    """version=("v2", model) with two models in use: both are current, neither is old code."""
    for label in ("bert", "gpt"):
        module = versions(label)
        module.fit("A", 1), module.fit("A", 2)
        time.sleep(0.01)
    leaf = module.fit.__persisted__.locate(("A", 1), {})[0]
    assert len(leaf.code_versions()) == 2, "two version labels of one fingerprint"

    code, out, _ = run(capsys, "compact", leaf.path, "--drop-old-code")
    assert code == 0, out
    assert "; no other code to drop" in out
    assert leaf.stats().entries == 4
    assert versions("bert").fit("A", 1) == ("A", 1, "bert")


def test_drop_old_code_drops_nothing_of_a_function_whose_codes_tie_and_says_so(edits, capsys):
    """Dates alike (a coarse or pinned clock, a copied cache) and no call written by both:
    which code came last cannot be told, so none is dropped by a guess (exit status 0)."""
    ptd.config.set_clock(lambda: 1_700_000_000.0)
    edits(1).fit("A", 1)
    newest = edits(22)
    newest.fit("A", 2)
    leaf = newest.fit.__persisted__.locate(("A", 1), {})[0]

    code, out, _ = run(capsys, "compact", leaf.path, "--drop-old-code")
    assert code == 0
    assert "codeedit.fit: dropping no code version: codes " in out
    assert "so which is newer cannot be told. Name the code to keep with --keep-code" in out
    assert leaf.stats().entries == 2


def test_drop_old_code_drops_nothing_when_the_newest_code_is_dated_ahead_of_the_clock(
        edits, capsys):
    """A machine whose clock runs ahead wrote the old code's results: their dates say
    nothing about which code came last."""
    ptd.config.set_clock(lambda: time.time() + 3600)
    edits(1).fit("A", 1)
    ptd.config.set_clock(None)
    newest = edits(22)
    newest.fit("A", 2)
    leaf = newest.fit.__persisted__.locate(("A", 1), {})[0]

    code, out, _ = run(capsys, "compact", leaf.path, "--drop-old-code", "--json")
    assert code == 0
    report, = json.loads(out)
    assert report["keep_fingerprint"] is None and report["old_code"] == 0
    assert "after this machine's clock" in report["old_code_undecided"]
    assert leaf.stats().entries == 2


def test_keep_code_keeps_the_code_in_use_after_going_back_to_older_code(edits, capsys):
    """Reverted code only hits (writes nothing): the abandoned edit stays the newest writer,
    and --keep-code names the code in use instead."""
    first = edits(1)
    for x in range(3):
        first.fit("A", x)
    edits(22).fit("A", 0)                     # an edit, tried on one call, then abandoned
    reverted = edits(1)
    in_use = fingerprint_of(reverted.fit)
    assert in_use == fingerprint_of(first.fit)
    leaf = reverted.fit.__persisted__.locate(("A", 1), {})[0]

    code, out, _ = run(capsys, "compact", leaf.path, "--drop-old-code", "--dry-run", "--json")
    assert json.loads(out)[0]["keep_fingerprint"] != in_use, "by default: the last writer"
    code, out, _ = run(capsys, "compact", leaf.path, "--drop-old-code",
                       "--keep-code", in_use[:8].upper())
    assert code == 0, out
    assert f"codeedit.fit: keeping code {in_use[:12]} (named by --keep-code; 3 stored" in out
    assert [reverted.fit("A", x) for x in range(3)] == [("A", x, 1) for x in range(3)]
    assert reverted.fit.cache_info()["hits"] == 3


def test_keep_code_that_names_no_single_code_of_the_function_changes_nothing_and_exits_2(
        edits, capsys):
    edits(1).fit("A", 1)
    module = edits(22)
    module.fit("A", 2)
    leaf = module.fit.__persisted__.locate(("A", 1), {})[0]
    codes = [code.partition("|")[0] for code in leaf.code_versions()]

    code, _, err = run(capsys, "compact", leaf.path, "--drop-old-code", "--keep-code", "abcdef")
    assert code == 2
    assert "--keep-code abcdef matches no code" in err
    assert all(fingerprint[:12] in err for fingerprint in codes), "names the candidates"
    assert "nothing was compacted" in err
    for argv in (["--keep-code", codes[0][:5]], ["--keep-code", "xyzxyz"],
                 ["--keep-code", codes[0]]):   # without --drop-old-code
        assert run(capsys, "compact", leaf.path, *(["--drop-old-code"] * (len(argv[1]) < 32)),
                   *argv)[0] == 2
    assert leaf.stats().versions == 2


def test_a_store_of_the_function_that_cannot_be_read_stops_drop_old_code_for_the_function(
        versions, ptd_env):
    """Its results might be the newest code's: nothing of the function is dropped by a guess.
    Run in a child process (LMDB may abort a process that reads a damaged page)."""
    v1 = versions("v1")
    v1.fit("A", 1), v1.fit("C", 1)
    time.sleep(0.01)
    versions("v2").fit("A", 1)
    leaf_a = Path(v1.fit.__persisted__.locate(("A", 1), {})[0].path)
    before = Store(str(leaf_a)).code_versions()
    POOL.close_all()
    data = leaf_a.parent / "C" / "data.mdb"
    damaged = bytearray(data.read_bytes())
    damaged[2 * 4096:] = b"\xab" * (len(damaged) - 2 * 4096)   # every page but the metas
    data.write_bytes(bytes(damaged))

    ran = run_python("", ptd_env.project, ptd_env.home, "compact", str(leaf_a.parent),
                     "--drop-old-code", "--json", module="persist_to_disk.cli", check=False,
                     timeout=120)
    assert ran.returncode == 1, ran.stderr
    errors = {Path(entry["path"]).name: entry["error"] for entry in json.loads(ran.stdout)}
    assert sorted(errors) == ["A", "C"], "A was not compacted by a guess"
    assert all("newest code version of its function is unknown" in error
               and str(data.parent) in error for error in errors.values())
    assert len(before) == 2 and Store(str(leaf_a)).code_versions() == before


def test_export_pkl_writes_the_result_created_last_of_those_sharing_a_0_0_7_key(
        versions, capsys, ptd_env, caplog):
    versions("v1").square(4)
    time.sleep(0.01)
    versions("v2").square(4)
    destination = ptd_env.tmp / "legacy"

    def exported():
        content = {}
        for path in destination.rglob("*.pkl"):
            content.update(pickle.loads(path.read_bytes()))
        return content

    root = ptd.config.get_project_persist_path()
    with caplog.at_level(logging.INFO, logger="persist_to_disk"):
        code, out, _ = run(capsys, "export-pkl", root, str(destination))
    assert code == 0, out
    assert "1 a newer result has the same 0.0.7 key" in out
    assert exported() == {(("x", 4),): (16, "v2")}
    assert any(line.startswith("export to 0.0.7: 1 entries of ") for line in caplog.messages)

    time.sleep(0.01)
    versions("v1").square(4, cache_switch=ptd.RECACHE)   # v1's result is the newest now
    assert run(capsys, "export-pkl", root, str(destination))[0] == 0
    assert exported() == {(("x", 4),): (16, "v1")}

    code, out, _ = run(capsys, "export-pkl", "--help")
    assert code == 0 and "the result created last is exported" in " ".join(out.split())


def test_export_pkl_gives_results_dated_alike_to_the_call_recomputed_last(
        versions, capsys, ptd_env):
    """With a pinned clock every result has one date: the call recomputed more (a higher
    sequence) is exported, whichever of the two it is, not the one that sorts first."""
    ptd.config.set_clock(lambda: 1_700_000_000.0)
    versions("v1").square(4)
    versions("v2").square(4)
    root = ptd.config.get_project_persist_path()

    def exported(name: str) -> dict:
        destination = ptd_env.tmp / name
        assert run(capsys, "export-pkl", root, str(destination))[0] == 0
        path, = destination.rglob("*.pkl")
        return pickle.loads(path.read_bytes())

    versions("v1").square(4, cache_switch=ptd.RECACHE)       # v1: 2 records, v2: 1
    assert exported("first") == {(("x", 4),): (16, "v1")}
    for _ in range(2):
        versions("v2").square(4, cache_switch=ptd.RECACHE)   # v2: 3 records, v1: 2
    assert exported("second") == {(("x", 4),): (16, "v2")}


def test_import_pkl_logs_each_store_it_writes_at_info(versions, capsys, ptd_env, caplog):
    versions("v1").square(5)
    destination = ptd_env.tmp / "legacy"
    assert run(capsys, "export-pkl", ptd.config.get_project_persist_path(),
               str(destination))[0] == 0
    with caplog.at_level(logging.INFO, logger="persist_to_disk"):
        code, out, _ = run(capsys, "import-pkl", str(destination), str(ptd_env.tmp / "back"))
    assert code == 0, out
    assert any(line.startswith("import from 0.0.7: 1 entries from 1 bucket file(s) of ")
               for line in caplog.messages)
    assert any(line.startswith("import from 0.0.7 of ") and "done" in line
               for line in caplog.messages)
    back = [Store(leaf) for leaf in LocalStorage().find_stores(str(ptd_env.tmp / "back"))]
    assert [list(store.code_versions()) for store in back] == [[""]], "imported: unknown code"


# =================================================================================================
# 5. The shared tier
# =================================================================================================
def test_a_shared_objects_header_carries_the_code_inside_its_signature():
    from persist_to_disk.remote.objects import (ObjectRejected, Signer, object_chunks,
                                                open_object, read_record)
    signer = Signer(SECRET)
    name = "team/leaf/0011.ptd"

    def build(record: Record) -> bytes:
        return b"".join(bytes(chunk) for chunk in object_chunks(name, record, signer))

    coded = build(value_record(CODE))
    opened, write_value = open_object(name, io.BytesIO(coded), len(coded), signer)
    assert opened.code == CODE and write_value(io.BytesIO()) == "pickle:5"
    assert read_record(name, io.BytesIO(coded), len(coded), signer).code == CODE

    plain = build(value_record(""))
    assert b'"code"' not in plain, "objects without code are as before code versions"
    assert read_record(name, io.BytesIO(plain), len(plain), signer).code == ""

    start = coded.index(CODE.encode())
    for offset in range(start, start + len(CODE)):
        altered = bytearray(coded)
        altered[offset] ^= 1
        with pytest.raises(ObjectRejected):
            read_record(name, io.BytesIO(bytes(altered)), len(altered), signer)


def test_a_result_keeps_its_code_through_the_shared_tier_to_another_machine(s3_env, tmp_path):
    from persist_to_disk.remote.settings import RemoteSettings, parse_remote_url
    from persist_to_disk.remote.tiered import SharedStorage, TieredStore
    bucket, prefix = parse_remote_url(s3_env.url)

    def machine(name: str):
        root = tmp_path / name / "project"
        settings = RemoteSettings(url=s3_env.url, bucket=bucket, prefix=prefix,
                                  namespace="codes", secret=SECRET,
                                  pending_folder=str(tmp_path / name / "pending"),
                                  read_timeout=10.0)
        store = SharedStorage(LocalStorage(), settings).open_store(
            str(root / "f" / "leaf"), "fast", lock_root=str(root))
        assert isinstance(store, TieredStore)
        return store

    a, b = machine("a"), machine("b")
    digest = digest_for("shared call")
    a.append_value(2, digest, writer(b"computed on a"), created=123.0, compute_seconds=1.0,
                   python_version="3.11.7", key_blob=b"k", code=CODE)
    assert a.code_versions() == {CODE: CodeVersionStats(1, 123.0, 123.0)}
    assert a.shared.client.head(a.name(digest)) is not None, "uploaded"

    fetched = b.latest(2, digest)
    assert (fetched.code, fetched.value_blob) == (CODE, b"computed on a")
    assert b.local.latest(2, digest).code == CODE, "kept locally with its code"
    assert b.code_versions() == {CODE: CodeVersionStats(1, 123.0, 123.0)}
