"""Strings the analysed code controls (its output, its errors, the names of files it wrote), made safe to show.

Text shown to the model loses terminal escapes and control characters, so printed output cannot clear, overwrite or
recolour what a client shows, and cannot pose as anything but output. File names are always quoted, with anything
unprintable escaped, so that a name holding a newline or an escape sequence stays on its own line inside its quotes
and cannot pass for a line of the server's own (the session summary, the list of generated files).
"""

from __future__ import annotations

import re

# ESC-introduced sequences: CSI (ESC [ ... final), OSC/DCS/SOS/PM/APC strings (up to BEL or ESC \), and the short
# two-character escapes; also the 8-bit CSI/OSC introducers.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[ -/]*[0-~]"
    r"|\x9b[0-?]*[ -/]*[@-~]"
    r"|\x9d[^\x07\x1b]*(?:\x07|\x1b\\)?"
)
# C0 controls but tab and newline, DEL, C1 controls, and lone surrogates (undecodable bytes of a file name).
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SURROGATES = re.compile(r"[\ud800-\udfff]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"', "\\": "\\\\"}


def plain(text: str) -> str:
    """`text` without terminal escapes or control characters (newlines and tabs kept; a carriage return is a new
    line); anything that is not valid Unicode becomes U+FFFD."""
    if text.isprintable():
        return text
    text = _ESCAPES.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _CONTROLS.sub("", text)
    return _SURROGATES.sub("\ufffd", text)


def escaped(name: str) -> str:
    """`name` with every unprintable character (control, format, separator other than space, lone surrogate) and
    every backslash and double quote escaped as in a JSON string; a printable name comes back unchanged."""
    if name.isprintable() and '"' not in name and "\\" not in name:
        return name
    out = []
    for ch in name:
        if ch in _SHORT:
            out.append(_SHORT[ch])
        elif ch.isprintable() and not _SURROGATES.match(ch):
            out.append(ch)
        elif ord(ch) > 0xFFFF:
            code = ord(ch) - 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
        else:
            out.append(f"\\u{ord(ch):04x}")
    return "".join(out)


def quote(name: str) -> str:
    """`name` escaped and in double quotes: how a file name appears in every message (it reads as a JSON string)."""
    return f'"{escaped(name)}"'


def storable(name: str) -> str:
    """A name as the file store keeps it: undecodable bytes (lone surrogates) become U+FFFD."""
    return _SURROGATES.sub("\ufffd", name)
