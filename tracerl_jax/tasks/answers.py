"""Reading the final answer out of untrusted model output (docs/algorithms.md §7.1)."""
from __future__ import annotations

_BOXED = "\\boxed{"


def extract_boxed(text: str) -> str | None:
    """Returns the content of the last ``\\boxed{...}`` in ``text``.

    The scan starts after the last ``\\boxed{`` and counts braces, so nested
    groups such as ``\\boxed{\\frac{1}{2}}`` come back whole. The reference
    returns the sentinel ``"Can not extract the answer!"`` where this returns
    None.

    Args:
      text: model output (any string; never raises).

    Returns:
      The enclosed text, or None when there is no ``\\boxed{`` or its brace
      never closes.
    """
    if not isinstance(text, str):
        return None
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth = 1
    begin = start + len(_BOXED)
    for i in range(begin, len(text)):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[begin:i]
    return None


def parse_int(text: str) -> int | None:
    """Parses an integer answer written the ways a model tends to write one.

    Accepts surrounding spaces, ``$`` signs, thousands separators (``1,234``),
    a unicode minus sign, a leading ``+`` and a zero fractional part
    (``92.0``).

    Args:
      text: candidate answer text (untrusted).

    Returns:
      The integer, or None if the text is not one.
    """
    if not isinstance(text, str) or len(text) > 64:
        return None
    s = text.strip().strip("$").replace(",", "").replace(" ", "")
    s = s.replace("\u2212", "-")
    if "." in s:
        whole, _, frac = s.partition(".")
        if frac.strip("0"):
            return None
        s = whole
    if s.startswith("+"):
        s = s[1:]
    digits = s[1:] if s.startswith("-") else s
    if not digits.isascii() or not digits.isdigit():
        return None
    return int(s)
