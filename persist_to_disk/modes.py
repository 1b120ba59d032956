"""Call-time cache modes, as in persist-to-disk 0.0.7.

Pass one as ``cache_switch=`` (the keyword's name is set by ``switch_kwarg``) to a call, or as
``cache=`` to the decorator for every call.
"""

NOCACHE = 0    #: call the function; read and write nothing
CACHE = 1      #: return the stored result, or compute and store it (the default)
RECACHE = 2    #: compute again and store as the newest version
READONLY = 3   #: return the stored result; raise CacheMissError if there is none
CHECKONLY = 4  #: return True/False: is a result stored? never computes

MODE_NAMES = {NOCACHE: "NOCACHE", CACHE: "CACHE", RECACHE: "RECACHE", READONLY: "READONLY",
              CHECKONLY: "CHECKONLY"}


def parse_mode(value, where: str) -> int:
    try:
        mode = int(value)
    except (TypeError, ValueError):
        mode = None
    if mode not in MODE_NAMES:
        names = ", ".join(f"{number} ({name})" for number, name in MODE_NAMES.items())
        raise ValueError(f"{where} must be one of {names}; got {value!r}")
    return mode
