"""Keys the bridge refuses to derive output and record names from, and the output names it
derives from a provider's file names."""

from __future__ import annotations

import pytest

from convbridge.errors import StorageError
from convbridge.model import OutputFile
from convbridge.names import unsafe_filename_reason, unsafe_key_reason
from convbridge.pipeline import output_keys


@pytest.mark.parametrize("key", [
    "inbox/a.png", "inbox/my file+1.png", "inbox/résumé.png", "inbox/re\u0301sume\u0301.png",
    "inbox/100%.png", "inbox/a..b.png", "inbox/.hidden.png", "inbox/" + "x" * 1000 + ".png",
])
def test_ordinary_keys_are_accepted(key: str) -> None:
    assert unsafe_key_reason(key) is None


@pytest.mark.parametrize(("key", "reason"), [
    ("inbox/folder/", "folder marker"),
    ("", "folder marker"),
    ("/inbox/a.png", "starts with '/'"),
    ("inbox/../etc/passwd.png", "'..'"),
    ("inbox/./a.png", "'..'"),
    ("inbox/a\nb.png", "control characters"),
    ("inbox/a\x00.png", "control characters"),
    ("inbox/a\x7f.png", "control characters"),
])
def test_hostile_keys_are_refused_with_a_reason(key: str, reason: str) -> None:
    found = unsafe_key_reason(key)
    assert found is not None and reason in found


@pytest.mark.parametrize(("key", "reason"), [
    ("inbox/invoice\u202egpj.exe.png", "format characters"),  # right-to-left override
    ("inbox/a\u200bb.png", "format characters"),  # zero-width space
    ("inbox/a\u200d.png", "format characters"),  # zero-width joiner
    ("inbox/\ufeffa.png", "format characters"),  # byte order mark
    ("inbox/\u2066a\u2069.png", "format characters"),  # bidi isolates
    ("inbox/a\u2028b.png", "line separators"),
    ("inbox/a\u2029b.png", "paragraph separators"),
    ("inbox/a\ud800.png", "unpaired surrogates"),
    ("inbox/a\ufdd0.png", "noncharacters"),
    ("inbox/a\U0001fffe.png", "noncharacters"),
    ("inbox/..\\..\\etc\\passwd.png", "backslash"),
    ("inbox/a\\b.png", "backslash"),
    ("inbox/\uff0e\uff0e/etc/passwd.png", "NFKC"),  # full-width dots
    ("inbox/\uff0e/a.png", "NFKC"),
    ("inbox/\u2025/a.png", "NFKC"),  # two dot leader
    ("inbox/a\uff0fb.png", "NFKC"),  # full-width solidus
    ("inbox/a\uff3cb.png", "NFKC"),  # full-width reverse solidus
    ("inbox//a.png", "empty path segment"),
])
def test_deceiving_keys_are_refused_with_a_reason(key: str, reason: str) -> None:
    found = unsafe_key_reason(key)
    assert found is not None and reason in found


@pytest.mark.parametrize("name", ["", "a/b.png", "..", "\uff0e\uff0e", "a\\b.png", "a\u202e.png",
                                  "a\nb.png"])
def test_unsafe_output_names_are_refused(name: str) -> None:
    assert unsafe_filename_reason(name) is not None


@pytest.mark.parametrize("name", ["page-1.png", "résumé.pdf", "a..b.pdf", ".hidden"])
def test_ordinary_output_names_are_accepted(name: str) -> None:
    assert unsafe_filename_reason(name) is None


def pages(*names: str) -> tuple[OutputFile, ...]:
    return tuple(OutputFile(filename=name, size=1) for name in names)


def test_several_outputs_go_into_the_folder_named_by_the_output_key() -> None:
    assert output_keys("outbox/a/b.docx.pdf", pages("b.pdf")) == ["outbox/a/b.docx.pdf"]
    assert output_keys("outbox/a/b.docx.pdf", pages("p-1.png", "dir/p-2.png")) == [
        "outbox/a/b.docx.pdf/p-1.png", "outbox/a/b.docx.pdf/p-2.png"]


@pytest.mark.parametrize("names", [("p-1.png", ".."), ("p-1.png", "..\\..\\x.png"),
                                   ("p-1.png", "dir/"), ("p-1.png", "p\u202e.png"),
                                   ("p.png", "p.png"), ("a/p.png", "b/p.png")])
def test_unsafe_or_repeated_output_names_are_refused(names: tuple[str, ...]) -> None:
    with pytest.raises(StorageError, match="the provider reported"):
        output_keys("outbox/a.png.pdf", pages(*names))
