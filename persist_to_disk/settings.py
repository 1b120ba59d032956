"""Global settings: the settings folder, ``config.ini``, and the project and persist paths.

The settings folder is ``~/.persist_to_disk`` (override it with the environment variable
``PERSIST_TO_DISK_HOME``, for tests and clusters). It holds ``config.ini`` (written by
:meth:`Config.generate_config`) and ``project_to_pids.txt``. Nothing is read or created at
import: settings load on first use, so a broken ``config.ini`` is reported (naming the file and
key) at the first call, never as an import error. Changes made after import (for example
:meth:`Config.set_persist_path`) apply to every later call.

Settings come from, lowest first: defaults, ``config.ini``, environment variables
(``PERSIST_TO_DISK_PERSIST_PATH``, ``..._PERSIST_PATH_LOCAL``, ``..._HASHSIZE``,
``..._LOCK_GRANULARITY``, ``..._DURABILITY``, ``..._SHARED``, ``..._CODE_CHANGES``,
``..._PROJECT_PATH``), calls made
in code. A setting made in code is also written to its environment variable, so that child
processes -- a ``multiprocessing`` pool started with ``spawn``, which never runs the parent's
``if __name__ == "__main__"`` block, or a ``subprocess`` -- use the same cache as the parent.

The engine reads none of this: it is told what it needs through one settings object,
:meth:`Config.engine_settings` (``shared`` and the persist paths decide which cache folders it
may load, ``engine/trust.py``; ``PERSIST_TO_DISK_INITIAL_MAP_SIZE`` how large a new store's map
starts; which folders hold 0.0.7's files; how its messages name this package's tools), and
reaches storage through :meth:`Config.storage`, the local tier built from that object and
built again whenever the settings change.

The settings folder itself is checked before anything in it is read (``projects.py`` explains
why): it, ``config.ini`` and ``project_to_pids.txt`` must pass the cache's trust rule at the
sharing level given by ``PERSIST_TO_DISK_SHARED`` or ``config.set_shared`` -- never by the
``shared`` written in that ``config.ini`` -- and ``no`` when neither says otherwise.

``config.ini`` is read as written: no ``%`` interpolation (a ``%`` in a path is just a ``%``),
and it must be UTF-8 text; anything wrong with the settings is a :class:`ConfigError` (or an
``UntrustedFolderError``) naming the file or variable and what to do.
"""

import io
import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple

from .engine import (MAX_BUCKET, Durability, EngineError, EngineSettings, LocalStorage,
                     LockScope, Sharing, Wording, make_private_dirs)
from .engine import settings as engine_settings
from .code_identity import DEFAULT_POLICY as DEFAULT_CODE_CHANGES
from .code_identity import parse_code_changes
from .errors import ConfigError, warn
from .imported import legacy_buckets_message
from .projects import (check_project_path, check_settings_folder, project_id, read_settings_file,
                       write_settings_file)
from .remote_config import DEFAULTS as REMOTE_DEFAULTS
from .remote_config import check_namespace, parse_remote_values, remote_settings

if TYPE_CHECKING:
    import configparser

SETTINGS_ENV = "PERSIST_TO_DISK_HOME"
SECTION = "global_settings"
DEFAULT_HASHSIZE = 500
DEFAULT_LOCK_GRANULARITY = "call"
DEFAULT_DURABILITY = "standard"
DEFAULT_SHARED = "no"
ENV_PREFIX = "PERSIST_TO_DISK_"
#: Bytes of address space a new store maps first (rounded up to whole 4 KiB pages; at least
#: 64 KiB); unset, the engine's default of 1 GiB. Read whenever :meth:`Config.storage` is
#: asked for, not at import, so that a test can set it for the subprocesses it starts and use
#: a small map to make growth (and other processes' growth) frequent.
INITIAL_MAP_SIZE_VARIABLE = ENV_PREFIX + "INITIAL_MAP_SIZE"
_PAGE = 4096
_MIN_MAP_SIZE = 64 * 1024

#: How the engine's messages name this package's tools and settings (engine/settings.py):
#: its messages read as they did when the engine spelled them itself.
WORDING = Wording(
    verify="run `ptd verify {path}`",
    compact="`ptd compact {path}`",
    list_stores="`ptd ls` lists the stores",
    persist_path="persist_path",
    set_persist_path=(", with persist_to_disk.config.set_persist_path(...) or persist_path in "
                      "config.ini. To share results between machines, keep this cache on "
                      "node-local disk and set `remote = s3://BUCKET/PREFIX` in config.ini "
                      "(or PERSIST_TO_DISK_REMOTE): a shared cache on S3-compatible storage "
                      "that every machine fills and reads (README: \"Sharing a cache between "
                      "machines\")"),
    share_setting="shared",
    share=("through `shared = {level}` in config.ini, the environment variable "
           "PERSIST_TO_DISK_SHARED={level}, or persist_to_disk.config.set_shared('{level}')"),
)
# The engine is told everything else when a store is opened (Config.storage()), but its
# messages name this package's tools from the moment the package is imported: a refusal from
# a direct engine call (a check of a folder, ``verify_store``) reads like one through the
# decorator. Only the wording is installed here; nothing is read or created at import.
engine_settings.install(engine_settings.current().replace(wording=WORDING))


_settings_folder_known: Tuple[Any, str] = ((), "")


def settings_folder() -> str:
    """The settings folder: ``PERSIST_TO_DISK_HOME``, else ``~/.persist_to_disk``. Asked ~7
    times by a first call: remembered for the values of the variables it depends on, when
    it does not depend on the working directory too."""
    global _settings_folder_known
    chosen = os.environ.get(SETTINGS_ENV)
    key = (chosen, os.environ.get("HOME"))
    known = _settings_folder_known
    if known[0] == key:
        return known[1]
    path = os.path.expanduser(chosen or os.path.join("~", ".persist_to_disk"))
    folder = os.path.abspath(path)
    if os.path.isabs(path):
        _settings_folder_known = (key, folder)
    return folder


def settings_folder_source() -> str:
    """What chose the settings folder, for messages."""
    if os.environ.get(SETTINGS_ENV):
        return f"set by the environment variable {SETTINGS_ENV}"
    return "the default settings folder"


def settings_sharing() -> Sharing:
    """The sharing level the settings folder and its files are checked at: the environment
    variable (which ``Config.set_shared`` exports too), else ``no``; never config.ini's own
    ``shared``, since a file may not vouch for the folder it is written in."""
    name = ENV_PREFIX + "SHARED"
    value = os.environ.get(name, "").strip()
    if not value:
        return Sharing.NO
    try:
        return Sharing.parse(value)
    except ValueError as err:
        raise ConfigError(f"environment variable {name}: {err}") from None


def _config_parser() -> "configparser.ConfigParser":
    """A parser that reads values as written: a ``%`` in a path is a ``%``.

    configparser is imported here, when a config.ini is read or written (~2 ms of a plain
    import otherwise); a forked child imports it before the fork (``CALL_PATH_MODULES``)."""
    import configparser
    return configparser.ConfigParser(interpolation=None)


#: What the first call of a decorated function may import lazily: imported before a fork
#: (``persist_to_disk/__init__.py``), so that a child never waits for an import lock a
#: parent thread held at the fork.
CALL_PATH_MODULES = ("configparser",)


def parse_hashsize(value: Any, where: str) -> int:
    try:
        hashsize = int(value)
    except (TypeError, ValueError, OverflowError):
        hashsize = None
    if hashsize is not None and hashsize != value and not isinstance(value, str):
        hashsize = None  # 1.5 (or Fraction(3, 2)) is no bucket count, not 1
    if hashsize is None or isinstance(value, bool) or not 1 <= hashsize <= MAX_BUCKET + 1:
        raise ConfigError(f"{where} must be a whole number from 1 to {MAX_BUCKET + 1}; "
                          f"got {value!r}")
    return hashsize


def initial_map_size(text: Optional[str] = None) -> Optional[int]:
    """The initial map size ``PERSIST_TO_DISK_INITIAL_MAP_SIZE`` asks for (``text``: its
    value, read from the environment if not given), in bytes rounded up to whole pages; None
    when it is unset (the engine's default). Otherwise an ``EngineError`` naming it (the
    error the engine raised when it read the variable itself)."""
    if text is None:
        text = os.environ.get(INITIAL_MAP_SIZE_VARIABLE, "")
    text = text.strip()
    if not text:
        return None
    try:
        size = int(text)
        if size < _MIN_MAP_SIZE:
            raise ValueError
    except ValueError:
        raise EngineError(
            f"The environment variable {INITIAL_MAP_SIZE_VARIABLE}={text!r} should be a number "
            f"of bytes of at least {_MIN_MAP_SIZE} (the initial address space of each cache "
            "store); unset it to use the default of 1 GiB.") from None
    return (size + _PAGE - 1) // _PAGE * _PAGE


def _current_directory() -> str:
    try:
        return os.getcwd()
    except OSError:  # the working directory was deleted
        return os.path.expanduser("~")


_instances: "weakref.WeakSet[Config]" = weakref.WeakSet()


def _reset_locks_after_fork() -> None:
    """Give every Config a new lock in a forked child: the parent's may have been held by
    another thread (loading the settings, for example), which does not exist in the child, so
    the child would wait for it forever."""
    for config in list(_instances):
        config._lock = threading.RLock()


os.register_at_fork(after_in_child=_reset_locks_after_fork)


class Config:
    """The settings every decorated function reads at call time.

    ``version`` changes whenever a path setting changes, so decorated functions know to
    resolve their cache folder again.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        _instances.add(self)
        self._loaded = False
        self._settings: Dict[str, Any] = {}
        self._project_path = self._initial_project_path()
        self._project_roots: Dict[tuple, str] = {}
        self._exported: Dict[str, str] = {}
        # (version and PERSIST_TO_DISK_INITIAL_MAP_SIZE it was built for, the tier)
        self._storage: Optional[Tuple[Tuple[int, Optional[str]], LocalStorage, Any]] = None
        self.version = 0
        #: When records are dated and ``max_age`` is measured (:meth:`set_clock`).
        self.clock: Callable[[], float] = time.time

    @staticmethod
    def _initial_project_path() -> str:
        inherited = os.environ.get(ENV_PREFIX + "PROJECT_PATH")
        return Config._absolute(inherited) if inherited else os.path.normpath(_current_directory())

    def _export(self, key: str, value: str) -> None:
        """Make a setting made in code visible to child processes."""
        name = ENV_PREFIX + key.upper()
        os.environ[name] = value
        self._exported[name] = value

    # --- loading --------------------------------------------------------------------------
    @property
    def config_path(self) -> str:
        return os.path.join(settings_folder(), "config.ini")

    def _defaults(self) -> Dict[str, str]:
        cache = os.path.join(settings_folder(), "cache")
        return {"persist_path": cache, "persist_path_local": "",
                "hashsize": str(DEFAULT_HASHSIZE),
                "lock_granularity": DEFAULT_LOCK_GRANULARITY,
                "durability": DEFAULT_DURABILITY,
                "shared": DEFAULT_SHARED, "code_changes": DEFAULT_CODE_CHANGES,
                **REMOTE_DEFAULTS}

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            values = self._defaults()
            path = self.config_path
            sharing = settings_sharing()
            text = None
            if check_settings_folder(settings_folder(), sharing, settings_folder_source()):
                text = read_settings_file(path, sharing)
            if text is not None:
                parser = _config_parser()
                try:
                    parser.read_string(text, source=path)
                except _configparser_error() as err:
                    raise ConfigError(f"{path} cannot be parsed ({err}). Fix it, or delete it "
                                      "and run persist_to_disk.config.generate_config().") from err
                if parser.has_section(SECTION):
                    for key, value in parser[SECTION].items():
                        if key not in values:
                            warn(
                                f"{path}: [{SECTION}] has an unknown key {key!r}, which is "
                                f"ignored; the keys are {', '.join(sorted(values))}.")
                        elif value.strip():
                            values[key] = value.strip()
                misplaced = [name for name in parser.sections() if name != SECTION]
                if misplaced:
                    warn(
                        f"{path}: the section(s) {', '.join(f'[{n}]' for n in misplaced)} are "
                        f"ignored; settings are read from [{SECTION}] only.")
            source = {key: f"{path}: [{SECTION}] {key}" for key in values}
            for key in values:
                inherited = os.environ.get(ENV_PREFIX + key.upper(), "").strip()
                if inherited:
                    values[key] = inherited
                    source[key] = f"environment variable {ENV_PREFIX}{key.upper()}"
            settings = {
                "persist_path": self._folder(values["persist_path"], source["persist_path"]),
                # unset: follows persist_path, wherever that is set (file, environment, code)
                "persist_path_local": (self._folder(values["persist_path_local"],
                                                    source["persist_path_local"])
                                       if values["persist_path_local"] else None),
                "hashsize": parse_hashsize(values["hashsize"], source["hashsize"]),
            }
            for key, parse in (("lock_granularity", LockScope.parse),
                               ("durability", Durability.parse),
                               ("shared", Sharing.parse),
                               ("code_changes", parse_code_changes)):
                try:
                    settings[key] = parse(values[key])
                except ValueError as err:
                    raise ConfigError(f"{source[key]}: {err}") from None
            settings.update(parse_remote_values(values, source))
            # settings made in code before the first load win over the file
            settings.update(self._settings)
            self._settings = settings
            self._loaded = True

    @staticmethod
    def _absolute(path: str) -> str:
        return os.path.normpath(os.path.abspath(os.path.expanduser(str(path))))

    @classmethod
    def _folder(cls, path: str, where: str) -> str:
        """``path`` made absolute; a ConfigError if it names an existing file (every store
        below it would fail, call after call, with a warning that hides the cause)."""
        try:
            folder = cls._absolute(path)
        except (ValueError, OSError) as err:  # a NUL character, a working folder deleted
            raise ConfigError(f"{where}: {path!r} is not a usable path ({err}).") from None
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise ConfigError(f"{where}: {folder} is a file, not a folder; point it at a folder "
                              "(it is created if missing).")
        return folder

    def reload(self) -> None:
        """Forget settings made in code (and their exported environment variables, and a clock
        set with :meth:`set_clock`) and read the environment and ``config.ini`` again."""
        with self._lock:
            for name, value in self._exported.items():
                if os.environ.get(name) == value:
                    del os.environ[name]
            self._exported.clear()
            self._settings, self._loaded = {}, False
            self._project_path = self._initial_project_path()
            self._project_roots.clear()
            self.clock = time.time
            self.version += 1

    # --- the seed's API -------------------------------------------------------------------
    def generate_config(self) -> str:
        """Write the current settings to ``config.ini`` in the settings folder; return its path.

        The file is written owner-only and atomically (a temporary file renamed over the old
        one), and only once it is known to read back as these settings.
        """
        self._ensure_loaded()
        parser = _config_parser()
        parser[SECTION] = {
            "persist_path": self._settings["persist_path"],
            "persist_path_local": self.get_persist_path(local=True),
            "hashsize": str(self._settings["hashsize"]),
            "lock_granularity": self._settings["lock_granularity"].value,
            "durability": self._settings["durability"].value,
            "shared": self._settings["shared"].value,
        }
        if self._settings["code_changes"] != DEFAULT_CODE_CHANGES:  # (older versions: unknown)
            parser[SECTION]["code_changes"] = self._settings["code_changes"]
        for key in REMOTE_DEFAULTS:  # written only when set, so older versions read the file
            value = self._settings[key]
            if key == "remote_unsigned":
                value = "yes" if value else ""
            elif key in ("remote_lease_seconds", "remote_timeout"):
                value = f"{value:g}" if value != float(REMOTE_DEFAULTS[key]) else ""
            if value:
                parser[SECTION][key] = str(value)
        folder, path = settings_folder(), self.config_path
        text = _written(parser, path)
        try:
            make_private_dirs(folder)
        except OSError as err:
            raise ConfigError(f"Cannot create the settings folder {folder} "
                              f"({settings_folder_source()}): {err}. Point the environment "
                              f"variable {SETTINGS_ENV} at a folder you can write.") from None
        check_settings_folder(folder, settings_sharing(), settings_folder_source())
        try:
            write_settings_file(path, text)
        except OSError as err:
            raise ConfigError(f"Cannot write {path} ({err}). The settings folder {folder} "
                              f"must be a folder you can write; point {SETTINGS_ENV} at "
                              "one.") from None
        logging.getLogger("persist_to_disk").info("Settings written to %s", path)
        return path

    def _set(self, key: str, value: Any) -> Any:
        with self._lock:
            self._settings[key] = value
            self._export(key, str(getattr(value, "value", value)))
            self.version += 1
        return value

    # --- what the engine is told ----------------------------------------------------------
    def engine_settings(self) -> EngineSettings:
        """The engine's settings, made from these: ``shared`` and the persist paths (where its
        trust check of a store's parent folders stops), the initial map size
        (:data:`INITIAL_MAP_SIZE_VARIABLE`), the check that refuses to create a store beside
        0.0.7's ``.pkl`` bucket files, and the wording that names this package's tools in its
        messages."""
        self._ensure_loaded()
        settings = self._settings
        roots = (settings["persist_path"], settings["persist_path_local"])
        return EngineSettings(sharing=settings["shared"],
                              trust_roots=tuple(root for root in roots if root),
                              initial_map_size=initial_map_size(),
                              foreign_folder=legacy_buckets_message,
                              wording=WORDING)

    def storage(self, remote: bool = True):
        """The storage tier stores are opened from, built from :meth:`engine_settings` (and,
        with ``remote`` set in the settings, :meth:`remote_settings`: the shared tier with the
        local one in front) and kept until the settings change (``version``) or the initial
        map size variable does. ``remote=False``: the local tier alone
        (``persistf(remote=False)``)."""
        key = (self.version, os.environ.get(INITIAL_MAP_SIZE_VARIABLE))
        built = self._storage
        if built is None or built[0] != key:
            with self._lock:
                built = self._storage = (key, LocalStorage(self.engine_settings()), None)
        if not remote:
            return built[1]
        if built[2] is None:  # the shared tier, or the local one when no remote is set
            with self._lock:
                settings = self.remote_settings()  # (a ConfigError names what to fix)
                if settings is None:
                    tier = built[1]
                else:
                    from .remote import SharedStorage
                    tier = SharedStorage(built[1], settings)
                if self._storage is not None and self._storage[0] == key:
                    self._storage = built = (key, built[1], tier)
                else:
                    built = (key, built[1], tier)
        return built[2]

    def remote_settings(self):
        """The shared tier's settings (``remote_config.py``), or None without ``remote``."""
        self._ensure_loaded()
        return remote_settings(self._settings, self._project_path, settings_folder())

    def set_remote(self, url: Optional[str]) -> str:
        """Share results through S3-compatible storage at ``s3://BUCKET/PREFIX`` (endpoint
        and credentials from boto3's settings: ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``...);
        ``None`` or ``""`` keeps caches on this machine only."""
        values = {**REMOTE_DEFAULTS, "remote": url or ""}
        parsed = parse_remote_values(values, {key: "set_remote" for key in values})
        return self._set("remote", parsed["remote"])

    def set_remote_namespace(self, namespace: str) -> str:
        """The name results are shared under (default: the project folder's name)."""
        return self._set("remote_namespace",
                         check_namespace(str(namespace).strip(), "set_remote_namespace"))

    def set_remote_lock(self, url: Optional[str]) -> str:
        """``redis://HOST:PORT`` (or ``redis+cluster://``): leases and wake-ups through
        Redis/Valkey instead of the bucket; ``None`` or ``""``: the bucket."""
        values = {**REMOTE_DEFAULTS, "remote_lock": url or ""}
        parsed = parse_remote_values(values, {key: "set_remote_lock" for key in values})
        return self._set("remote_lock", parsed["remote_lock"])

    def get_remote(self) -> str:
        self._ensure_loaded()
        return self._settings["remote"]

    def set_persist_path(self, path: str) -> str:
        """Where caches are stored (applies to every later call)."""
        return self._set("persist_path", self._folder(path, "set_persist_path"))

    def set_persist_path_local(self, path: str) -> str:
        """Where caches of functions decorated with ``local=True`` are stored."""
        return self._set("persist_path_local", self._folder(path, "set_persist_path_local"))

    def set_project_path(self, path: str) -> str:
        """The folder whose layout the cache tree mirrors (default: the working directory)."""
        with self._lock:
            self._project_path = check_project_path(self._absolute(path), "set_project_path:")
            self._export("project_path", self._project_path)
            self.version += 1
        return self._project_path

    def set_hashsize(self, hashsize: int = DEFAULT_HASHSIZE) -> int:
        return self._set("hashsize", parse_hashsize(hashsize, "hashsize"))

    def set_lock_granularity(self, granularity: str) -> str:
        return self._set("lock_granularity", LockScope.parse(granularity)).value

    def set_durability(self, durability: str) -> str:
        return self._set("durability", Durability.parse(durability)).value

    def set_shared(self, shared="group") -> str:
        """Share the cache: ``'group'`` (or True) creates folders 2770 and files 0660 and loads
        folders your groups may write; ``'all'`` also loads folders anyone may write (an
        explicit opt-in: they could run code in your processes); ``'no'`` (or False, the
        default) keeps everything owner-only."""
        return self._set("shared", Sharing.parse(shared)).value

    def set_code_changes(self, policy: str) -> str:
        """What an edit of a cached function's code does, for every function that does not
        say (``persistf(code_changes=...)``): ``'warn'`` (default), ``'recompute'`` or
        ``'ignore'`` (README: "When the code changes")."""
        try:
            return self._set("code_changes", parse_code_changes(policy))
        except ValueError as err:
            raise ConfigError(f"config.set_code_changes: {err}") from None

    def get_code_changes(self) -> str:
        self._ensure_loaded()
        return self._settings["code_changes"]

    def set_clock(self, clock: Optional[Callable[[], float]] = None) -> None:
        """The clock (seconds since the epoch, like ``time.time``) records are dated by and
        ``max_age`` is measured with; ``None`` restores ``time.time``. For tests of expiry
        without sleeping; it is not a setting child processes inherit."""
        if clock is not None and not callable(clock):
            raise ConfigError(f"config.set_clock takes a function returning seconds since the "
                              f"epoch, or None; got {clock!r:.100}")
        self.clock = time.time if clock is None else clock

    def get_persist_path(self, local: bool = False) -> str:
        self._ensure_loaded()
        if local and self._settings["persist_path_local"]:
            return self._settings["persist_path_local"]
        return self._settings["persist_path"]

    def get_project_path(self) -> str:
        return self._project_path

    def get_hashsize(self) -> int:
        self._ensure_loaded()
        return self._settings["hashsize"]

    def get_lock_granularity(self) -> LockScope:
        self._ensure_loaded()
        return self._settings["lock_granularity"]

    def get_durability(self) -> Durability:
        self._ensure_loaded()
        return self._settings["durability"]

    def get_shared(self) -> Sharing:
        self._ensure_loaded()
        return self._settings["shared"]

    def get_project_persist_path(self, local: bool = False) -> str:
        """``<persist_path>/<project folder name>-<autoid>``, created owner-only on first use."""
        persist_path = self.get_persist_path(local)
        project_path = self._project_path
        key = (settings_folder(), persist_path, project_path)
        root = self._project_roots.get(key)
        if root is None:
            name = os.path.basename(project_path) or "root"
            pid = project_id(settings_folder(), project_path, settings_sharing(),
                             settings_folder_source())
            root = os.path.join(persist_path, f"{name}-{pid}")
            self._project_roots[key] = root
        return root

    def __repr__(self) -> str:
        loaded = self._settings if self._loaded else "(not loaded yet)"
        return f"Config(project_path={self._project_path!r}, settings={loaded})"


def _configparser_error() -> type:
    import configparser
    return configparser.Error


def _written(parser: "configparser.ConfigParser", path: str) -> str:
    """The text of ``parser``, after checking that reading it back (as ``_ensure_loaded``
    reads) gives every value as it is: a value configparser cannot carry (leading or
    trailing spaces, a line break, text that is not UTF-8) is a ConfigError naming it."""
    buffer = io.StringIO()
    parser.write(buffer)
    text = buffer.getvalue()
    check = _config_parser()
    try:
        check.read_string(text, source=path)
    except _configparser_error() as err:
        raise ConfigError(f"Cannot write {path}: the settings would not read back ({err}). "
                          "Set the odd value with its environment variable instead.") from None
    for key, value in parser[SECTION].items():
        problem = None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            problem = "is not text that can be saved as UTF-8"
        if problem is None and check[SECTION].get(key, "").strip() != value:
            problem = "would not read back as written (leading or trailing spaces, a line break)"
        if problem:
            raise ConfigError(f"Cannot write {path}: {key} = {value!r} {problem}. Choose another "
                              f"value, or set it with the environment variable "
                              f"{ENV_PREFIX}{key.upper()} instead.")
    return text
