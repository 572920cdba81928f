"""Which object keys and provider file names the bridge derives names from, for every storage.

S3, Azure and GCS keys are opaque strings, but the names the bridge derives from them (outputs,
records, a source moved aside) also become paths: on SFTP, in sync tools that mirror a bucket
to a disk, and in the file lists people read. A name that is harmless as a key can there climb
out of its folder or pass for another name, so these classes are refused, each for a reason:

* ``Cc`` control characters: newlines and NULs cut log lines and paths, escapes repaint
  terminals.
* ``Cf`` format characters, which include the bidi controls (U+202A-202E, U+2066-2069) and the
  zero-width characters (U+200B-200F, U+FEFF): ``invoice\u202egpj.exe`` shows as
  ``invoiceexe.jpg``; a zero-width character makes two names that look the same.
* ``Zl`` / ``Zp`` line and paragraph separators: line breaks in everything that renders text.
* ``Cs`` unpaired surrogates: not encodable as UTF-8, so no storage can hold the derived name.
* Noncharacters (U+FDD0-U+FDEF and every U+xFFFE / U+xFFFF): reserved for internal use and
  dropped or replaced by many tools, which turns two names into one.
* A backslash anywhere: Windows and many sync tools treat it as a separator, so
  ``..\\..\\x`` climbs out of the folder.
* Empty segments (``a//b``): paths collapse them, so ``a//b`` and ``a/b`` would name one file.
* Segments that are ``.`` or ``..``, as written or after NFKC normalisation (full-width dots
  U+FF0E, the one- and two-dot leaders U+2024, U+2025): file systems and tools that normalise
  names then see a path that climbs out.
* A segment whose NFKC form contains ``/`` or ``\\`` (full-width solidus U+FF0F, reverse
  solidus U+FF3C, and their kin): a normalising tool would see more folders than the key has.
"""

from __future__ import annotations

import unicodedata

#: Unicode general categories refused anywhere in a name (see the module docstring).
REFUSED_CATEGORIES = {
    "Cc": "control characters",
    "Cf": "format characters (bidi controls or zero-width characters)",
    "Zl": "line separators",
    "Zp": "paragraph separators",
    "Cs": "unpaired surrogates",
}


def is_noncharacter(ch: str) -> bool:
    code = ord(ch)
    return 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE


def unsafe_key_reason(key: str) -> str | None:
    """Why the bridge will not derive names from ``key``, or None when it will."""
    if not key or key.endswith("/"):
        return "a folder marker, not a file"
    if key.startswith("/"):
        return "starts with '/'"
    return _unsafe_text_reason(key) or next(
        (reason for part in key.split("/") if (reason := _unsafe_segment_reason(part))), None)


def unsafe_filename_reason(name: str) -> str | None:
    """Why a file name a provider reports cannot name an output in the outputs folder, or None.
    Only a single segment is acceptable: the folder belongs to one source, and a name with a
    separator would pick a folder of its own."""
    if not name:
        return "an empty name"
    if "/" in name:
        return "contains '/'"
    return _unsafe_text_reason(name) or _unsafe_segment_reason(name)


def _unsafe_text_reason(text: str) -> str | None:
    for ch in text:
        category = unicodedata.category(ch)
        if category in REFUSED_CATEGORIES:
            return f"contains {REFUSED_CATEGORIES[category]}"
        if is_noncharacter(ch):
            return "contains Unicode noncharacters"
    if "\\" in text:
        return "contains a backslash (a Windows path separator)"
    return None


def _unsafe_segment_reason(segment: str) -> str | None:
    """For one ``/``-separated segment already free of refused characters."""
    if not segment:
        return "contains an empty path segment ('//')"
    if segment in {".", ".."}:
        return "contains '.' or '..' path segments"
    normalised = unicodedata.normalize("NFKC", segment)
    if normalised in {".", ".."}:
        return "contains a segment that becomes '.' or '..' under NFKC normalisation"
    if "/" in normalised or "\\" in normalised:
        return "contains a character that becomes '/' or '\\' under NFKC normalisation"
    return None
