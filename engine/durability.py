"""How hard each commit works to reach the disk: a deliberate choice per store.

All three levels survive a killed process with nothing lost: a committed LMDB transaction is in
the OS page cache the moment commit returns. They differ only when the machine itself goes down:

=============  ==========================  ===================================================
level          LMDB flags                  after an OS crash or power loss
=============  ==========================  ===================================================
``full``       sync, metasync              nothing committed is lost
``standard``   sync, no metasync           never corrupt; the last commit may be undone
``fast``       no sync                     recent commits may be lost; on filesystems that do
                                           not keep write order the store can be damaged
=============  ==========================  ===================================================

``standard`` is the default: a cache can recompute one lost entry, but must never be corrupt.
``fast`` suits high-volume caches of cheap results (about 25x faster commits).
"""

import enum


class Durability(str, enum.Enum):
    FULL = "full"
    STANDARD = "standard"
    FAST = "fast"

    @property
    def lmdb_flags(self) -> dict:
        return _FLAGS[self]

    @classmethod
    def parse(cls, value) -> "Durability":
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            names = ", ".join(repr(level.value) for level in cls)
            raise ValueError(f"durability must be one of {names}, got {value!r}") from None


_FLAGS = {
    Durability.FULL: {"sync": True, "metasync": True},
    Durability.STANDARD: {"sync": True, "metasync": False},
    Durability.FAST: {"sync": False, "metasync": False},
}
