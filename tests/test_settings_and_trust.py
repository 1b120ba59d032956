"""The settings folder, pickles from 0.0.7 trees, named failures, script names, user-private
groups, and fork safety of the settings (issue 10 items 5, 6, 7, 9 and 10; issue 9 item 3).

1. **The settings folder is trusted code** (``persist_to_disk/projects.py``): ``config.ini``
   decides where caches are loaded from and whether they are checked, so the settings folder,
   ``config.ini`` and ``project_to_pids.txt`` pass the cache's trust rule before they are read,
   at the sharing level of ``PERSIST_TO_DISK_SHARED`` / ``set_shared`` -- never the ``shared``
   of the file being judged.
2. **0.0.7 bucket files are pickles**: ``ptd import-pkl`` and ``ptd export-pkl`` load none from a
   folder others can write or own, unless ``shared`` allows it.
3. **Every failure of the settings is a library error** naming the file or setting and what to
   do; every error the library raises is a ``ptd.PersistError``.
4. **A script run by its path is named by its module path** inside the project, and ``ptd``
   finds stores recorded as ``__main__`` by their dotted name too.
5. **User-private groups** (Debian/Ubuntu, umask 002): a group-writable folder whose group is
   the user's alone is as private as an owner-only one; a group with other members is not.
6. **A forked child never waits for a settings lock held by a thread of its parent.**

Tests that create users, give files away or switch users need root (skipped otherwise).
"""

import os
import pickle
import pwd
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

import persist_to_disk as ptd
from persist_to_disk import engine
from persist_to_disk.cli import main
from persist_to_disk.engine import POOL, Store, trust


STRANGER = 65534  # "nobody"
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="giving files to another user, creating users and switching to "
                              "them need root")


@pytest.fixture(autouse=True)
def fresh_trust_cache():
    trust.forget_checked()
    yield
    trust.forget_checked()


COMPUTED = []


def counted(**options):
    """A cached ``compute(x) -> (x, number of the computation)``, with the computations in
    ``COMPUTED`` (a module global, not a captured variable, so it is no part of the key)."""
    COMPUTED.clear()

    @ptd.persistf(**options)
    def compute(x):
        COMPUTED.append(x)
        return (x, len(COMPUTED))

    return compute, COMPUTED


def reload_settings(env) -> None:
    """Read the settings again, as a new process would (keeping the test's project folder)."""
    POOL.close_all()
    trust.forget_checked()
    ptd.config.reload()
    ptd.config.set_project_path(str(env.project))


def write_config(home: Path, **values) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.ini"
    path.write_text("[global_settings]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()))
    return path


class _Planted:
    """A pickle that runs code when loaded: it makes the folder ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def plant_record(compute, marker: Path) -> Path:
    """Store, for ``compute(1)``, a record whose loading runs code; return its leaf folder."""
    from persist_to_disk.engine import Record, RecordKind
    store, bucket, digest, key = compute.__persisted__.locate((1,), {})
    store.append(bucket, digest, Record(RecordKind.VALUE, time.time(), 0.0, "pickle:4",
                                        "3.11.7", pickle.dumps(key, protocol=4),
                                        pickle.dumps(_Planted(str(marker)))))
    POOL.close_all()
    return Path(store.path)


# =================================================================================================
# 1. The settings folder
# =================================================================================================
def test_a_config_ini_in_a_settings_folder_others_can_write_is_never_read(ptd_env):
    """The attack of issue 10.5: a world-writable settings folder holds a config.ini saying
    ``shared = all`` and pointing persist_path at a tree with a planted pickle."""
    attacker = ptd_env.tmp / "attacker-tree"
    write_config(ptd_env.home, persist_path=attacker, shared="all")
    reload_settings(ptd_env)
    compute, calls = counted()
    marker = ptd_env.tmp / "the planted pickle ran"
    plant_record(compute, marker)
    os.chmod(ptd_env.home, 0o777)  # now anyone could have written that config.ini
    reload_settings(ptd_env)

    with pytest.raises(ptd.UntrustedFolderError) as raised:
        compute(1)

    message = str(raised.value)
    assert f"{ptd_env.home} is writable by every user" in message
    assert "PERSIST_TO_DISK_HOME" in message and "chmod go-w" in message  # what to do
    assert "cannot vouch" in message  # why shared = all in that file does not count
    assert not marker.exists(), "the planted pickle was loaded"
    assert calls == []
    assert isinstance(raised.value, ptd.PersistError)

    # The opt-in from outside the folder reads it (and so runs the planted pickle: the
    # refusal above is what protected).
    os.environ["PERSIST_TO_DISK_SHARED"] = "all"
    try:
        reload_settings(ptd_env)
        compute(1)
    finally:
        del os.environ["PERSIST_TO_DISK_SHARED"]
    assert marker.exists()


def test_shared_in_config_ini_does_not_vouch_for_its_own_group_writable_file(ptd_env,
                                                                            monkeypatch):
    """``shared = group`` written in a group-writable config.ini is the file vouching for
    itself: refused. The same level from the environment is an opt-in: accepted."""
    path = write_config(ptd_env.home, shared="group", hashsize=7)
    os.chmod(path, 0o660)
    if os.geteuid() != 0 and trust.private_group(os.geteuid(), os.stat(path).st_gid):
        pytest.skip("this user's group is private to them, so group-write is no exposure")
    reload_settings(ptd_env)

    with pytest.raises(ptd.UntrustedFolderError, match=f"{path} is writable by its group"):
        ptd.config.get_hashsize()

    monkeypatch.setenv("PERSIST_TO_DISK_SHARED", "group")
    reload_settings(ptd_env)
    assert ptd.config.get_hashsize() == 7


@needs_root
def test_a_config_ini_owned_by_another_user_is_refused(ptd_env):
    path = write_config(ptd_env.home, hashsize=7)
    os.chown(path, STRANGER, STRANGER)
    reload_settings(ptd_env)

    with pytest.raises(ptd.UntrustedFolderError) as raised:
        ptd.config.get_hashsize()
    assert f"{path} is owned by another user" in str(raised.value)
    assert f"uid {STRANGER}" in str(raised.value)


def test_a_project_to_pids_file_others_can_write_is_refused(ptd_env):
    compute, calls = counted()
    compute(1)
    pids = ptd_env.home / "project_to_pids.txt"
    os.chmod(pids, 0o666)
    reload_settings(ptd_env)

    with pytest.raises(ptd.UntrustedFolderError, match=f"{pids} is writable by every user"):
        compute(2)
    assert calls == [1]


def test_a_project_id_that_is_not_a_number_is_refused_naming_the_file_and_line(ptd_env):
    """The id becomes part of a folder name: ``1/../../elsewhere`` would leave the persist
    path."""
    ptd_env.home.mkdir()
    pids = ptd_env.home / "project_to_pids.txt"
    pids.write_text(f"/some/other||1\n{ptd_env.project}||1/../../elsewhere\n")
    reload_settings(ptd_env)
    compute, calls = counted()

    with pytest.raises(ptd.ConfigError) as raised:
        compute(1)
    assert f"{pids}, line 2" in str(raised.value) and "not a number" in str(raised.value)
    assert calls == []
    assert not (ptd_env.tmp / "elsewhere").exists()


def test_an_owner_only_settings_folder_with_its_own_shared_setting_still_works(ptd_env):
    """The user's own config.ini may say anything, ``shared = group`` included."""
    write_config(ptd_env.home, shared="group", hashsize=9)
    os.chmod(ptd_env.home, 0o700)
    reload_settings(ptd_env)
    compute, calls = counted()
    assert compute(1) == compute(1) and calls == [1]
    assert ptd.config.get_shared() is trust.Sharing.GROUP and ptd.config.get_hashsize() == 9


def test_ptd_refuses_an_untrusted_settings_folder_with_exit_status_1(ptd_env, capsys):
    write_config(ptd_env.home, hashsize=7)
    os.chmod(ptd_env.home, 0o777)
    reload_settings(ptd_env)

    assert main(["ls"]) == 1
    assert f"{ptd_env.home} is writable by every user" in capsys.readouterr().err


# =================================================================================================
# 2. 0.0.7 bucket files are pickles
# =================================================================================================
def write_bucket_file(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(content, handle, protocol=4)


LOOSEN_SOURCE = {
    "leaf folder writable by everyone": lambda root, leaf, file: os.chmod(leaf, 0o777),
    "folder above it writable by its group": lambda root, leaf, file: os.chmod(leaf.parent,
                                                                               0o770),
    "bucket file writable by everyone": lambda root, leaf, file: os.chmod(file, 0o666),
}


@pytest.mark.parametrize("loosen", list(LOOSEN_SOURCE.values()), ids=list(LOOSEN_SOURCE))
def test_import_pkl_loads_no_bucket_file_others_could_have_written(ptd_env, capsys, loosen):
    source = ptd_env.tmp / "cache-0.0.7" / "project-1"
    leaf = source / "tasks" / "score"
    marker = ptd_env.tmp / "the planted pickle ran"
    write_bucket_file(leaf / "3.pkl", {(("x", 1),): _Planted(str(marker))})
    for folder in (source, source / "tasks", leaf):
        os.chmod(folder, 0o700)
    loosen(source, leaf, leaf / "3.pkl")
    destination = ptd_env.tmp / "ours"

    assert main(["import-pkl", str(source), str(destination)]) == 1

    err = capsys.readouterr().err
    assert "UntrustedFolderError" in err and "Bucket files are pickles" in err
    assert "shared" in err  # how to opt in
    assert not marker.exists(), "a planted bucket file was unpickled"
    assert not destination.exists(), "nothing is imported from an untrusted tree"

    ptd.config.set_shared("all")  # the explicit opt-in
    main(["import-pkl", str(source), str(destination)])
    assert marker.exists()


@needs_root
def test_import_pkl_refuses_a_source_owned_by_another_user(ptd_env, capsys):
    source = ptd_env.tmp / "cache-0.0.7"
    marker = ptd_env.tmp / "the planted pickle ran"
    write_bucket_file(source / "f" / "0.pkl", {(("x", 1),): _Planted(str(marker))})
    os.chown(source / "f", STRANGER, STRANGER)

    assert main(["import-pkl", str(source), str(ptd_env.tmp / "ours")]) == 1
    assert f"{source / 'f'} is owned by another user" in capsys.readouterr().err
    assert not marker.exists()


@pytest.mark.parametrize("loose", ["folder", "file"])
def test_export_pkl_merges_into_no_bucket_file_others_could_have_written(ptd_env, capsys,
                                                                         loose):
    compute, _ = counted(hashsize=1)  # one 0.0.7 bucket: 0.pkl
    compute(1)
    destination = ptd_env.tmp / "cache-0.0.7"
    marker = ptd_env.tmp / "the planted pickle ran"
    write_bucket_file(destination / "0.pkl", {(("x", 2),): _Planted(str(marker))})
    os.chmod(destination, 0o700)
    os.chmod(destination if loose == "folder" else destination / "0.pkl", 0o777)
    planted = (destination / "0.pkl").read_bytes()

    assert main(["export-pkl", compute.cache_folder(), str(destination)]) == 1

    err = capsys.readouterr().err
    assert "writable by every user" in err and "Bucket files are pickles" in err
    assert not marker.exists(), "a planted bucket file was unpickled"
    assert (destination / "0.pkl").read_bytes() == planted, "left as it was"


def test_export_pkl_into_a_new_folder_under_a_sticky_shared_folder_like_tmp_works(ptd_env):
    """Nothing of DEST exists yet, so nothing there can be loaded; the folders above it are
    not DEST's (a sticky /tmp is fine)."""
    compute, _ = counted(hashsize=1)
    compute(1)
    sticky = ptd_env.tmp / "like-tmp"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    destination = sticky / "new" / "cache-0.0.7"

    assert main(["export-pkl", compute.cache_folder(), str(destination)]) == 0
    assert (destination / "0.pkl").exists()


def test_export_and_import_still_work_on_owner_only_trees(ptd_env, capsys):
    """The control: the same trees, owner-only, are read and written."""
    compute, calls = counted(hashsize=1)
    compute(1)
    destination = ptd_env.tmp / "cache-0.0.7"
    write_bucket_file(destination / "0.pkl", {(("x", 2),): ("kept", 2)})
    os.chmod(destination, 0o700)
    assert main(["export-pkl", compute.cache_folder(), str(destination)]) == 0
    with open(destination / "0.pkl", "rb") as handle:
        assert pickle.load(handle) == {(("x", 2),): ("kept", 2), (("x", 1),): (1, 1)}
    assert main(["import-pkl", str(destination), str(ptd_env.tmp / "ours")]) == 0


# =================================================================================================
# 3. Named failures, one hierarchy
# =================================================================================================
def test_a_config_ini_that_is_not_utf8_is_a_config_error_naming_it(ptd_env):
    ptd_env.home.mkdir()
    path = ptd_env.home / "config.ini"
    path.write_bytes(b"[global_settings]\nhashsize = 7\npersist_path = /data/caf\xe9\n")
    reload_settings(ptd_env)
    compute, calls = counted()

    with pytest.raises(ptd.ConfigError) as raised:
        compute(1)
    assert f"{path} is not UTF-8 text" in str(raised.value)
    assert "line 3" in str(raised.value) and "generate_config" in str(raised.value)
    assert calls == []


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("name", ["config.ini", "project_to_pids.txt"])
def test_a_settings_file_that_is_a_folder_is_a_config_error_and_leaks_no_descriptor(ptd_env,
                                                                                     name):
    """os.fdopen refuses a folder with a bare IsADirectoryError: the file type is checked on
    the descriptor first, and the descriptor is closed on every refusal."""
    folder = ptd_env.home / name
    folder.mkdir(parents=True)
    os.chmod(ptd_env.home, 0o700)
    reload_settings(ptd_env)
    compute, calls = counted()
    before = open_descriptors()

    for _ in range(3):
        with pytest.raises(ptd.ConfigError) as raised:
            compute(1)
        assert f"{folder} is a folder" in str(raised.value) and "Remove it" in str(raised.value)
    assert open_descriptors() == before
    assert calls == []


def test_a_config_ini_saved_with_a_utf8_byte_order_mark_is_read(ptd_env):
    """Notepad saves UTF-8 with a byte order mark; configparser would see it as text before
    the first section header."""
    ptd_env.home.mkdir(mode=0o700)
    (ptd_env.home / "config.ini").write_bytes(
        b"\xef\xbb\xbf[global_settings]\nhashsize = 7\npersist_path = "
        + str(ptd_env.tmp / "caf\u00e9").encode() + b"\n")
    reload_settings(ptd_env)
    compute, calls = counted()

    assert ptd.config.get_hashsize() == 7
    assert ptd.config.get_persist_path() == str(ptd_env.tmp / "caf\u00e9")
    assert compute(1) == compute(1) and calls == [1]

    # a byte that is not UTF-8 after the mark is still named by its value and line
    path = ptd_env.home / "config.ini"
    path.write_bytes(b"\xef\xbb\xbf[global_settings]\nhashsize = 7\npersist_path = /caf\xe9\n")
    reload_settings(ptd_env)
    with pytest.raises(ptd.ConfigError) as raised:
        ptd.config.get_hashsize()
    assert f"{path} is not UTF-8 text (byte 0xe9 on line 3)" in str(raised.value)


def test_a_percent_sign_in_persist_path_is_just_a_percent_sign(ptd_env, python_runner):
    folder = ptd_env.tmp / "100%cache %(x)s"
    write_config(ptd_env.home, persist_path=folder)
    reload_settings(ptd_env)
    compute, calls = counted()

    assert compute(1) == compute(1) and calls == [1]
    assert Path(compute.cache_folder()).is_relative_to(folder)

    # generate_config writes it, and a fresh interpreter reads it back as it was
    ptd.config.set_persist_path(str(ptd_env.tmp / "50%"))
    path = ptd.config.generate_config()
    assert "50%\n" in Path(path).read_text()
    result = python_runner("import persist_to_disk as ptd; print(ptd.config.get_persist_path())")
    assert result.stdout.strip() == str(ptd_env.tmp / "50%")


def test_generate_config_writes_an_owner_only_file(ptd_env):
    old = os.umask(0o002)
    try:
        path = Path(ptd.config.generate_config())
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("home", ["/dev/null", "/proc/self"])
def test_a_settings_folder_that_cannot_hold_settings_is_a_config_error(ptd_env, monkeypatch,
                                                                        home):
    monkeypatch.setenv("PERSIST_TO_DISK_HOME", home)
    reload_settings(ptd_env)
    compute, calls = counted()

    with pytest.raises(ptd.ConfigError) as raised:
        compute(1)
    assert home in str(raised.value) and "PERSIST_TO_DISK_HOME" in str(raised.value)
    assert calls == []


def test_a_project_path_with_the_pids_separator_is_a_config_error(ptd_env, monkeypatch):
    odd = ptd_env.tmp / "a||b"
    odd.mkdir()
    with pytest.raises(ptd.ConfigError, match=r"contains '\|\|'.*set_project_path"):
        ptd.config.set_project_path(str(odd))

    # also when it is the working folder a job starts in (or inherited from the environment)
    monkeypatch.setenv("PERSIST_TO_DISK_PROJECT_PATH", str(odd))
    ptd.config.reload()
    compute, calls = counted()
    with pytest.raises(ptd.ConfigError, match="project_to_pids.txt"):
        compute(1)
    assert calls == []


def exported_error_classes():
    return [value for name, value in vars(ptd).items()
            if isinstance(value, type) and issubclass(value, BaseException)
            and not issubclass(value, Warning)]


def test_every_error_the_library_exports_is_a_persist_error():
    classes = exported_error_classes()
    assert [cls.__name__ for cls in classes if not issubclass(cls, ptd.PersistError)] == []
    names = {cls.__name__ for cls in classes}
    assert {"CorruptStoreError", "UntrustedFolderError", "UnsafeFilesystemError",
            "StoreFormatError", "ForeignFolderError", "EngineError", "ConfigError"} <= names
    engine_errors = [getattr(engine, name) for name in engine.__all__
                     if isinstance(getattr(engine, name), type)
                     and issubclass(getattr(engine, name), engine.EngineError)]
    assert len(engine_errors) >= 6
    assert all(issubclass(cls, ptd.PersistError) for cls in engine_errors)
    # the secondary bases that existing `except` clauses rely on are kept
    assert issubclass(ptd.UntrustedFolderError, OSError)
    assert issubclass(ptd.UnsafeFilesystemError, OSError)
    assert issubclass(ptd.ConfigError, ValueError)
    assert issubclass(ptd.UnkeyableArgumentError, TypeError)
    assert issubclass(ptd.CacheMissError, LookupError) and issubclass(ptd.CacheMissError,
                                                                      AssertionError)


def test_a_refused_cache_is_caught_by_except_persist_error(ptd_env):
    compute, _ = counted()
    compute(1)
    os.chmod(compute.cache_folder(), 0o777)
    POOL.close_all()
    try:
        compute(2)
    except ptd.PersistError as err:
        assert isinstance(err, ptd.UntrustedFolderError)
    else:
        pytest.fail("a cache folder anyone can write was loaded")


# =================================================================================================
# 4. Scripts run by their path
# =================================================================================================
TRAIN_SCRIPT = """
    import persist_to_disk as ptd

    @ptd.persistf()
    def train_a_model(x):
        return x * 2

    print(train_a_model(3))
"""


def run_script(env, *argv) -> subprocess.CompletedProcess:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("PERSIST_TO_DISK_")}
    child_env["PERSIST_TO_DISK_HOME"] = str(env.home)
    result = subprocess.run([sys.executable, *argv], cwd=str(env.project), env=child_env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def test_a_script_run_by_its_path_is_named_by_its_module_path_in_the_project(ptd_env, capsys):
    script = ptd_env.project / "pipeline" / "train.py"
    script.parent.mkdir()
    script.write_text(textwrap.dedent(TRAIN_SCRIPT))
    assert run_script(ptd_env, "pipeline/train.py").stdout == "6\n"

    [leaf] = [Path(p) for p in engine.find_stores(str(ptd_env.persist))]
    assert leaf.parts[-3:] == ("pipeline", "train", "train_a_model")
    assert Store(str(leaf)).read_meta()["function"] == "pipeline.train.train_a_model"
    assert main(["stats", "pipeline.train.train_a_model"]) == 0
    assert "pipeline.train.train_a_model" in capsys.readouterr().out

    # `python -m pipeline.train` names it alike (and so shares the store)
    assert run_script(ptd_env, "-m", "pipeline.train").stdout == "6\n"
    assert [Path(p) for p in engine.find_stores(str(ptd_env.persist))] == [leaf]


def test_a_script_outside_the_project_keeps_the_name_main(ptd_env):
    elsewhere = ptd_env.tmp / "scripts" / "job.py"
    elsewhere.parent.mkdir()
    elsewhere.write_text(textwrap.dedent(TRAIN_SCRIPT))
    run_script(ptd_env, str(elsewhere))
    [leaf] = engine.find_stores(str(ptd_env.persist))
    assert Store(leaf).read_meta()["function"] == "__main__.train_a_model"


def test_ptd_finds_a_store_recorded_as_main_by_dotted_name_and_by_folder(ptd_env, capsys):
    """Stores written before scripts were named by their path say ``__main__``."""
    from engine_workers import digest_for, record_for
    root = Path(ptd.config.get_project_persist_path())
    leaf = root / "pipeline" / "train" / "train_a_model"
    Store(str(leaf)).append(0, digest_for("call"), record_for("call"),
                            meta={"function": "__main__.train_a_model", "hashsize": 500,
                                  "hash_method": "pickle", "groupby": [], "leaf": "."})
    for spec in ("pipeline.train.train_a_model", "train.train_a_model",
                 "pipeline/train/train_a_model", "train_a_model"):
        assert main(["stats", spec]) == 0, (spec, capsys.readouterr().err)
        assert str(leaf.relative_to(ptd_env.persist)) in capsys.readouterr().out
    assert main(["stats", "other.train.train_a_model"]) == 2


# =================================================================================================
# 5. User-private groups
# =================================================================================================
@pytest.fixture
def accounts():
    """``accounts.user(primary_group=None)`` makes a user (with its own group unless
    ``primary_group`` is given) and returns its passwd entry; ``accounts.join(user, group)``
    adds a supplementary member. Every user and group made is deleted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("creating users and groups needs root")
    made_users, made_groups = [], []

    class Accounts:
        @staticmethod
        def user(primary_group=None):
            name = f"ptdt{uuid.uuid4().hex[:8]}"
            command = ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin"]
            command += ["--gid", primary_group, "--no-user-group"] if primary_group else [
                "--user-group"]
            subprocess.run(command + [name], check=True, capture_output=True, timeout=60)
            made_users.append(name)
            if not primary_group:
                made_groups.append(name)
            trust.forget_checked()
            return pwd.getpwnam(name)

        @staticmethod
        def join(user, group):
            subprocess.run(["usermod", "-a", "-G", group, user], check=True,
                           capture_output=True, timeout=60)
            trust.forget_checked()

    yield Accounts
    for name in reversed(made_users):
        subprocess.run(["userdel", name], capture_output=True, timeout=60)
    for name in made_groups:
        subprocess.run(["groupdel", name], capture_output=True, timeout=60)  # if left
    trust.forget_checked()


def test_a_user_private_group_is_proven_private_and_a_group_with_others_is_not(accounts):
    alice = accounts.user()
    assert trust.private_group(alice.pw_uid, alice.pw_gid)

    bob = accounts.user()
    assert not trust.private_group(alice.pw_uid, bob.pw_gid), "another user's group"
    assert not trust.private_group(0, 0), "root never gets the exception"

    accounts.join(bob.pw_name, alice.pw_name)  # bob, a supplementary member of alice's group
    assert not trust.private_group(alice.pw_uid, alice.pw_gid)

    carol = accounts.user()
    accounts.user(primary_group=carol.pw_name)  # a second account whose primary group it is
    assert not trust.private_group(carol.pw_uid, carol.pw_gid)


@pytest.mark.parametrize("passwd, group, proven", [
    ("files systemd", "files systemd", True),
    ("files", "files", True),
    ("files sss", "files", False),            # accounts from a directory: not all listed
    ("files", "files ldap", False),
    ("files [NOTFOUND=return] systemd", "files", False),
    (None, "files", False),                   # no passwd line
    ("missing file", None, False),            # no nsswitch.conf at all
])
def test_a_private_group_is_proven_only_from_local_account_files(accounts, tmp_path,
                                                                 monkeypatch, passwd, group,
                                                                 proven):
    alice = accounts.user()
    nsswitch = tmp_path / "nsswitch.conf"
    if passwd != "missing file":
        nsswitch.write_text("".join(f"{db}: {sources}\n" for db, sources in
                                    (("passwd", passwd), ("group", group)) if sources))
    monkeypatch.setattr(trust, "_NSSWITCH", str(nsswitch))
    trust.forget_checked()
    assert trust.private_group(alice.pw_uid, alice.pw_gid) is proven


def run_as(user, function, timeout: float = 60) -> str:
    """Run ``function()`` in a forked child acting as ``user`` (uid, gid, no other groups);
    return what it returned (a string), or its exception as ``'<Type>: <message>'``."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            try:
                answer = str(function())
            except Exception as err:
                answer = f"{type(err).__name__}: {err}"
            os.write(write_end, answer.encode("utf-8", "replace"))
        finally:
            os._exit(0)
    os.close(write_end)
    deadline = time.monotonic() + timeout
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the child acting as {user.pw_name} hung")
        time.sleep(0.02)
    with os.fdopen(read_end, "rb") as pipe:
        return pipe.read().decode("utf-8")


@pytest.fixture
def user_space():
    """A folder every user can reach (the test's tmp_path is root's own)."""
    import tempfile
    folder = Path(tempfile.mkdtemp(prefix="ptd-users-", dir="/tmp"))
    os.chmod(folder, 0o711)
    yield folder
    subprocess.run(["rm", "-rf", str(folder)], timeout=60)


def cache_under_umask_002(space: Path):
    """What the user does: make a persist path under umask 002 (so it is 0775) and use it."""
    def job():
        os.umask(0o002)
        persist, project, home = space / "persist", space / "project", space / "home"
        os.makedirs(persist)
        os.makedirs(project)
        os.environ["PERSIST_TO_DISK_HOME"] = str(home)
        POOL.close_all()
        trust.forget_checked()
        ptd.config.reload()
        ptd.config.set_persist_path(str(persist))
        ptd.config.set_project_path(str(project))
        compute, calls = counted()
        results = [compute(1), compute(1)]
        return f"ok {results} computed {calls} persist mode {oct(os.stat(persist).st_mode & 0o777)}"
    return job


def test_a_persist_path_made_under_umask_002_with_a_user_private_group_is_used(
        accounts, user_space):
    alice = accounts.user()
    space = user_space / "alice"
    space.mkdir()
    os.chown(space, alice.pw_uid, alice.pw_gid)

    answer = run_as(alice, cache_under_umask_002(space))

    assert answer == "ok [(1, 1), (1, 1)] computed [1] persist mode 0o775", answer


def test_a_persist_path_writable_by_a_group_with_other_members_is_still_refused(
        accounts, user_space):
    alice, bob = accounts.user(), accounts.user()
    accounts.join(bob.pw_name, alice.pw_name)  # bob can write what alice's group may write
    space = user_space / "alice"
    space.mkdir()
    os.chown(space, alice.pw_uid, alice.pw_gid)

    answer = run_as(alice, cache_under_umask_002(space))

    assert answer.startswith("UntrustedFolderError"), answer
    assert f"{space / 'persist'} is writable by its group" in answer


# =================================================================================================
# 6. Fork safety of the settings lock
# =================================================================================================
def test_a_child_forked_while_a_thread_holds_the_settings_lock_does_not_hang(ptd_env):
    """The lock is held across loading the settings; a fork at that moment used to leave the
    child a lock held by a thread it does not have."""
    held, release = threading.Event(), threading.Event()

    def hold():
        with ptd.config._lock:
            held.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(10)
        pid = os.fork()
        if pid == 0:
            try:
                ptd.config.set_hashsize(7)
                os._exit(0 if ptd.config.get_hashsize() == 7 else 1)
            finally:
                os._exit(2)
        deadline = time.monotonic() + 20
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail("the forked child waited for the settings lock of a thread it "
                            "does not have")
            time.sleep(0.02)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        release.set()
        thread.join(10)
