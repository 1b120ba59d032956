"""Sharing levels: who besides the user may write a cache (see ``trust.py`` for the rule).

A module of its own because both the settings object (``settings.py``, which every singleton
imports) and the trust check need it, and the trust check is one of those singletons.
"""

import enum


class Sharing(str, enum.Enum):
    """Who besides you may write a cache: nobody (``no``), your groups (``group``) or anyone
    (``all``). It decides both what is accepted and how new folders and files are created."""

    NO = "no"
    GROUP = "group"
    ALL = "all"

    @property
    def folder_mode(self) -> int:
        return 0o700 if self is Sharing.NO else 0o2770

    @property
    def file_mode(self) -> int:
        return 0o600 if self is Sharing.NO else 0o660

    @classmethod
    def parse(cls, value) -> "Sharing":
        if isinstance(value, cls):
            return value
        if isinstance(value, bool):
            return cls.GROUP if value else cls.NO
        text = str(value).strip().lower()
        aliases = {"false": cls.NO, "off": cls.NO, "0": cls.NO, "private": cls.NO,
                   "true": cls.GROUP, "yes": cls.GROUP, "on": cls.GROUP, "1": cls.GROUP}
        if text in aliases:
            return aliases[text]
        try:
            return cls(text)
        except ValueError:
            from .settings import wording  # settings.py imports this module
            raise ValueError(
                f"{wording().share_setting} must be 'no', 'group' or 'all' (or true/false), "
                f"got {value!r}"
            ) from None
