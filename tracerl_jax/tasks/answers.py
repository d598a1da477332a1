"""Reading the final answer out of untrusted model output (docs/algorithms.md §7.1).

`extract_boxed` is the reference's rule (the last box). The library's scorers read every final
answer a response commits to instead (`boxed_answers`, `gsm8k_answers`), leave out the ones copied
from the prompt, and reject answers written as alternatives (`is_disjunction`), so a policy
cannot collect the reward by listing several candidates. Nothing here raises on any input.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

_BOXED = "\\boxed{"
_GSM8K_MARK = "####"

ECHO_CONTEXT = 24
"""Characters before an answer that must also match the prompt for it to count as an echo.

Long enough that a model's own sentence rarely coincides with an exemplar's; short enough that a
copy need not reproduce the whole exemplar.
"""

_BRACE = re.compile(r"[{}]")
_GSM8K_RUN = re.compile("#{4,}")
# math-verify reads a box nested in an answer as the answer, so "\boxed{20 \boxed{18}}" would
# count as 18; dropping the inner command makes the outer box judged as written.
_NESTED_BOX = re.compile(r"\\boxed(?![A-Za-z])")
_MAX_UNNEST = 4
# Alternatives an answer may be written with. Word forms must stand alone, so "for", "order",
# "\operatorname" or a segment named "OR" inside braces are not matched; upper-case "OR" only
# counts between spaces because a lone "OR" is more often a geometric name than a connective.
_DISJUNCTION = re.compile(
    r"\\(?:lor|vee|bigvee)(?![A-Za-z])"
    r"|\u2228|\u6216"
    r"|(?<![A-Za-z\\])(?:or|Or|either|Either|EITHER)(?![A-Za-z])"
    r"|(?<=\s)OR(?=\s)")


def _box_spans(text: str) -> list[tuple[int, int, int]] | None:
    """Outermost boxes as (opener start, content start, content end); None if one never closes.

    Each brace is looked at once, so the scan is linear in the text.
    """
    spans = []
    pos = 0
    while True:
        start = text.find(_BOXED, pos)
        if start < 0:
            return spans
        begin = start + len(_BOXED)
        depth = 1
        for m in _BRACE.finditer(text, begin):
            depth += 1 if m.group() == "{" else -1
            if depth == 0:
                spans.append((start, begin, m.start()))
                pos = m.end()
                break
        else:
            return None


def is_echo(text: str, start: int, end: int, prompt: str | None,
            context: int = ECHO_CONTEXT) -> bool:
    """Whether ``text[start:end]`` is copied from the prompt rather than the model's own.

    It is an echo when that span together with the ``context`` characters before it occurs
    verbatim in ``prompt``. An answer with fewer than ``context`` characters before it is never
    an echo: a bare box the prompt happens to contain (an instruction's ``\\boxed{}``, an
    exemplar's value) is too little to call a copy, and a policy could otherwise hide a wrong
    answer by opening its response with it.

    Args:
      text: the model response.
      start: where the answer (including its marker, e.g. ``\\boxed{``) begins.
      end: where it ends (exclusive).
      prompt: the prompt the response answers; None or a non-string means nothing is an echo.
      context: characters of preceding text the copy must share.

    Returns:
      True for an echo; False otherwise, including for malformed arguments.
    """
    if not (isinstance(text, str) and isinstance(prompt, str) and prompt):
        return False
    if not (isinstance(start, int) and isinstance(end, int) and isinstance(context, int)):
        return False
    if not (0 <= context <= start < end <= len(text)):
        return False
    return text[start - context:end] in prompt


def boxed_answers(text: str, prompt: str | None = None) -> list[str]:
    """Returns the content of every ``\\boxed{...}`` the response commits to, in order.

    Braces are counted, so nested groups (``\\boxed{\\frac{1}{2}}``) come back whole. A box
    inside another box is part of the outer answer, with its ``\\boxed`` dropped
    (``\\boxed{20 \\boxed{18}}`` gives ``20 {18}``), so the outer answer is judged as written;
    a box holding only a box is read through (``\\boxed{\\boxed{5}}`` gives ``5``).
    A ``\\boxed{`` whose brace never closes (for example a truncated response) makes the
    response unreadable: nothing is returned, as `extract_boxed` returns None when the last
    box is broken. Boxes that `is_echo` finds in ``prompt`` (a copied few-shot exemplar or
    instruction) are left out. Duplicates and empty boxes are kept; `distinct_answers` drops
    them.

    Args:
      text: model output (any value; a non-string has no answers).
      prompt: the prompt the response answers, for echo filtering; None keeps every box.

    Returns:
      The box contents, possibly empty.
    """
    if not isinstance(text, str):
        return []
    spans = _box_spans(text)
    if spans is None:
        return []
    return [_unnest(text[begin:end]) for start, begin, end in spans
            if not is_echo(text, start, end + 1, prompt)]


def _unnest(content: str) -> str:
    """A box's content with boxes inside it unwrapped (``\\boxed{\\boxed{5}}`` reads 5)."""
    # Each level rescans the content, so only a few are read through (deeper ones keep their
    # braces) to stay linear on adversarial nesting.
    for _ in range(_MAX_UNNEST):
        inner = content.strip()
        if not inner.startswith(_BOXED) or _box_spans(inner) != [
                (0, len(_BOXED), len(inner) - 1)]:
            break
        content = inner[len(_BOXED):-1]
    return _NESTED_BOX.sub("", content)


def gsm8k_answers(text: str, prompt: str | None = None) -> list[str]:
    """Returns the answer after every ``####`` marker (GSM8K format), in order.

    Each answer is the rest of its line (up to the next marker) without surrounding whitespace
    and trailing periods. Markers with nothing after them are skipped, and markers that
    `is_echo` finds, with their answer, in ``prompt`` are left out.

    Args:
      text: model output (any value; a non-string has no answers).
      prompt: the prompt the response answers, for echo filtering; None keeps every marker.

    Returns:
      The answers, possibly empty.
    """
    if not isinstance(text, str):
        return []
    answers = []
    marks = list(_GSM8K_RUN.finditer(text))
    for k, m in enumerate(marks):
        begin = m.end()
        newline = text.find("\n", begin)
        end = min(marks[k + 1].start() if k + 1 < len(marks) else len(text),
                  len(text) if newline < 0 else newline)
        answer = text[begin:end].strip().rstrip(".").strip()
        # In a run of '#' the last four are the marker, as `str.rfind` sees it.
        if answer and not is_echo(text, begin - len(_GSM8K_MARK), end, prompt):
            answers.append(answer)
    return answers


def is_disjunction(answer: str) -> bool:
    """Whether an answer offers alternatives instead of committing to one value.

    Matches ``\\lor``, ``\\vee``, ``\\bigvee``, ``∨``, ``或`` and the words "or"/"either"
    standing alone (also inside ``\\text{}``/``\\mathrm{}``; "OR" only between spaces).
    Commas, ``\\pm`` and ``\\cup`` are not disjunctions: they write one answer that is a list,
    a pair of roots or a set, which math-verify compares as a whole.

    Args:
      answer: an extracted answer (any value; a non-string is not a disjunction).

    Returns:
      True when the answer contains a disjunction.
    """
    return isinstance(answer, str) and _DISJUNCTION.search(answer) is not None


def distinct_answers(answers: Iterable[str]) -> list[str]:
    """The different answers in order: blank ones dropped, repeats (up to spacing) once.

    Args:
      answers: extracted answers, e.g. from `boxed_answers` (non-strings are dropped).

    Returns:
      The first spelling of each different answer, in order of first appearance.
    """
    seen, out = set(), []
    try:
        items = list(answers)
    except TypeError:
        return []
    for a in items:
        if not isinstance(a, str):
            continue
        key = "".join(a.split())
        if key and key not in seen:
            seen.add(key)
            out.append(a)
    return out


def extract_boxed(text: str) -> str | None:
    """Returns the content of the last ``\\boxed{...}`` in ``text`` (the reference's rule).

    The scan starts after the last ``\\boxed{`` and counts braces, so nested
    groups such as ``\\boxed{\\frac{1}{2}}`` come back whole. The reference
    returns the sentinel ``"Can not extract the answer!"`` where this returns
    None. The library's scorers use `boxed_answers` instead.

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
