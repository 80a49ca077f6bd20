"""Display names people can tell apart: normalisation, the characters a name
may hold, and confusable ("look-alike") names.  Pure functions: no sockets,
no threads, no state but a table loaded once.

Rules (``docs/protocol.md`` §5):

* A name is compared and shown in Unicode Normalization Form C
  (:func:`normalise`): ``"e" + U+0301`` and ``"é"`` are one name.
* :func:`check_name` refuses a name that is empty, has blanks at either end,
  contains ``#`` (``name#abcd`` is how a node shows a key fingerprint), or
  holds a character that is invisible or changes how the text around it is
  laid out: control characters (category Cc), format characters (Cf: zero
  width space and joiners, the bidirectional marks, embeddings, overrides and
  isolates, the soft hyphen, tags...), line and paragraph separators (Zl, Zp),
  private-use and surrogate code points (Co, Cs), the other default-ignorable
  code points of ``DerivedCoreProperties.txt`` (variation selectors, Hangul
  fillers, the combining grapheme joiner...), or a combining mark at the
  start (it would sit on the character before the name).  Three invisible
  characters are allowed where they have a visible job, as in IDNA's
  CONTEXTJ rule and emoji sequences: ZERO WIDTH (NON-)JOINER after a virama
  (Indic scripts), ZERO WIDTH JOINER between two emoji (``👩‍💻``), and the
  emoji/text variation selectors U+FE0E and U+FE0F after a symbol, a digit
  or a punctuation mark (``❤️``).
* :func:`skeleton` is the skeleton of Unicode TR39 ("Unicode Security
  Mechanisms", section 4): two names with the same skeleton look alike, e.g.
  ``"alice"`` and ``"\\u0430lice"`` (U+0430 is a Cyrillic a).  :func:`confusable`
  compares skeletons.

Where the prototypes come from
------------------------------

The confusables data is Unicode's ``confusables.txt`` as shipped by the
maintained ``confusable-homoglyphs`` package (its ``confusables.json``; the
``CONFUSABLE_DATA`` environment variable of that package points it at
another copy).  That file is not in TR39's direction: its generator adds every
line ``source -> prototype`` of ``confusables.txt`` both ways, so each
character lists the characters it can be confused with, and the wrapping
LEFT-TO-RIGHT MARKs that ``confusables.txt`` puts around right-to-left
characters in its comments are left on some entries (we strip them).

The direction can be recovered from the shape of that graph.  In
``confusables.txt`` every source is one code point and no prototype is also a
source (TR39 requires the mapping to be idempotent), so each class of
look-alikes is a star: the prototype in the middle, every source linked to it
alone (checked over the whole file by ``tests/test_names.py``).  Hence, for a
single code point ``c``:

* ``c`` has several neighbours: it is a prototype, it maps to itself;
* its one neighbour has several, or is a string of more than one code point
  (sources are single code points): that neighbour is its prototype;
* ``c`` and its one neighbour have no other neighbours (1,440 pairs of two
  single characters in the shipped data): the data does not say which of the
  two is the prototype; we take the lower code point.  Both characters map
  to the same one, so which names are confusable does not depend on that
  choice; only the text of :func:`skeleton` can differ from TR39's for those
  characters.

Characters not in the data map to themselves.  The skeleton is then TR39's:
NFD, each character to its prototype, NFD again; as an extra, we then
apply NFKD (compatibility forms: fullwidth letters, ligatures, superscripts,
which ``confusables.txt`` leaves to NFKC), casefold and map again, until that
changes nothing (at most four rounds), so ``Alice`` and ``alice``, ``AIice``
(a capital i) and ``alice``, or a fullwidth ``bob`` and ``bob`` also count as
look-alikes.  Like TR39, the
skeleton leaves out default-ignorable code points (the joiners and variation
selectors that :func:`check_name` lets through): ``bob!`` and ``bob!`` with a
U+FE0F look alike.
"""

from __future__ import annotations

import functools
import unicodedata
from typing import Final

NAME_HASH: Final = "#"
"""Not allowed in names: ``name#abcd`` shows a key fingerprint."""

_REFUSED_CATEGORIES: Final = {
    "Cc": "a control character",
    "Cf": "an invisible format character (zero width, bidi mark or override...)",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
    "Co": "a private-use character",
    "Cs": "a surrogate",
}

# Default_Ignorable_Code_Point (DerivedCoreProperties.txt, Unicode 15.1) that
# are not of category Cf: invisible, yet letters or marks to unicodedata.
# The reserved ranges (U+2065, U+FFF0..U+FFF8, U+E0000..U+E0FFF) are default
# ignorable by Unicode's stability policy, whatever later versions assign there.
_DEFAULT_IGNORABLE: Final = (
    (0x034F, 0x034F),  # COMBINING GRAPHEME JOINER
    (0x115F, 0x1160),  # HANGUL CHOSEONG FILLER, HANGUL JUNGSEONG FILLER
    (0x17B4, 0x17B5),  # KHMER VOWEL INHERENT AQ, AA
    (0x180B, 0x180F),  # MONGOLIAN FREE VARIATION SELECTORS, VOWEL SEPARATOR
    (0x2065, 0x2065),  # reserved
    (0x3164, 0x3164),  # HANGUL FILLER
    (0xFE00, 0xFE0F),  # VARIATION SELECTOR-1..16
    (0xFFA0, 0xFFA0),  # HALFWIDTH HANGUL FILLER
    (0xFFF0, 0xFFF8),  # reserved
    (0xE0000, 0xE0FFF),  # tags, VARIATION SELECTOR-17..256, reserved
)

_BIDI_MARKS: Final = "\u200e\u200f"
_ZWNJ: Final = "\u200c"
_ZWJ: Final = "\u200d"
_VARIATION_SELECTORS: Final = "\ufe0e\ufe0f"
_VIRAMA: Final = 9


class BadName(ValueError):
    """A display name that :func:`check_name` refuses; ``str()`` says why in
    a sentence for people."""


def normalise(name: str) -> str:
    """``name`` in Unicode Normalization Form C, the form names are kept,
    compared and shown in (a name is signed as its origin sent it)."""
    return unicodedata.normalize("NFC", name)


def _default_ignorable(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _DEFAULT_IGNORABLE)


def _ignorable(ch: str) -> bool:
    return unicodedata.category(ch) == "Cf" or _default_ignorable(ord(ch))


def _allowed_invisible(name: str, i: int) -> bool:
    """True if the invisible ``name[i]`` has a visible job where it stands
    (see the module docstring)."""
    ch = name[i]
    before = name[i - 1] if i > 0 else ""
    after = name[i + 1] if i + 1 < len(name) else ""
    if ch in _ZWNJ + _ZWJ and before and unicodedata.combining(before) == _VIRAMA:
        return True
    if ch == _ZWJ and before and after:
        emoji_before = before == "\ufe0f" or unicodedata.category(before) in ("So", "Sk")
        return emoji_before and unicodedata.category(after) == "So"
    if ch in _VARIATION_SELECTORS and before:
        return unicodedata.category(before)[0] in "SP" or unicodedata.category(before) == "Nd"
    return False


def check_name(name: str, what: str = "name") -> None:
    """Refuse a display name people could not tell from another, or that
    would change how the text around it is shown.

    Checks the characters only; the length (at most 32 code points) is the
    wire protocol's rule.  Works on the name as given: a name that is not in
    NFC is not refused for that (see :func:`normalise`).

    Args:
        name: the name.
        what: how to call it in the error ("name", "old name"...).

    Raises:
        BadName: the name is empty, has blanks (any Unicode white space) at
            either end, contains ``#``, starts with a combining mark, or holds
            a control, format (zero width, bidi), separator, private-use,
            surrogate or other default-ignorable character (but for the
            joiners and variation selectors of emoji and Indic scripts).
    """
    if not name:
        raise BadName(f"{what} must not be empty")
    if name != name.strip():
        raise BadName(f"{what} has leading or trailing blanks")
    if NAME_HASH in name:
        raise BadName(f"{what} must not contain '#' (name#abcd shows a key fingerprint)")
    for i, ch in enumerate(name):
        category = unicodedata.category(ch)
        bad = _REFUSED_CATEGORIES.get(category)
        if bad is None and _default_ignorable(ord(ch)):
            bad = "an invisible character"
        if bad is not None and not (
            ch in _ZWNJ + _ZWJ + _VARIATION_SELECTORS and _allowed_invisible(name, i)
        ):
            raise BadName(f"{what} contains {bad} (U+{ord(ch):04X})")
    if unicodedata.category(name[0]).startswith("M"):
        raise BadName(f"{what} starts with a combining mark (U+{ord(name[0]):04X})")


@functools.cache
def _prototypes() -> dict[str, str]:
    """Code point -> its TR39 prototype, for the code points that are not
    their own prototype.  Built once from ``confusable-homoglyphs``' data
    (about 50 ms), on the first call of :func:`skeleton`."""
    from confusable_homoglyphs import utils

    raw: dict[str, list[dict[str, str]]] = utils.load("confusables.json")
    graph: dict[str, set[str]] = {}
    for key, entries in raw.items():
        graph.setdefault(key.strip(_BIDI_MARKS), set()).update(
            e["c"].strip(_BIDI_MARKS) for e in entries
        )
    out: dict[str, str] = {}
    for char, near in graph.items():
        if len(char) != 1 or len(near) != 1:
            continue  # a prototype (several neighbours, or several code points)
        (other,) = near
        if len(other) > 1 or len(graph.get(other, ())) > 1:
            out[char] = other
        elif other < char:
            out[char] = other  # a pair: the lower code point stands for both
    return out


def _map(text: str) -> str:
    table = _prototypes()
    return unicodedata.normalize("NFD", "".join(table.get(ch, ch) for ch in text))


@functools.lru_cache(maxsize=4096)
def skeleton(name: str) -> str:
    """The TR39 skeleton of ``name``, casefolded: names with the same
    skeleton look alike.  Any thread (the table is built once and only read).

    ``skeleton("\\u0430lice") == skeleton("alice") == skeleton("AIice")``.
    The result is for comparison, not for display.  The last 4,096 results
    are cached (a node asks for the skeleton of a name at every line).
    """
    visible = "".join(ch for ch in unicodedata.normalize("NFD", name) if not _ignorable(ch))
    out = _map(visible)
    for _ in range(4):  # NFKD, casefold and map again until nothing changes
        again = _map(unicodedata.normalize("NFKD", out).casefold())
        if again == out:
            break
        out = again
    return out


def confusable(a: str, b: str) -> bool:
    """True if names ``a`` and ``b`` look alike: the same :func:`skeleton`
    (equal names included)."""
    return a == b or skeleton(a) == skeleton(b)
