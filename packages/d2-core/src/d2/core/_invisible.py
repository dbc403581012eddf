"""Characters a reader cannot see, and text shown so that every one of them is seen.

Pure functions of strings, used where a person reads a value and acts on it (the
approvals inbox, ``d2 approvals``, the approval webhook's ``text``) and where two
spellings of one user id must be told to be one person. Nothing here is on a
guarded call's path.

What counts as invisible (:func:`invisible`):

* the general categories that draw nothing or reorder what is drawn: controls,
  formats (bidirectional controls, zero-width joiners), private use, surrogates,
  unassigned code points, line and paragraph separators and spaces (``Cc Cf Co
  Cs Cn Zl Zp Zs``);
* every ``Default_Ignorable_Code_Point`` of Unicode (:data:`DEFAULT_IGNORABLE`,
  copied from ``DerivedCoreProperties.txt``: a renderer draws none of them, and
  several are letters or marks, which no category test finds: the Hangul fillers,
  the combining grapheme joiner, the variation selectors);
* characters that draw a blank but are neither (:data:`BLANK`: the braille blank,
  the null notehead, a few script fillers).

:func:`shown` writes text for a reader with each of those as its ``\\uXXXX``
escape, and also escapes what would make two different strings draw alike: a
character that Unicode normalisation (NFC) would replace by another (the Kelvin
sign, the Greek question mark, a compatibility ideograph), a character whose
compatibility form (NFKC) is ASCII (mathematical letters and digits, fullwidth
forms, superscripts, ligatures: they draw like the ASCII they stand for), a combining mark that
would compose with its letter into a precomposed one, a mark drawn over its
letter (an overlay: ``o`` + U+0338 draws ``ø``), a mark with no letter or digit to
sit on, and every mark past the third on one letter (a stack that draws over the
lines around it). The result is reversible (two different strings are never
shown alike) and in NFC.

It also escapes what the text *around* a character makes misleading
(:func:`foreign`):

* right to left: a reader's terminal, chat client or browser reorders the runs
  of a text that mixes directions (Unicode's bidirectional algorithm), without
  any control character: after one Hebrew punctuation mark (U+05F3 GERESH,
  drawn like an apostrophe) ``DE44 \\u05f3 2222 1111`` draws as
  ``DE44 1111 2222 \\u05f3``. So every Arabic-Indic digit (bidirectional class
  AN: its groups reorder even alone) is escaped, and every character of class R
  or AL (Hebrew, Arabic, Syriac, Thaana, N'Ko... letters and punctuation) is
  escaped in a text that also holds a character of class L, EN or AN (a letter
  of a left-to-right script, a digit) or that shows an escape (whose ``u`` and
  hex digits are left to right). What is shown never mixes directions: a text
  only of right-to-left letters, marks and punctuation (and spaces) is kept as
  it is, and reads right to left in its own order;
* mixed scripts: a letter of Cyrillic, Greek, Armenian, Cherokee, Coptic or
  Lisu (:data:`LOOK_ALIKE_SCRIPTS`) can draw exactly like a Latin one (U+0430
  CYRILLIC SMALL LETTER A, U+03BF GREEK SMALL LETTER OMICRON, U+0585 ARMENIAN
  SMALL LETTER OH). In a text that holds a Latin letter every letter of these
  scripts is escaped; in one without Latin, the letters of all of them but the
  first (in that order) that it holds: Cyrillic letters beside Greek ones are
  kept, the Greek ones escaped. A text in one of these scripts alone is kept: a
  whole-script look-alike (``\\u0410\\u0421\\u041c\\u0415`` in Cyrillic for
  ``ACME``) is not caught, which would need Unicode's confusables table.
"""

from __future__ import annotations

import unicodedata

__all__ = [
    "BLANK",
    "DEFAULT_IGNORABLE",
    "LOOK_ALIKE_SCRIPTS",
    "MAX_MARKS",
    "escape",
    "foreign",
    "ignorable",
    "invisible",
    "shown",
]

DEFAULT_IGNORABLE: tuple[tuple[int, int], ...] = (
    (0x00AD, 0x00AD),  # SOFT HYPHEN
    (0x034F, 0x034F),  # COMBINING GRAPHEME JOINER
    (0x061C, 0x061C),  # ARABIC LETTER MARK
    (0x115F, 0x1160),  # HANGUL CHOSEONG FILLER..HANGUL JUNGSEONG FILLER
    (0x17B4, 0x17B5),  # KHMER VOWEL INHERENT AQ..KHMER VOWEL INHERENT AA
    (0x180B, 0x180D),  # MONGOLIAN FREE VARIATION SELECTOR ONE..THREE
    (0x180E, 0x180E),  # MONGOLIAN VOWEL SEPARATOR
    (0x180F, 0x180F),  # MONGOLIAN FREE VARIATION SELECTOR FOUR
    (0x200B, 0x200F),  # ZERO WIDTH SPACE..RIGHT-TO-LEFT MARK
    (0x202A, 0x202E),  # LEFT-TO-RIGHT EMBEDDING..RIGHT-TO-LEFT OVERRIDE
    (0x2060, 0x2064),  # WORD JOINER..INVISIBLE PLUS
    (0x2065, 0x2065),  # <reserved>
    (0x2066, 0x206F),  # LEFT-TO-RIGHT ISOLATE..NOMINAL DIGIT SHAPES
    (0x3164, 0x3164),  # HANGUL FILLER
    (0xFE00, 0xFE0F),  # VARIATION SELECTOR-1..VARIATION SELECTOR-16
    (0xFEFF, 0xFEFF),  # ZERO WIDTH NO-BREAK SPACE
    (0xFFA0, 0xFFA0),  # HALFWIDTH HANGUL FILLER
    (0xFFF0, 0xFFF8),  # <reserved>
    (0x1BCA0, 0x1BCA3),  # SHORTHAND FORMAT LETTER OVERLAP..UP STEP
    (0x1D173, 0x1D17A),  # MUSICAL SYMBOL BEGIN BEAM..END PHRASE
    (0xE0000, 0xE0FFF),  # LANGUAGE TAG, TAG SPACE..CANCEL TAG, VARIATION SELECTOR-17..256,
    # and the reserved code points between them
)
"""The ``Default_Ignorable_Code_Point`` ranges of Unicode 15.1
(``DerivedCoreProperties.txt``; unchanged since 14.0), first and last code point
of each. The list names reserved code points too, so a character assigned inside
a range later is covered already."""

BLANK = frozenset(
    {
        0x2800,  # BRAILLE PATTERN BLANK (So)
        0x1D159,  # MUSICAL SYMBOL NULL NOTEHEAD (So)
        0x16FE4,  # KHITAN SMALL SCRIPT FILLER (Mn)
        0x13441,  # EGYPTIAN HIEROGLYPH FULL BLANK (Lo, Unicode 15)
        0x13442,  # EGYPTIAN HIEROGLYPH HALF BLANK (Lo, Unicode 15)
    }
)
"""Code points that draw a blank and are neither default-ignorable nor a space."""

MAX_MARKS = 3
"""Combining marks shown on one letter; the next ones are escaped (three: a
Tibetan stack or a letter with two accents and a tone)."""

_HIDDEN = frozenset({"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp", "Zs"})
_MARKS = frozenset({"Mn", "Mc", "Me"})
_BASES = frozenset({"Lu", "Ll", "Lt", "Lm", "Lo", "Nd", "Nl", "No"})
_IGNORABLE = frozenset(code for first, last in DEFAULT_IGNORABLE for code in range(first, last + 1))
# Hangul vowel and final jamo: composed with the jamo before them by NFC
_JAMO_TAIL = frozenset(range(0x1161, 0x1176)) | frozenset(range(0x11A8, 0x11C3))


def ignorable(char: str) -> bool:
    """Whether ``char`` (one character) is a Unicode default-ignorable code point."""
    return ord(char) in _IGNORABLE


def invisible(char: str) -> bool:
    """Whether ``char`` (one character) draws nothing, draws a blank, or changes
    the order of what is drawn (see the module docstring)."""
    code = ord(char)
    return code in _IGNORABLE or code in BLANK or unicodedata.category(char) in _HIDDEN


LOOK_ALIKE_SCRIPTS = ("CYRILLIC", "GREEK", "ARMENIAN", "CHEROKEE", "COPTIC", "LISU")
"""Scripts with letters drawn like Latin ones (as the first word of their
characters' Unicode names): never shown beside a Latin letter, nor beside each
other (see the module docstring)."""

_RIGHT_TO_LEFT = frozenset({"R", "AL"})
_LEFT_TO_RIGHT = frozenset({"L", "EN"})


def foreign(text: str, *, within_left_to_right: bool = False) -> frozenset[str]:
    """The characters of ``text`` that the text around them makes misleading, and
    that :func:`shown` therefore escapes (see the module docstring): Arabic-Indic
    digits; right-to-left letters and punctuation in a text that also holds a
    left-to-right letter or a digit; letters of the :data:`LOOK_ALIKE_SCRIPTS`
    beside Latin ones or beside each other. ``within_left_to_right``: ``text`` is
    drawn inside left-to-right text (a line of a notification), so its
    right-to-left characters are always foreign. Empty for ASCII text."""
    if text.isascii():
        return frozenset()
    bidirectional, category, name = (
        unicodedata.bidirectional,
        unicodedata.category,
        unicodedata.name,
    )
    right: set[str] = set()  # of class R or AL
    numbers: set[str] = set()  # of class AN
    scripts: dict[str, set[str]] = {}  # letters of each look-alike script
    left = within_left_to_right  # a character of class L or EN
    latin = False
    for char in set(text):
        if char.isascii():
            if char.isalnum():
                left = True
                latin = latin or char.isalpha()
            continue
        kind = bidirectional(char)
        if kind in _LEFT_TO_RIGHT:
            left = True
        elif kind in _RIGHT_TO_LEFT:
            right.add(char)
        elif kind == "AN":
            numbers.add(char)
        if category(char)[0] == "L":
            script = name(char, "")
            if script.startswith(("LATIN ", "FULLWIDTH LATIN ")):
                latin = True
            else:
                word = script.split(" ", 1)[0]
                if word in LOOK_ALIKE_SCRIPTS:
                    scripts.setdefault(word, set()).add(char)
    found = set(numbers)
    if left or numbers:
        found |= right
    kept = None if latin else next((w for w in LOOK_ALIKE_SCRIPTS if w in scripts), None)
    for word, letters in scripts.items():
        if word != kept:
            found |= letters
    return frozenset(found)


def _both_directions(text: str) -> bool:
    """Whether ``text`` holds a character of class R or AL and one of class L, EN
    or AN (drawn, it would be reordered)."""
    if text.isascii():
        return False
    kinds = {unicodedata.bidirectional(c) for c in set(text)}
    return bool(kinds & _RIGHT_TO_LEFT) and bool(kinds & {"L", "EN", "AN"})


def escape(char: str) -> str:
    """``char`` as JSON escapes it: ``\\uXXXX`` (lower-case hex), a character
    beyond U+FFFF as its surrogate pair; a surrogate on its own in upper-case hex
    (``\\uD83D``), so that it never reads as half of a pair."""
    code = ord(char)
    if 0xD800 <= code <= 0xDFFF:
        return f"\\u{code:04X}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def shown(text: str, keep: str = " ", *, backslash: bool = True) -> str:
    """``text`` for a reader: every character of the module docstring written as
    its :func:`escape`, except those in ``keep``. ``backslash``: also escape a
    backslash followed by ``u`` or ``U`` (as ``\\u005c``), so that text which
    already reads like an escape is never taken for one (off for JSON, which
    doubles every backslash itself)."""
    if text.isascii() and text.isprintable() and not (backslash and "\\" in text):
        return text
    hide = foreign(text) | _like_ascii(text)
    result = _normal_shown(text, keep, backslash, hide)
    if _both_directions(result):  # an escape beside right-to-left text: escape it too
        bidirectional = unicodedata.bidirectional
        hide |= {c for c in set(text) if bidirectional(c) in _RIGHT_TO_LEFT}
        result = _normal_shown(text, keep, backslash, hide)
    return result


def _like_ascii(text: str) -> frozenset[str]:
    """The characters of ``text`` that draw like ASCII they are not:

    * those whose compatibility form (NFKC) is ASCII: the mathematical monospace
      U+1D68A and U+1D7FD draw pixel-identical to ``a`` and ``7``; fullwidth
      forms, superscripts, ligatures such as U+FB01, the ellipsis;
    * every dash other than ``-`` (U+2010 HYPHEN and U+2011 draw pixel-identical to
      it in a monospace box), and the few others that draw as ASCII punctuation or
      letters (:data:`DRAWN_AS_ASCII`: the minus sign, the low quotation mark, the
      modifier colon and apostrophes, the saltillo, Latin small capitals);
    * in text that holds an ASCII letter or digit, the digits of other scripts
      (the Bengali four draws like ``8``, the Devanagari zero like ``o``)."""
    normalize = unicodedata.normalize
    category = unicodedata.category
    ascii_near = any(c.isascii() and c.isalnum() for c in text)
    found = set()
    for c in set(text):
        if c.isascii():
            continue
        kind = category(c)
        if (
            c in DRAWN_AS_ASCII
            or kind == "Pd"
            or (ascii_near and kind == "Nd")
            or (c != (f := normalize("NFKC", c)) and f.isascii())
        ):
            found.add(c)
    return frozenset(found)


DRAWN_AS_ASCII = frozenset(
    "\u2212\u201a\ua789\ua78c\u02cb\u02bc\u02b9\u02ba\u02c8\u02d0\u2044\u2215\u2236"
    # Latin letter small capitals (U+1D04 draws like c in a body font, U+1D0F like o)
    "\u1d00\u1d04\u1d05\u1d07\u1d0a\u1d0b\u1d0d\u1d0f\u1d18\u1d1b\u1d1c\u1d20\u1d21\u1d22"
    "\ua731\u0280\u0262\u029c\u026a\u029f\u0274\u028f"
)
"""Characters outside the rules of :func:`_like_ascii` that draw like ASCII."""


def _normal_shown(text: str, keep: str, backslash: bool, hide: frozenset[str]) -> str:
    """:func:`shown`, ``hide`` escaped, in NFC."""
    result = _shown(text, keep, backslash, hide, strict=False)
    if not unicodedata.is_normalized("NFC", result):
        result = _shown(text, keep, backslash, hide, strict=True)
    if not unicodedata.is_normalized("NFC", result):  # pragma: no cover - defence in depth
        result = "".join(c if c.isascii() or c in keep else escape(c) for c in result)
    return result


def _shown(text: str, keep: str, backslash: bool, hide: frozenset[str], *, strict: bool) -> str:
    """One pass of :func:`shown` (``hide``: the :func:`foreign` characters of
    ``text``); ``strict``: escape every combining mark and every Hangul vowel or
    final jamo as well (nothing left to compose)."""
    check_nfc = strict or not unicodedata.is_normalized("NFC", text)
    category = unicodedata.category
    out: list[str] = []
    marks = -1  # marks kept on the current letter; -1: no letter to put one on
    last = len(text) - 1
    for i, char in enumerate(text):
        code = ord(char)
        if char in keep:
            out.append(char)
            marks = -1
            continue
        if code < 0x7F:
            if code < 0x20:
                out.append(escape(char))
                marks = -1
            elif char == "\\" and backslash and i < last and text[i + 1] in "uU":
                out.append("\\u005c")
                marks = -1
            else:
                out.append(char)
                marks = 0 if char.isalnum() else -1
            continue
        kind = category(char)
        if kind in _HIDDEN or code in _IGNORABLE or code in BLANK or char in hide:
            out.append(escape(char))
            marks = -1
        elif kind in _MARKS:
            if (
                strict
                or marks < 0
                or marks >= MAX_MARKS
                or unicodedata.combining(char) == 1  # an overlay: draws another letter
                or (check_nfc and unicodedata.normalize("NFC", char) != char)
            ):
                out.append(escape(char))
                marks = -1  # what follows has no letter of its own to sit on
            else:
                out.append(char)
                marks += 1
        elif (check_nfc and unicodedata.normalize("NFC", char) != char) or (
            strict and code in _JAMO_TAIL
        ):
            out.append(escape(char))
            marks = -1
        else:
            out.append(char)
            marks = 0 if kind in _BASES else -1
    return "".join(out)
