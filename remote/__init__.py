"""The shared tier: a cache shared between machines on S3-compatible object storage, behind
the local LMDB tier (``tiered.py`` says how the two fit; ``objects.py`` how results are signed;
``leases.py``/``redis_leases.py`` how machines avoid computing a call twice).

Like the engine it never imports the API layer: it implements the same storage interface
(``engine/interface.py``), and is configured with one :class:`RemoteSettings`. boto3 and
redis-py are imported only when the remote is first used (``pip install
"persist_to_disk[s3]"``, ``[redis]`` for the lock service).
"""

from .settings import RemoteSettings, RemoteWording, SharedTierWarning, parse_remote_url
from .tiered import (RemoteEntry, RemoteStatus, SharedStorage, TieredStore, TransferReport)

__all__ = ["RemoteSettings", "RemoteWording", "SharedTierWarning", "parse_remote_url",
           "SharedStorage", "TieredStore", "RemoteStatus", "RemoteEntry", "TransferReport"]
