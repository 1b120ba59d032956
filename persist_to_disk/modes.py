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
    """A mode number from an int, an integral float or a digit string (0.0.7 took ``int(x)``);
    anything else, ``2.5`` or ``True`` included, is an error rather than a silent truncation."""
    mode = None
    if isinstance(value, bool):
        mode = None
    elif isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        mode = int(value)
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        mode = int(value)
    if mode not in MODE_NAMES:
        names = ", ".join(f"{number} ({name})" for number, name in MODE_NAMES.items())
        raise ValueError(f"{where} must be one of {names}; got {value!r}")
    return mode
