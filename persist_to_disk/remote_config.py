"""The remote settings: from ``config.ini`` keys and environment variables to the shared tier's
:class:`~.remote.RemoteSettings`.

Keys (``[global_settings]`` in ``config.ini``, each also ``PERSIST_TO_DISK_<KEY>`` and, for
the first three, ``persist_to_disk.config.set_<key>``):

* ``remote``: ``s3://BUCKET/PREFIX``; empty (the default) keeps every cache on this machine.
* ``remote_namespace``: the name results are shared under (default: the project folder's
  name), so two checkouts of a project at different absolute paths share, and two projects
  with different namespaces never see each other's results.
* ``remote_lock``: ``redis://HOST:PORT`` (or ``redis+cluster://...``) for leases and wake-ups
  through Redis/Valkey; empty: leases are objects in the bucket.
* ``remote_secret_file``: an owner-only file holding the team secret; the environment variable
  ``PERSIST_TO_DISK_REMOTE_SECRET`` (never a ``config.ini`` key: that file gets copied around)
  holds it directly and wins.
* ``remote_unsigned``: ``yes`` to run without a secret (anyone who can write to the bucket can
  then run code in your jobs).
* ``remote_lease_seconds``: how long a dead machine's lease blocks others (default 30).
* ``remote_timeout``: seconds a request may wait for the server (default 10; connecting waits
  at most 3), so that a server that stopped answering costs a call that long once, after which
  the remote is left alone for 30 s (calls go on locally).

Endpoint, region and credentials are boto3's (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``~/.aws``).
"""

import os
import stat
from typing import Any, Dict, Optional

from .errors import ConfigError, warn

SECRET_VARIABLE = "PERSIST_TO_DISK_REMOTE_SECRET"
MIN_SECRET_LENGTH = 16
DEFAULTS = {"remote": "", "remote_namespace": "", "remote_lock": "",
            "remote_secret_file": "", "remote_unsigned": "no", "remote_lease_seconds": "30",
            "remote_timeout": "10"}
_TRUE = ("yes", "true", "1", "on")
_FALSE = ("no", "false", "0", "off", "")

MAKE_A_SECRET = (
    "Make a team secret once and give it to every machine that shares the cache: "
    "`python -c \"import secrets; print(secrets.token_hex(32))\" > ~/.ptd-secret && "
    "chmod 600 ~/.ptd-secret`, then set `remote_secret_file = ~/.ptd-secret` in config.ini "
    f"(or put the secret in the environment variable {SECRET_VARIABLE}). Or, knowing that "
    "anyone who can write to the bucket can then run code in your jobs, set "
    "`remote_unsigned = yes`.")


def parse_remote_values(values: Dict[str, str], source: Dict[str, str]) -> Dict[str, Any]:
    """The remote keys of ``values`` checked (ConfigError naming ``source[key]``): the URL
    parsed, ``remote_unsigned`` a boolean, ``remote_lease_seconds`` a positive number."""
    parsed: Dict[str, Any] = {}
    url = values["remote"].strip()
    if url:
        from .remote.settings import parse_remote_url  # (the shared tier loads only if used)
        try:
            parse_remote_url(url)
        except ValueError as err:
            raise ConfigError(f"{source['remote']}: {err}.") from None
    parsed["remote"] = url
    namespace = values["remote_namespace"].strip()
    if namespace:
        check_namespace(namespace, source["remote_namespace"])
    parsed["remote_namespace"] = namespace
    lock = values["remote_lock"].strip()
    if lock and not lock.lower().startswith(("redis://", "rediss://", "redis+cluster://",
                                             "rediss+cluster://")):
        raise ConfigError(f"{source['remote_lock']}: {lock!r} is not a redis:// URL (write it "
                          "as redis://HOST:PORT, or redis+cluster://HOST:PORT for a cluster).")
    parsed["remote_lock"] = lock
    parsed["remote_secret_file"] = values["remote_secret_file"].strip()
    unsigned = values["remote_unsigned"].strip().lower()
    if unsigned not in _TRUE + _FALSE:
        raise ConfigError(f"{source['remote_unsigned']}: {values['remote_unsigned']!r} should "
                          "be yes or no.")
    parsed["remote_unsigned"] = unsigned in _TRUE
    try:
        lease = float(values["remote_lease_seconds"])
        if not 2 <= lease <= 86400:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{source['remote_lease_seconds']}: "
                          f"{values['remote_lease_seconds']!r} should be a number of seconds "
                          "between 2 and 86400 (a holder renews its lease every third of "
                          "it).") from None
    parsed["remote_lease_seconds"] = lease
    try:
        timeout = float(values["remote_timeout"])
        if not 0.1 <= timeout <= 600:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{source['remote_timeout']}: {values['remote_timeout']!r} should be "
                          "a number of seconds between 0.1 and 600.") from None
    parsed["remote_timeout"] = timeout
    return parsed


def check_namespace(namespace: str, where: str) -> str:
    if "/" in namespace or namespace in (".", "..") or not namespace.isprintable():
        raise ConfigError(f"{where}: remote namespace {namespace!r} must be a name without "
                          "'/' (results are shared under PREFIX/NAMESPACE/ in the bucket).")
    return namespace


def read_secret(secret_file: str) -> Optional[bytes]:
    """The team secret: ``PERSIST_TO_DISK_REMOTE_SECRET``, else the owner-only file
    ``secret_file``, else None. A file others can read is refused (whoever reads the secret
    can make objects your jobs will load)."""
    text = os.environ.get(SECRET_VARIABLE, "").strip()
    where = f"the environment variable {SECRET_VARIABLE}"
    if not text and secret_file:
        path = os.path.expanduser(secret_file)
        where = f"remote_secret_file {path}"
        try:
            info = os.stat(path)
            if not stat.S_ISREG(info.st_mode):
                raise ConfigError(f"{where} is not a file. {MAKE_A_SECRET}")
            if info.st_mode & 0o077 or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
                raise ConfigError(
                    f"{where} may be read or written by others (mode "
                    f"{stat.S_IMODE(info.st_mode):o}, owner uid {info.st_uid}): whoever reads "
                    "it can make results your jobs will load. Make it yours and private: "
                    f"`chmod 600 {path}`.")
            with open(path, encoding="utf-8") as file:
                text = file.read().strip()
        except OSError as err:
            raise ConfigError(f"Cannot read {where} ({err}). {MAKE_A_SECRET}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{where} is not text. {MAKE_A_SECRET}") from None
    if not text:
        return None
    if len(text) < MIN_SECRET_LENGTH:
        raise ConfigError(f"The team secret in {where} is {len(text)} characters long; use at "
                          f"least {MIN_SECRET_LENGTH} (random). {MAKE_A_SECRET}")
    return text.encode("utf-8")


def machine_id(settings_folder: str) -> str:
    """``host/id``: the host name and a random id kept in the settings folder (``machine-id``),
    so that two settings folders on one host (or one settings folder on NFS shared by many
    hosts) still name different machines in leases."""
    path = os.path.join(settings_folder, "machine-id")
    try:
        with open(path, encoding="ascii") as file:
            ident = file.read().strip()
    except (OSError, UnicodeDecodeError):
        ident = ""
    if not ident:
        import uuid  # (imports here: the shared tier only; ~4 ms of a plain import otherwise)
        ident = uuid.uuid4().hex[:12]
        try:
            os.makedirs(settings_folder, mode=0o700, exist_ok=True)
            with open(path, "x", encoding="ascii") as file:
                file.write(ident + "\n")
        except FileExistsError:
            try:
                with open(path, encoding="ascii") as file:
                    ident = file.read().strip() or ident
            except OSError:
                pass
        except OSError:
            pass  # an id for this process only: takeover by dead pid is then by TTL
    import socket
    return f"{socket.gethostname()}/{ident}"


def remote_settings(values: Dict[str, Any], project_path: str, settings_folder: str):
    """The shared tier's settings from the checked values (:func:`parse_remote_values`), or
    None when ``remote`` is not set. ConfigError when boto3 (or redis-py for ``remote_lock``)
    is missing, or when no secret is set and unsigned objects are not opted into."""
    url = values.get("remote", "")
    if not url:
        return None
    from .remote import RemoteSettings
    from .remote.settings import parse_remote_url
    import importlib.util
    if importlib.util.find_spec("boto3") is None:
        raise ConfigError(f"remote = {url} needs boto3, which is not installed: "
                          "`pip install \"persist_to_disk[s3]\"` (or unset remote).")
    if values["remote_lock"] and importlib.util.find_spec("redis") is None:
        raise ConfigError(f"remote_lock = {values['remote_lock']} needs redis-py, which is not "
                          "installed: `pip install \"persist_to_disk[redis]\"` (or unset "
                          "remote_lock).")
    secret = read_secret(values["remote_secret_file"])
    if secret is None and not values["remote_unsigned"]:
        raise ConfigError(f"remote = {url} is set, but no team secret is: results are pickles, "
                          "so every object is signed, and an object that is not is never "
                          f"loaded. {MAKE_A_SECRET}")
    bucket, prefix = parse_remote_url(url)
    namespace = values["remote_namespace"] or _default_namespace(project_path)
    return RemoteSettings(
        url=url, bucket=bucket, prefix=prefix, namespace=namespace, secret=secret,
        unsigned=secret is None, lock_url=values["remote_lock"] or None,
        lease_seconds=values["remote_lease_seconds"],
        connect_timeout=min(3.0, values["remote_timeout"]), read_timeout=values["remote_timeout"],
        pending_folder=os.path.join(settings_folder, "remote-pending"),
        machine=machine_id(settings_folder), wording=_wording(), warn=warn)


def _default_namespace(project_path: str) -> str:
    name = os.path.basename(os.path.normpath(project_path)) or "root"
    return name.replace("/", "_")


def _wording():
    from .remote import RemoteWording
    return RemoteWording(push="or run `ptd remote push`",
                         local_only="decorate it with persistf(remote=False)",
                         unsigned="remote_unsigned = yes")
