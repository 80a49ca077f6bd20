"""Unit tests for p2pchat.names: NFC, the characters a name may hold, and
TR39 skeletons built from the confusable-homoglyphs data."""

from __future__ import annotations

import unicodedata

import pytest
from confusable_homoglyphs import utils

from p2pchat import names
from p2pchat.errors import UsageError
from p2pchat.node import check_name
from p2pchat.roster import Roster

CYRILLIC_A = "\u0430"


def test_cyrillic_a_for_latin_a_is_confusable() -> None:
    fake = CYRILLIC_A + "lice"
    assert fake != "alice"
    assert names.skeleton(fake) == names.skeleton("alice")
    assert names.confusable(fake, "alice")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("paypal", "p\u0430yp\u0430l"),  # Cyrillic a twice
        ("alice", "AIice"),  # capital i for small l
        ("alice", "Alice"),  # case (our extra to TR39)
        ("mary", "rnary"),  # r + n for m
        ("bob", "\uff42\uff4f\uff42"),  # fullwidth letters
        ("bob!", "bob!\ufe0f"),  # a variation selector is ignored
        ("jos\u00e9", "jose\u0301"),  # NFC and NFD
        ("O0", "0O"),  # zero and capital o
    ],
)
def test_look_alikes(a: str, b: str) -> None:
    assert names.confusable(a, b)


@pytest.mark.parametrize(("a", "b"), [("alice", "bob"), ("alice", "alicia"), ("ann", "anne")])
def test_different_names_are_not_look_alikes(a: str, b: str) -> None:
    assert not names.confusable(a, b)


def test_normalise_is_nfc() -> None:
    assert names.normalise("jose\u0301") == "jos\u00e9"
    assert names.normalise("jos\u00e9") == "jos\u00e9"
    assert check_name("jose\u0301") == "jos\u00e9"  # our own name is sent in NFC


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("alice\u200b", "format character"),  # trailing zero width space
        ("\u202ealice", "format character"),  # right-to-left override
        ("al\u2067ice", "format character"),  # right-to-left isolate
        ("alice\u200e", "format character"),  # left-to-right mark
        ("ali\u2060ce", "format character"),  # word joiner
        ("alice#2d96", "'#'"),  # reads like alice's display
        ("#", "'#'"),
        ("alice\u0007", "control character"),
        ("al\u2028ice", "separator"),
        ("\ue000", "private-use"),
        ("a\ufe0f", "invisible"),  # variation selector after a letter
        ("x\u3164y", "invisible"),  # Hangul filler
        ("x\u034fy", "invisible"),  # combining grapheme joiner
        ("\u0301x", "combining mark"),
        (" alice", "blanks"),
        ("alice\u00a0", "blanks"),  # no-break space at the end
        ("", "empty"),
    ],
)
def test_bad_names_are_refused_with_a_reason(bad: str, why: str) -> None:
    with pytest.raises(names.BadName, match=why):
        names.check_name(bad)
    with pytest.raises(UsageError):
        check_name(bad)


@pytest.mark.parametrize(
    "good",
    [
        "alice",
        "Big Al",
        "\u0410\u043b\u0438\u0441\u0430",  # Cyrillic, all of it
        "\u5f20\u4f1f",  # CJK
        "\U0001f469\u200d\U0001f4bb dev",  # ZWJ emoji sequence
        "\u2764\ufe0f",  # heart with emoji presentation
        "\U0001f3f3\ufe0f\u200d\U0001f308",  # rainbow flag
        "\u0915\u094d\u200d\u0937",  # Devanagari half form (ZWJ after a virama)
        "\u05e9\u05dc\u05d5\u05dd",  # Hebrew
        "dot.name-2",
    ],
)
def test_good_names_pass(good: str) -> None:
    names.check_name(good)
    assert check_name(good) == unicodedata.normalize("NFC", good)


def test_too_long_name_is_refused() -> None:
    with pytest.raises(UsageError, match="longer than 32"):
        check_name("x" * 33)


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for key, entries in utils.load("confusables.json").items():
        graph.setdefault(key.strip("\u200e\u200f"), set()).update(
            e["c"].strip("\u200e\u200f") for e in entries
        )
    return graph


def test_the_shipped_data_is_a_union_of_stars() -> None:
    """What names.py relies on to tell prototypes from sources: no edge joins
    two characters that both have several neighbours, and every string of
    several code points is a prototype (a source is one code point)."""
    graph = _graph()
    assert len(graph) > 9000
    for node, near in graph.items():
        for other in near:
            assert len(near) == 1 or len(graph[other]) == 1, (node, other)
        if len(node) > 1:
            assert all(len(o) == 1 for o in near)


def test_skeleton_is_idempotent_and_maps_each_source_onto_its_prototype() -> None:
    graph = _graph()
    for node in graph:
        skel = names.skeleton(node)
        assert names.skeleton(skel) == skel, node
    # Every single-code-point source with a single-code-point prototype
    # (a star's leaf) has its prototype's skeleton.
    leaves = [
        (n, next(iter(near)))
        for n, near in graph.items()
        if len(n) == 1 and len(near) == 1 and len(graph[next(iter(near))]) > 1
    ]
    assert len(leaves) > 3000
    same = sum(names.skeleton(n) == names.skeleton(p) for n, p in leaves)
    # NFD splits a few precomposed prototypes (e.g. Greek with perispomeni)
    # before they are mapped, as in TR39; all but a handful agree.
    assert same >= len(leaves) - 50


def test_roster_shows_look_alikes_with_their_fingerprint() -> None:
    roster = Roster("a" * 16, "me", 10.0)
    real, fake = "2d96" + "0" * 12, "beef" + "0" * 12
    roster.heard(real, "alice", 0.0)
    assert roster.display(real) == "alice"
    roster.heard(fake, CYRILLIC_A + "lice", 0.0)
    assert roster.display(real) == "alice#2d96"
    assert roster.display(fake) == CYRILLIC_A + "lice#beef"
    assert [m.node for m in roster.lookalikes(real, "alice")] == [fake]
    roster.remove(fake)
    assert roster.display(real) == "alice"


def test_roster_shows_more_digits_when_look_alikes_share_four() -> None:
    roster = Roster("a" * 16, "me", 10.0)
    real, fake = "2d96" + "1" * 12, "2d96" + "12" + "0" * 10
    roster.heard(real, "alice", 0.0)
    roster.heard(fake, "Alice", 0.0)
    assert roster.display(real) == "alice#2d9611"
    assert roster.display(fake) == "Alice#2d9612"


def test_roster_keeps_names_in_nfc() -> None:
    roster = Roster("a" * 16, "me", 10.0)
    node = "b" * 16
    roster.heard(node, "jose\u0301", 0.0)
    member = roster.get(node)
    assert member is not None and member.name == "jos\u00e9"
    assert roster.display(node) == "jos\u00e9"
    assert roster.heard(node, "jos\u00e9", 1.0) == (False, None)  # not a rename
