"""safe_filename: whatever a peer offers, one harmless new file in the download directory."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pchat.files.errors import TransferError
from p2pchat.files.safename import MAX_SAFE_NAME_BYTES, clean_name, safe_filename

NASTY = [
    "..",
    ".",
    "../../etc/passwd",
    "..\\..\\Windows\\win.ini",
    "/etc/shadow",
    "C:\\boot.ini",
    "a/../../b",
    "CON",
    "con.txt",
    "NUL.tar.gz",
    "COM1",
    "lpt9.log",
    "COM\u00b9.txt",
    "aux .txt",
    "invoice\u202efdp.exe",
    "\u2066hidden\u2069.txt",
    "zero\u200bwidth",
    "new\nline",
    "tab\there",
    "nul\x00byte",
    "bell\x07",
    "   ",
    "...",
    " . ",
    ".bashrc",
    "name.",
    "name ",
    "x" * 1000,
    "é" * 300 + ".pdf",
    "\U0001f4ce" * 100 + ".tar.gz",
    "a" * 250 + "." + "b" * 40,
    "sur\ud800rogate",
    "priv\ue000ate",
    'wild*card?<>|"',
    "e\u0301cole.txt",
]

names = st.one_of(st.sampled_from(NASTY), st.text(), st.text(st.characters(codec=None)))

_BAD_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}
_RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {
    f"{d}{n}" for d in ("COM", "LPT") for n in "0123456789\u00b9\u00b2\u00b3"
}


def _assert_safe(path: Path, directory: Path) -> None:
    assert path.parent == Path(os.path.realpath(directory))
    name = path.name
    assert name and name == os.path.basename(str(path))
    assert "/" not in name and "\\" not in name and name not in (".", "..")
    assert not name.startswith(".") and not name.endswith((".", " ")) and not name.startswith(" ")
    assert not any(unicodedata.category(c) in _BAD_CATEGORIES for c in name)
    assert not any(c in ':*?"<>|' for c in name)
    assert name.split(".", 1)[0].rstrip(" ").upper() not in _RESERVED
    # 200 bytes, and a number " (9999)" at most: with ".p2pchat-part" it fits in 255.
    assert len(name.encode("utf-8")) <= MAX_SAFE_NAME_BYTES + len(" (9999)")
    assert len((name + ".p2pchat-part").encode("utf-8")) <= 255
    assert name == unicodedata.normalize("NFC", name)
    assert not os.path.lexists(path)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=names)
def test_any_name_becomes_one_new_harmless_file_in_the_directory(name: str, tmp_path: Path) -> None:
    directory = tmp_path / "downloads"
    directory.mkdir(exist_ok=True)
    first = safe_filename(name, directory)
    _assert_safe(first, directory)
    with open(first, "x") as created:  # it can be created, as a new file
        created.write("one")
    second = safe_filename(name, directory)
    _assert_safe(second, directory)
    assert second != first
    assert first.read_text() == "one"
    first.unlink()


def test_collisions_get_numbers_before_the_extension(tmp_path: Path) -> None:
    (tmp_path / "report.pdf").write_text("mine")
    (tmp_path / "report (1).pdf").write_text("mine too")
    assert safe_filename("report.pdf", tmp_path).name == "report (2).pdf"
    assert (tmp_path / "report.pdf").read_text() == "mine"


def test_a_symlink_in_the_directory_counts_as_taken_even_dangling(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "a.txt").symlink_to(outside / "a.txt")  # dangling, pointing out
    (downloads / "b.txt").symlink_to(outside)
    assert safe_filename("a.txt", downloads).name == "a (1).txt"
    assert safe_filename("b.txt", downloads).name == "b (1).txt"
    assert not (outside / "a.txt").exists()


def test_a_symlinked_download_dir_resolves_to_its_target(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert safe_filename("x.bin", tmp_path / "link").parent == real


def test_suffixes_must_be_free_too(tmp_path: Path) -> None:
    (tmp_path / "movie.mkv.p2pchat-part").write_bytes(b"")
    assert safe_filename("movie.mkv", tmp_path, (".p2pchat-part",)).name == "movie (1).mkv"


def test_examples() -> None:
    assert clean_name("../../etc/passwd") == "_.._etc_passwd"
    assert clean_name("..") == "file"
    assert clean_name("CON") == "_CON"
    assert clean_name("nul.txt") == "_nul.txt"
    assert clean_name("invoice\u202efdp.exe") == "invoicefdp.exe"
    assert clean_name(".bashrc") == "bashrc"
    long = clean_name("é" * 300 + ".pdf")
    assert long.endswith(".pdf") and len(long.encode()) <= MAX_SAFE_NAME_BYTES


def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TransferError):
        safe_filename("a", tmp_path / "nope")
