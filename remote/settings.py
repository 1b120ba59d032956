"""What the shared tier is told: where the remote cache is, whose it is, how to sign it.

The API layer builds one :class:`RemoteSettings` from its configuration (``remote``,
``remote_namespace``, the team secret...) and hands it to :class:`~.tiered.SharedStorage`; this
package reads no environment variable and no configuration file itself, exactly like the engine.
Endpoint, region and credentials are not here: boto3 finds them in its standard places
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``..., ``~/.aws``), so a user of any S3 service has
nothing new to learn.
"""

import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple


class SharedTierWarning(UserWarning):
    """What the shared tier warns about when the layer above gives it no ``warn`` of its own."""


def _warn(message: str) -> None:
    warnings.warn(message, SharedTierWarning, stacklevel=3)


@dataclass(frozen=True)
class RemoteWording:
    """How the shared tier's messages name what the user can do (the API layer replaces the
    defaults, which name this package's own functions, with its command line and settings).

    - ``push``: a verb phrase, how to upload what could not be uploaded: "...; {push}".
    - ``local_only``: how to keep one function off the shared tier.
    - ``unsigned``: how to accept unsigned objects (named in the warning about one).
    """

    push: str = "call SharedStorage.push_pending() once the server is back"
    local_only: str = "open its stores from the local tier"
    unsigned: str = "RemoteSettings(unsigned=True)"


@dataclass(frozen=True)
class RemoteSettings:
    """The shared tier's configuration (see the module docstring).

    ``secret`` signs and verifies every object (HMAC-SHA256); it is None only with
    ``unsigned=True``, an explicit opt-in, since a bucket others can write is then code others
    can run in your jobs. ``lock_url`` names a Redis/Valkey lock service (``redis://...``) for
    leases and wake-ups; without one, leases are objects in the bucket. ``lease_seconds`` is how
    long a lease lives unrenewed (its holder renews it every third of that): a holder that died
    is taken over that long after its last renewal, judged by the server's clock.
    ``retry_after_seconds``: after a failure the remote is left alone that long (calls compute
    and store locally without waiting for it). ``pending_folder`` keeps the uploads that failed
    until they can be retried. ``machine`` names this machine in leases ("host/id"): a lease held
    by a dead process of the same machine is taken over at once. ``warn`` reports what went
    wrong without failing a call.
    """

    url: str
    bucket: str
    prefix: str
    namespace: str
    secret: Optional[bytes] = field(default=None, repr=False)
    unsigned: bool = False
    lock_url: Optional[str] = None
    lease_seconds: float = 30.0
    connect_timeout: float = 3.0
    read_timeout: float = 20.0
    retry_after_seconds: float = 30.0
    pending_folder: Optional[str] = None
    machine: str = ""
    wording: RemoteWording = RemoteWording()
    #: How a warning reaches the user (the API layer passes its own, which points at the
    #: user's line and uses its warning class).
    warn: Callable[[str], None] = field(default=_warn, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.secret is None and not self.unsigned:
            raise ValueError("RemoteSettings needs a secret to sign objects with, or "
                             "unsigned=True")
        if not self.namespace or "/" in self.namespace or self.namespace in (".", ".."):
            raise ValueError(f"remote namespace {self.namespace!r} must be a non-empty name "
                             "without '/'")
        if not self.lease_seconds > 0:
            raise ValueError(f"lease_seconds must be positive, not {self.lease_seconds!r}")

    @property
    def root(self) -> str:
        """The namespace's folder in the bucket: ``PREFIX/NAMESPACE`` (no slash at the ends)."""
        return f"{self.prefix}/{self.namespace}" if self.prefix else self.namespace


def parse_remote_url(url: str) -> Tuple[str, str]:
    """``(bucket, prefix)`` of ``s3://BUCKET/PREFIX`` (the prefix may be empty or have several
    parts; slashes at its ends are dropped). ValueError naming the URL for anything else."""
    text = str(url).strip()
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() != "s3":
        raise ValueError(f"remote {text!r} is not an s3:// URL: write it as s3://BUCKET or "
                         "s3://BUCKET/PREFIX (endpoint and credentials come from boto3's "
                         "settings, e.g. AWS_ENDPOINT_URL)")
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    if not bucket or any(c in bucket for c in " ?#\\") or "//" in prefix:
        raise ValueError(f"remote {text!r} has no usable bucket name: write it as "
                         "s3://BUCKET or s3://BUCKET/PREFIX")
    if any(part in (".", "..") for part in prefix.split("/")):
        raise ValueError(f"remote {text!r}: the prefix may not contain '.' or '..' parts")
    return bucket, prefix
