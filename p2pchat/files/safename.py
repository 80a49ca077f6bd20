"""A received file's name made safe to create in the download directory.

:func:`safe_filename` turns any offered name into one path component that is
valid on Linux, macOS and Windows, shows no hidden or misleading characters,
is short enough for every common file system with our suffixes added, and
names nothing that exists yet in the directory (not even a dangling
symlink), so a download never overwrites a file and never lands outside the
directory.  The caller still creates the file with ``O_CREAT | O_EXCL``
(:mod:`p2pchat.files.partial` does): between the check and the creation
another program may take the name.

Pure but for ``os.path.realpath`` and ``os.path.lexists`` on the directory.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from p2pchat.files.errors import TransferError

MAX_SAFE_NAME_BYTES: Final = 200
"""A safe name is at most 200 bytes of UTF-8, so that a ``" (9999)"`` suffix
and ``".p2pchat-part"`` still fit in the 255 bytes of a path component."""

MAX_EXTENSION_BYTES: Final = 16
"""An extension (from the last dot) up to 16 bytes is kept when a long name
is cut; a longer one is cut with the rest."""

MAX_SUFFIX: Final = 9999
"""``name (1).ext`` .. ``name (9999).ext`` are tried, then the download fails."""

FALLBACK_NAME: Final = "file"
"""The name used when nothing of the offered name is left."""

_DROPPED_CATEGORIES: Final = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})
"""Control, format (zero width, bidi marks, overrides and isolates), line and
paragraph separators, surrogates, private use, unassigned: removed."""

_REPLACED: Final = re.compile(r'[/\\:*?"<>|]')
"""Path separators and the characters Windows refuses in names: become ``_``."""

_RESERVED: Final = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{device}{digit}" for device in ("COM", "LPT") for digit in "0123456789\u00b9\u00b2\u00b3"}
)
"""Windows device names: ``NUL.txt`` opens the device, whatever the extension."""


def clean_name(name: str) -> str:
    """``name`` as one safe path component, without looking at any directory.

    NFC; control, format, separator, surrogate, private-use and unassigned
    characters removed; ``/ \\ : * ? " < > |`` replaced by ``_``; blanks and
    dots stripped from both ends (no hidden file, no ``..``, nothing Windows
    strips); a Windows device name (``CON``, ``nul.txt``, ``COM1``...) gets a
    ``_`` in front; cut to :data:`MAX_SAFE_NAME_BYTES` bytes keeping a short
    extension; :data:`FALLBACK_NAME` when nothing is left.

    Args:
        name: any string (a peer's offered name, already checked or not).

    Returns:
        A non-empty name without separators, at most 200 bytes of UTF-8.
    """
    text = unicodedata.normalize("NFC", name)
    text = "".join(c for c in text if unicodedata.category(c) not in _DROPPED_CATEGORIES)
    text = _REPLACED.sub("_", text).strip(" .")
    text = _shorten(text)
    if not text:
        return FALLBACK_NAME
    if text.split(".", 1)[0].rstrip(" ").upper() in _RESERVED:
        text = _shorten("_" + text)
    return text


def _shorten(text: str) -> str:
    """``text`` cut to :data:`MAX_SAFE_NAME_BYTES`, keeping a short extension."""
    if len(text.encode("utf-8")) <= MAX_SAFE_NAME_BYTES:
        return text
    stem, dot, extension = text.rpartition(".")
    if not dot or not stem or len(extension.encode("utf-8")) + 1 > MAX_EXTENSION_BYTES:
        stem, extension = text, ""
    else:
        extension = "." + extension
    budget = MAX_SAFE_NAME_BYTES - len(extension.encode("utf-8"))
    cut = stem.encode("utf-8")[:budget].decode("utf-8", "ignore").rstrip(" .")
    return (cut + extension).strip(" .") if cut else extension.strip(" .")


def _numbered(name: str, number: int) -> str:
    """``name (number)`` before the extension: ``a.pdf`` -> ``a (2).pdf``."""
    stem, dot, extension = name.rpartition(".")
    if not dot or not stem:
        stem, extension = name, ""
    else:
        extension = "." + extension
    return f"{stem} ({number}){extension}"


def safe_filename(
    name: str, directory: str | os.PathLike[str], suffixes: Iterable[str] = ()
) -> Path:
    """A path in ``directory`` for a file offered as ``name``, free right now.

    The result is :func:`clean_name` of ``name``, or that name with ``" (1)"``,
    ``" (2)"``... before its extension when a file, directory or symlink
    (even a dangling one) of that name, or of that name plus any of
    ``suffixes``, exists.  Its parent is the real path of ``directory``
    (symlinks resolved), so neither the name nor a symlink placed in the
    directory can lead outside it.

    Args:
        name: the offered name (any string).
        directory: the download directory; it must exist.
        suffixes: further names that must be free too, as suffixes of the
            result (``".p2pchat-part"``, ``".p2pchat-map"``).

    Returns:
        The absolute path; nothing is created (create it with ``O_EXCL``).

    Raises:
        TransferError: ``directory`` is not a directory, or 9,999 numbered
            names are taken.
    """
    real = os.path.realpath(directory)
    if not os.path.isdir(real):
        raise TransferError(f"download directory {str(directory)!r} is not a directory")
    base = clean_name(name)
    extra = tuple(suffixes)
    for number in range(MAX_SUFFIX + 1):
        candidate = base if number == 0 else _numbered(base, number)
        path = os.path.join(real, candidate)
        if not any(os.path.lexists(path + suffix) for suffix in ("", *extra)):
            return Path(path)
    raise TransferError(f"{MAX_SUFFIX} files named like {base!r} exist in {real}")
