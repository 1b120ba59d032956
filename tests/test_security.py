"""Security: a cache folder is trusted code.

Cached results are pickles and unpickling runs code, so whoever can write a cache can run code in
every process that reads it. What this file proves:

1. **Trusted folders** (``engine/trust.py``). A store whose folder, ``data.mdb``/``lock.mdb`` or
   any folder above it up to the persist root is writable by other users, or owned by another
   user, is refused with :class:`UntrustedFolderError`, naming the path, the reason and how to
   opt in. Folders above the persist root (``/``, ``/home``, ``/tmp``) are none of our business;
   a sticky parent (like ``/tmp``) is fine. The sharing setting ``shared`` (``no`` by default,
   ``group`` for a team, ``all`` as the explicit opt-in) decides what is accepted and how new
   folders and files are created.
2. **The setting** ``shared`` follows the other settings: ``config.ini``, the environment
   variable ``PERSIST_TO_DISK_SHARED``, ``config.set_shared``; a bad value is a ``ConfigError``
   naming where it came from. The engine is told whenever the settings load or change.
3. **Through the decorator**: a planted pickle in a folder others can write is never
   loaded, while the opt-in loads it; a ``group`` cache is created group-shared.
4. **Lock files cannot clobber other files through symbolic links**: ``lock.mdb`` (LMDB's, which
   LMDB would overwrite through a link: refused by the trust check) and our ``filelock`` lock
   files of each scope (opened with ``O_NOFOLLOW``).
5. **groupby values never leave the cache tree** (path traversal), over random text.
6. **Network filesystems** are refused through the decorator before anything is computed or
   created (the detection itself, with faked mount tables: tests/test_engine.py).

Tests run as root here: "another user" is simulated with ``chown`` to ``nobody`` (skipped when
not root, since only root may give a file away).
"""

import os
import pickle
import stat
import string
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import persist_to_disk as ptd
from persist_to_disk.engine import (
    POOL, Sharing, Store, TrustPolicy, UnsafeFilesystemError, UntrustedFolderError, filesystem,
    lock_place, trust,
)
from persist_to_disk.engine.filesystem import make_dirs

from conftest import run_python
from engine_workers import digest_for, record_for, value_for
from helpers import counting, files_under
from test_engine import fake_mountinfo, umask_022  # noqa: F401  (umask_022 is a fixture)
from test_modes import write_record

STRANGER = 65534  # "nobody": a user (and group) this process is not
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="simulating another user's files needs chown, which only root may do")


@pytest.fixture(autouse=True)
def fresh_trust_cache():
    """Parent folders found trustworthy are remembered per process: start and end clean."""
    trust.forget_checked()
    yield
    trust.forget_checked()


@pytest.fixture
def tree(tmp_path):
    """``above/root/project-1/pkg/leaf``: a store with one record under a persist root, every
    folder owner-only (0700) and its files 0600, as this library creates them."""
    root = tmp_path / "above" / "root"
    leaf = root / "project-1" / "pkg" / "leaf"
    Store(leaf).append(0, digest_for("call"), record_for("call"))
    POOL.close_all()
    for folder in (tmp_path / "above", root, root / "project-1", root / "project-1" / "pkg", leaf):
        os.chmod(folder, 0o700)
    return SimpleNamespace(
        above=tmp_path / "above", root=root, project=root / "project-1", leaf=leaf,
        data=leaf / "data.mdb", lock=leaf / "lock.mdb",
        policy=lambda sharing="no": TrustPolicy(Sharing.parse(sharing), (str(root),)))


def refusal(path, policy) -> str:
    """The message of the UntrustedFolderError ``check_trusted`` raises (fails if it passes)."""
    with pytest.raises(UntrustedFolderError) as raised:
        trust.check_trusted(str(path), policy)
    assert isinstance(raised.value, OSError)
    return str(raised.value)


# =================================================================================================
# 1. Which folders and files are trusted
# =================================================================================================
def test_an_owner_only_store_under_its_persist_root_is_trusted(tree):
    trust.check_trusted(str(tree.leaf), tree.policy())
    assert trust.untrusted_reason(str(tree.leaf), tree.policy()) is None


LOOSE_MODES = [  # (what, mode, reason)
    ("leaf", 0o770, "writable by its group"),
    ("leaf", 0o703, "writable by every user"),
    ("data", 0o666, "writable by every user"),
    ("lock", 0o620, "writable by its group"),
    ("project", 0o777, "writable by every user"),
    ("root", 0o770, "writable by its group"),
]


@pytest.mark.parametrize("what, mode, reason", LOOSE_MODES,
                         ids=[f"{w}-{oct(m)}" for w, m, _ in LOOSE_MODES])
def test_a_store_others_can_write_is_refused_naming_the_path_the_reason_and_the_opt_in(
        tree, what, mode, reason):
    target = getattr(tree, what)
    os.chmod(target, mode)

    message = refusal(tree.leaf, tree.policy())

    assert f"{target} is {reason}" in message
    assert str(tree.leaf) in message
    assert stat.filemode(os.stat(target).st_mode) in message
    assert "run code" in message  # why
    assert "PERSIST_TO_DISK_SHARED" in message and "set_shared" in message  # how to opt in


@needs_root
@pytest.mark.parametrize("what", ["leaf", "data", "lock", "project", "root"])
def test_a_store_owned_by_another_user_is_refused(tree, what):
    target = getattr(tree, what)
    os.chown(target, STRANGER, os.getegid())

    message = refusal(tree.leaf, tree.policy())

    assert f"{target} is owned by another user" in message
    assert f"uid {STRANGER}" in message


def test_folders_above_the_persist_root_are_not_checked(tree):
    os.chmod(tree.above, 0o777)
    trust.check_trusted(str(tree.leaf), tree.policy())


def test_a_sticky_parent_like_tmp_may_be_writable_by_others_but_not_the_store_folder(tree):
    """Others cannot rename or delete what a sticky folder holds, and what it holds is checked."""
    os.chmod(tree.project, 0o1777)
    trust.check_trusted(str(tree.leaf), tree.policy())

    os.chmod(tree.leaf, 0o1777)
    assert "writable by every user" in refusal(tree.leaf, tree.policy())


def test_a_store_under_no_persist_root_has_only_its_own_folder_and_files_checked(tree):
    """The engine used on its own (no persist root known): its parents are the caller's."""
    no_root = TrustPolicy(Sharing.NO, ())
    os.chmod(tree.project, 0o777)
    trust.check_trusted(str(tree.leaf), no_root)

    os.chmod(tree.data, 0o606)
    assert f"{tree.data} is writable by every user" in refusal(tree.leaf, no_root)


def test_a_new_store_is_checked_where_it_will_be_created(tree):
    """A leaf that does not exist yet: the existing folders it would be made in are checked."""
    new_leaf = tree.project / "pkg" / "new" / "leaf"
    os.chmod(tree.leaf.parent, 0o777)  # pkg/, where "new" would be created
    assert f"{tree.leaf.parent} is writable by every user" in refusal(new_leaf, tree.policy())

    os.chmod(tree.leaf.parent, 0o700)
    trust.check_trusted(str(new_leaf), tree.policy())


SHARING_TABLE = [  # (owner, group, mode, accepted under no / group / all)
    ("me", "mine", 0o700, (True, True, True)),
    ("me", "mine", 0o2770, (False, True, True)),
    ("me", "mine", 0o777, (False, False, True)),
    ("me", "foreign", 0o2770, (False, False, True)),
    ("stranger", "mine", 0o2770, (False, True, True)),
    ("stranger", "mine", 0o700, (False, True, True)),
    ("stranger", "foreign", 0o700, (False, False, True)),
    ("stranger", "foreign", 0o2775, (False, False, True)),
]


@needs_root
@pytest.mark.parametrize("owner, group, mode, verdicts", SHARING_TABLE,
                         ids=[f"{o}-{g}-{oct(m)}" for o, g, m, _ in SHARING_TABLE])
def test_what_each_sharing_level_accepts(tree, owner, group, mode, verdicts):
    """``group``: your groups may write, and a teammate may own (an ordinary user can only give
    a file a group they are in); never writable by everyone. ``all``: anything."""
    os.chown(tree.leaf, os.geteuid() if owner == "me" else STRANGER,
             os.getegid() if group == "mine" else STRANGER)
    os.chmod(tree.leaf, mode)
    for sharing, accepted in zip(["no", "group", "all"], verdicts):
        reason = trust.untrusted_reason(str(tree.leaf), tree.policy(sharing))
        assert (reason is None) is accepted, (sharing, reason)


@pytest.mark.parametrize("sharing", ["no", "group", "all"])
@pytest.mark.parametrize("name", ["lock.mdb", "data.mdb"])
def test_a_store_file_that_is_a_symbolic_link_is_refused_at_every_sharing_level(
        tree, name, sharing):
    """LMDB opens (and initialises) lock.mdb through a link: a planted link would make it
    overwrite the link's target."""
    victim = tree.above / "victim.txt"
    victim.write_text("precious\n")
    (tree.leaf / name).unlink()
    (tree.leaf / name).symlink_to(victim)

    message = refusal(tree.leaf, tree.policy(sharing))

    assert f"{tree.leaf / name} is a symbolic link" in message
    assert victim.read_text() == "precious\n"


def test_parent_folders_are_checked_once_per_process_the_store_itself_every_time(tree):
    """What makes the check cheap: parents found trustworthy are remembered (a few ``stat``
    calls per store opened, none per call); the store's own folder and files are not."""
    policy = tree.policy()
    trust.check_trusted(str(tree.leaf), policy)
    os.chmod(tree.project, 0o777)
    trust.check_trusted(str(tree.leaf), policy)  # remembered

    trust.forget_checked()
    assert "writable by every user" in refusal(tree.leaf, policy)
    os.chmod(tree.project, 0o700)
    trust.check_trusted(str(tree.leaf), policy)
    os.chmod(tree.leaf, 0o777)
    assert "writable by every user" in refusal(tree.leaf, policy)


@pytest.mark.parametrize("value, expected", [
    ("no", Sharing.NO), (False, Sharing.NO), ("false", Sharing.NO), ("0", Sharing.NO),
    ("private", Sharing.NO), (" Group ", Sharing.GROUP), (True, Sharing.GROUP),
    ("yes", Sharing.GROUP), ("1", Sharing.GROUP), ("all", Sharing.ALL), (Sharing.ALL, Sharing.ALL),
])
def test_sharing_parse_accepts_names_and_booleans(value, expected):
    assert Sharing.parse(value) is expected


@pytest.mark.parametrize("value", ["everyone", "", None, 2, "group,all"])
def test_sharing_parse_rejects_anything_else_naming_the_choices(value):
    with pytest.raises(ValueError, match=r"shared must be 'no', 'group' or 'all'"):
        Sharing.parse(value)


# =================================================================================================
# 2. Creating folders and files at each sharing level
# =================================================================================================
def test_group_mode_folders_are_made_2770_whatever_the_umask(tmp_path, umask_022):
    os.chmod(tmp_path, 0o755)
    make_dirs(str(tmp_path / "a" / "b"), Sharing.GROUP.folder_mode)

    assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o2770
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "b").st_mode) == 0o2770
    assert stat.S_IMODE(os.stat(tmp_path).st_mode) == 0o755, "an existing folder is left alone"


def test_store_files_made_under_a_umask_are_given_the_group_mode(tmp_path, umask_022):
    leaf = tmp_path / "leaf"
    Store(leaf).append(0, digest_for("call"), record_for("call"))
    POOL.close_all()
    os.chmod(leaf / "data.mdb", 0o640)  # what LMDB makes of mode 0660 under umask 022

    group = TrustPolicy(Sharing.GROUP, ())
    assert trust.share_store_files(str(leaf), TrustPolicy(Sharing.NO, ())) == []
    assert sorted(trust.share_store_files(str(leaf), group)) == [str(leaf / "data.mdb"),
                                                                 str(leaf / "lock.mdb")]
    assert {stat.S_IMODE(os.stat(leaf / n).st_mode) for n in trust.STORE_FILES} == {0o660}
    assert trust.share_store_files(str(leaf), group) == []


# =================================================================================================
# 3. The setting
# =================================================================================================
def test_shared_comes_from_config_ini_then_the_environment_then_code(ptd_env, monkeypatch):
    assert ptd.config.get_shared() is Sharing.NO
    assert trust.policy_of(ptd.config.engine_settings()) == TrustPolicy(
        Sharing.NO, (str(ptd_env.persist),))

    ptd_env.home.mkdir(exist_ok=True)
    (ptd_env.home / "config.ini").write_text("[global_settings]\nshared = group\n")
    ptd.config.reload()
    assert ptd.config.get_shared() is Sharing.GROUP
    assert trust.policy_of(ptd.config.engine_settings()).sharing is Sharing.GROUP

    monkeypatch.setenv("PERSIST_TO_DISK_SHARED", "all")
    ptd.config.reload()
    assert ptd.config.get_shared() is Sharing.ALL

    assert ptd.config.set_shared(False) == "no"
    assert os.environ["PERSIST_TO_DISK_SHARED"] == "no", "exported for child processes"
    assert trust.policy_of(ptd.config.engine_settings()).sharing is Sharing.NO
    ptd.config.set_persist_path_local(str(ptd_env.tmp / "local"))
    assert trust.policy_of(ptd.config.engine_settings()).roots == tuple(
        sorted([str(ptd_env.persist), str(ptd_env.tmp / "local")]))


@pytest.mark.parametrize("where", ["config.ini", "environment"])
def test_a_bad_shared_value_is_a_config_error_naming_where_it_came_from(ptd_env, monkeypatch,
                                                                        where):
    if where == "config.ini":
        ptd_env.home.mkdir(exist_ok=True)
        (ptd_env.home / "config.ini").write_text("[global_settings]\nshared = maybe\n")
        source = str(ptd_env.home / "config.ini")
    else:
        monkeypatch.setenv("PERSIST_TO_DISK_SHARED", "maybe")
        source = "PERSIST_TO_DISK_SHARED"
    ptd.config.reload()
    compute, calls = counting()

    with pytest.raises(ptd.ConfigError, match="shared") as raised:
        compute(1)
    assert source in str(raised.value) and "'maybe'" in str(raised.value)
    assert calls == []
    assert not ptd_env.persist.exists()
    with pytest.raises(ValueError):
        ptd.config.set_shared("maybe")


# =================================================================================================
# 4. Through the decorator (end to end)
# =================================================================================================
class _Planted:
    """A pickle that runs code when loaded: it makes the folder ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def plant(compute, marker: Path) -> Path:
    """Store for ``compute(1)`` a record whose loading runs code; return its leaf folder."""
    store, _, _ = write_record(compute, (1,), {}, pickle.dumps(_Planted(str(marker))),
                               "pickle:4", "3.11.7")
    POOL.close_all()  # the next call opens the environment afresh, as a new process would
    return Path(store.path)


LOOSENINGS = {
    "leaf writable by everyone": lambda leaf: os.chmod(leaf, 0o777),
    "function folder writable by its group": lambda leaf: os.chmod(leaf.parent, 0o770),
    "data.mdb writable by everyone": lambda leaf: os.chmod(leaf / "data.mdb", 0o666),
}


@pytest.mark.parametrize("loosen", list(LOOSENINGS.values()), ids=list(LOOSENINGS))
def test_a_planted_pickle_in_a_folder_others_can_write_is_never_loaded(ptd_env, loosen):
    compute, calls = counting()
    marker = ptd_env.tmp / "the planted pickle ran"
    leaf = plant(compute, marker)
    loosen(leaf)
    before = (leaf / "data.mdb").read_bytes()

    with pytest.raises(ptd.UntrustedFolderError, match="set_shared"):
        compute(1)

    assert not marker.exists(), "the planted pickle was loaded"
    assert calls == [], "nothing is computed into a cache that cannot be trusted"
    assert (leaf / "data.mdb").read_bytes() == before

    # The explicit opt-in loads it, which shows the planted payload is live.
    ptd.config.set_shared("all")
    compute(1)
    assert marker.exists()


def test_the_planted_pickle_is_live_in_a_trusted_folder(ptd_env):
    """The control for the test above: in an owner-only folder the same record is loaded
    (and runs), so the refusal above is what protects, not a broken payload."""
    compute, _ = counting()
    marker = ptd_env.tmp / "the planted pickle ran"
    plant(compute, marker)
    compute(1)
    assert marker.exists()


@needs_root
def test_a_cache_file_owned_by_another_user_is_not_loaded(ptd_env):
    compute, calls = counting()
    marker = ptd_env.tmp / "the planted pickle ran"
    leaf = plant(compute, marker)
    os.chown(leaf / "data.mdb", STRANGER, STRANGER)

    with pytest.raises(ptd.UntrustedFolderError, match="owned by another user"):
        compute(1)
    assert not marker.exists() and calls == []


def test_a_group_cache_is_created_group_shared_and_refused_by_a_private_reader(ptd_env,
                                                                              python_runner):
    code = """
        import os
        import persist_to_disk as ptd
        os.umask(0o022)

        @ptd.persistf(groupby=["dataset"])
        def train(dataset, x):
            print("computed", x)
            return x

        try:
            print("value", train("mnist", 1))
        except ptd.UntrustedFolderError as err:
            print("refused", err)
    """
    team = python_runner(code, extra_env={"PERSIST_TO_DISK_SHARED": "group"})
    assert team.stdout.splitlines() == ["computed 1", "value 1"]
    made = {p: stat.S_IMODE(p.stat().st_mode) for p in files_under(ptd_env.persist)}
    assert {mode for p, mode in made.items() if p.is_dir()} == {0o2770}, made
    assert {mode for p, mode in made.items() if not p.is_dir()} == {0o660}, made
    assert python_runner(code, extra_env={"PERSIST_TO_DISK_SHARED": "group"}).stdout == "value 1\n"

    private = python_runner(code)
    assert private.stdout.startswith("refused") and "writable by its group" in private.stdout


def test_a_lock_mdb_symlink_never_makes_lmdb_overwrite_its_target(tmp_path):
    """Without the check, LMDB opens lock.mdb through the link and rewrites the target."""
    leaf = tmp_path / "leaf"
    Store(leaf).append(0, digest_for("call"), record_for("call"))
    POOL.close_all()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (leaf / "lock.mdb").unlink()
    (leaf / "lock.mdb").symlink_to(victim)

    with pytest.raises(UntrustedFolderError, match="symbolic link"):
        Store(leaf).latest(0, digest_for("call"))
    assert victim.read_text() == "precious\n"


# =================================================================================================
# 5. Our filelock lock files and symbolic links
# =================================================================================================
@pytest.mark.parametrize("scope", ["call", "func", "global"])
def test_a_symlink_planted_at_a_lock_file_never_touches_its_target(ptd_env, scope):
    compute, calls = counting(lock_granularity=scope)
    persisted = compute.__persisted__
    store, _, digest, _ = persisted.locate((1,), {})
    path = Path(lock_place(persisted.scope, store.path, digest, persisted.project_root)[0])
    make_dirs(str(path.parent), 0o700)
    victim = ptd_env.tmp / "victim.txt"
    victim.write_text("precious\n")
    os.chmod(victim, 0o644)
    path.symlink_to(victim)

    with pytest.warns(ptd.PersistWarning, match="Cannot create or take the lock"):
        assert compute(1) == (1, 1)

    assert victim.read_text() == "precious\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert path.is_symlink(), "the link was neither followed nor replaced"
    assert compute(1) == (1, 1) and calls == [1], "the result was still stored"


# =================================================================================================
# 6. groupby values never leave the cache tree
# =================================================================================================
_TRAVERSAL_TEXT = st.text(alphabet=st.sampled_from(list("./\\\0~$ -") + ["a", "é", "\n"]),
                          max_size=8) | st.text(max_size=12) | st.sampled_from(
    ["..", ".", "", "/", "../..", "/etc", "..\\..", "a/../../b", "\0", "x" * 256, "é" * 128,
     "\ud800", "\udc80", ". .", "...", "~", "$HOME"])


@ptd.persistf(groupby=["where", ("left", "right")])
def _grouped(where, left, right, x):
    return x


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(where=_TRAVERSAL_TEXT, left=_TRAVERSAL_TEXT, right=_TRAVERSAL_TEXT)
def test_a_groupby_value_is_one_folder_inside_the_function_folder_or_refused(where, left, right):
    try:
        store = _grouped.__persisted__.locate((where, left, right, 1), {})[0]
    except ptd.ConfigError:
        return
    folder = os.path.realpath(_grouped.cache_folder())
    leaf = os.path.realpath(store.path)
    parts = Path(os.path.relpath(leaf, folder)).parts
    assert parts == (where, f"{left}$${right}")


def test_refused_and_odd_groupby_values_create_nothing_outside_the_function_folder(ptd_env):
    """Real calls: the refused values create nothing at all; the odd but valid ones (``...``,
    ``~``, a backslash path, a newline) each make one leaf inside the function's folder."""
    refused = ["..", ".", "", "/etc", "../../escape", "\0", "x" * 256, "\ud800", "\udc80"]
    for value in refused:
        with pytest.raises(ptd.ConfigError, match="'where'"):
            _grouped(value, "l", "r", 1)
    assert files_under(ptd_env.persist) == []
    odd = ["...", "~", "..\\..\\x", "a\nb", " ", "$HOME"]
    for value in odd:
        assert _grouped(value, "l", "r", 1) == 1
    folder = Path(_grouped.cache_folder())
    outside = [p for p in files_under(ptd_env.persist)
               if folder not in p.parents and p != folder and p not in folder.parents]
    assert outside == []
    assert sorted(p.name for p in folder.iterdir()) == sorted(odd)


# =================================================================================================
# 7. Network filesystems, through the decorator
# =================================================================================================
def test_a_persist_path_on_a_network_filesystem_is_refused_before_computing(ptd_env,
                                                                           monkeypatch):
    mountinfo = ptd_env.tmp / "mountinfo"
    mountinfo.write_text(fake_mountinfo(ptd_env.tmp, "nfs4"))
    monkeypatch.setattr(filesystem, "MOUNTINFO_PATH", str(mountinfo))
    monkeypatch.setattr(filesystem, "_checked_devices", {})
    compute, calls = counting()

    with pytest.raises(UnsafeFilesystemError, match="nfs4"):
        compute(1)
    assert calls == []
    assert not ptd_env.persist.exists()
