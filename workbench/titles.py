"""Titles as people read them: repair the broken encodings found in the source data, show the rest as is.

Two kinds occur in the development labels (87 of 7,218 titles): the common one (UTF-8 read as Windows-1252,
"CafÃ©"), which ``ftfy`` repairs, and one that went through Mac Roman as well ("DespuÌ©s" for "Después"):
UTF-8 read as Windows-1252, written as Mac Roman, read as Windows-1252 again. That second trip lost some
letters for good ("Ì_" stands for ä, í, ó, ü ...); those stay as they are rather than be guessed.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

import ftfy

# one letter of the Mac Roman round trip: a lead character from À..ß (UTF-8's lead byte 0xC3 as Mac Roman
# 0xCC, read back as Windows-1252) followed by one more non-ASCII character
_ROUND_TRIP = re.compile(r"[\u00c0-\u00df][^\x00-\x7f]")


def _marks(text: str) -> int:
    """Combining marks left once composed: what a wrong repair leaves behind ("K̦nig")."""
    return sum(1 for ch in unicodedata.normalize("NFC", text) if unicodedata.combining(ch))


def _letter(match: re.Match) -> str:
    """The letter a Mac Roman round-trip pair stands for, or the pair unchanged when it cannot be told."""
    pair = match.group(0)
    try:
        letter = pair.encode("cp1252").decode("mac_roman").encode("cp1252").decode("utf-8")
    except UnicodeError:
        return pair
    return letter if len(letter) == 1 and letter.isalpha() else pair


@lru_cache(maxsize=16384)
def readable_title(title: str) -> str:
    """``title`` with what can be repaired repaired (the Mac Roman round trip, then ``ftfy``); a repair
    that would leave a combining mark without its letter is not taken."""
    if not isinstance(title, str) or title.isascii():
        return title
    repaired = _ROUND_TRIP.sub(_letter, title)
    fixed = ftfy.fix_text(repaired)
    return unicodedata.normalize("NFC", repaired if _marks(fixed) > _marks(repaired) else fixed)
