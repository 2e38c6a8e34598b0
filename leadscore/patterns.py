"""User regular expressions, matched in time linear in the input (RE2).

Why: a rule's ``matches`` is written by a user and runs inside the flow. Python's ``re``
backtracks, so ``(?i)^([a-z]+\\s?)+$`` on a 41-character title never finishes and stalls the
whole partition, again after every restart. RE2 (the ``google-re2`` package) takes time linear
in the input for every pattern it accepts and refuses the few constructs that need
backtracking (backreferences, lookaround).

A pattern keeps the meaning it had under ``re``: it is parsed by Python's own parser (so the
syntax, ``(?x)`` and the escapes are exactly Python's) and the parse tree is written out in
RE2's syntax, with Python's Unicode ``\\w``, ``\\d`` and ``\\s`` and ``$`` semantics. RE2's
``\\b`` is ASCII-only, so a ``\\b`` is resolved from its neighbours when they show which side
is a word character (``\\bvp\\b``, ``\\bdirección``); only a ``\\b`` between two items that can
each be either kind (``.\\b.``) keeps RE2's ASCII rule (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from re import _constants as sre  # the parse tree's opcodes (stable in 3.11 and 3.12)
from re import _parser as sre_parse  # Python's own parser: the syntax users already wrote

import re2

MAX_REPEAT = 1000  # RE2's limit on a counted repeat such as {1,1000}
CACHE_SIZE = 4096  # answers remembered per pattern (values up to MAX_TRAIT_CHARS each)


class PatternError(ValueError):
    """A pattern that cannot be matched in linear time, with what to change."""


Search = Callable[[str], bool]

_WORD = r"\p{L}\p{N}_"  # Python's \w on text: letters, numbers, underscore
_DIGIT = r"\p{Nd}"  # Python's \d on text: decimal digits of every script
# Python's \s on text (str.isspace()), written out; tests check it against re.
_SPACE = (
    r"\t\n\x0b\f\r\x1c-\x1f\x20\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}"
    r"\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}"
)
_NEVER = r"[^\x00-\x{10FFFF}]"  # a class with nothing in it: never matches
_MAXREPEAT = sre.MAXREPEAT

_OPTIONS = re2.Options()
_OPTIONS.never_capture = True  # only "is there a match" is asked: no groups to keep
_OPTIONS.log_errors = False
# A search is asked as a test of the whole text (_whole): the binding always asks RE2 where
# the match is, and for an unanchored search RE2 finds its start by compiling (once per
# pattern, ~10M instructions for a Unicode \b) and running a reversed program.
_WHOLE = re2._re2.RE2.Anchor.ANCHOR_BOTH
_NO_MATCH = (-1, -1)


def compile_search(pattern: str) -> Search:
    """A test "does ``pattern`` occur in this text", as ``re.search(...) is not None`` is.

    Raises PatternError (naming the construct and what to write instead) for patterns that
    Python's ``re`` rejects or that RE2 cannot run in linear time.
    """
    translated = to_re2(pattern)
    match = _re2(translated).Match
    # Python (before 3.14) never finds \B in empty text; RE2 does. The ASCII \B kept for
    # neighbours of either kind is the only \B written out as such (see _boundary).
    empty = _re2(translated.replace("\\B", _NEVER)).Match if "\\B" in translated else match

    # Trait values repeat (a few hundred titles across a million contacts) and a call into
    # RE2 costs ~3x a short re.search, so answers are remembered, up to a bound.
    seen: dict[str, bool] = {}

    def search(text: str) -> bool:
        found = seen.get(text)
        if found is not None:
            return found
        if not text:
            found = empty(_WHOLE, b"", 0, 0)[0] != _NO_MATCH
        else:
            data = text.encode("utf-8", "surrogatepass")
            found = match(_WHOLE, data, 0, len(data))[0] != _NO_MATCH
        if len(seen) >= CACHE_SIZE:
            seen.clear()
        seen[text] = found
        return found

    search.pattern = pattern  # type: ignore[attr-defined]  # for messages and tests
    # The remembered answers, for a caller that looks a text up before calling (a fit rule's
    # test: a hit then costs a dict read, not a call into this interpreted function).
    search.seen = seen  # type: ignore[attr-defined]
    search.re2 = translated  # type: ignore[attr-defined]
    return search


def _whole(translated: str) -> str:
    """A text holds ``translated`` somewhere: as a pattern of the whole text. ``\\C`` is any
    byte, as in RE2's own unanchored loop (a text with lone surrogates is not valid UTF-8)."""
    return f"\\C*(?:{translated})\\C*"


def _re2(translated: str) -> re2._re2.RE2:
    """``translated``, compiled to be asked of whole texts (:data:`_WHOLE`, :func:`_whole`)."""
    regexp = re2._re2.RE2(_whole(translated).encode("utf-8"), _OPTIONS)
    if not regexp.ok():
        alone = re2._re2.RE2(translated.encode("utf-8"), _OPTIONS)
        error = (regexp if alone.ok() else alone).error()  # the message names what was written
        if "too large" in error or "too big" in error:
            raise PatternError(
                "is too large to match in bounded memory; use fewer or smaller "
                "counted repeats such as {n,m}"
            )
        raise PatternError(f"RE2 refused it ({error}); simplify the pattern")
    return regexp


def to_re2(pattern: str) -> str:
    """``pattern`` (Python syntax) written in RE2 syntax with the same matches."""
    try:
        parsed = sre_parse.parse(pattern, 0)
    except re.error as exc:
        raise PatternError(f"invalid regular expression: {exc}") from None
    flags = parsed.state.flags
    if flags & sre.SRE_FLAG_LOCALE:
        raise PatternError("(?L) applies to bytes only; remove it")
    writer = _Writer()
    body = writer.sequence(list(parsed.data), flags, True, True)
    return ("(?i)" if flags & sre.SRE_FLAG_IGNORECASE else "") + body


# --------------------------------------------------------------------------- writing


def _is_word(c: int) -> bool:
    ch = chr(c)
    return ch.isalnum() or ch == "_"


def _char(c: int) -> str:
    """One code point, safe in and out of a class."""
    if c < 128 and chr(c).isalnum():
        return chr(c)
    return f"\\x{{{c:x}}}"


_UNSUPPORTED = {
    sre.GROUPREF: "backreferences (\\1, (?P=name)) are not supported: RE2 matches in linear "
    "time and cannot compare with an earlier group; write the alternatives out instead",
    sre.GROUPREF_EXISTS: "conditional groups ((?(1)...)) are not supported; write the "
    "alternatives out with |",
    sre.ASSERT: "lookahead and lookbehind ((?=...), (?<=...)) are not supported: match the "
    "text itself instead",
    sre.ASSERT_NOT: "negative lookahead and lookbehind ((?!...), (?<!...)) are not supported; "
    "match what you want instead, or add a second rule with negative points",
    sre.ATOMIC_GROUP: "atomic groups ((?>...)) are not supported; use a plain group (...), "
    "which cannot backtrack catastrophically here",
    sre.POSSESSIVE_REPEAT: "possessive quantifiers (*+, ++, ?+) are not supported; use the plain "
    "quantifier (*, +, ?), which cannot backtrack catastrophically here",
}


class _Writer:
    """Writes a parse tree out in RE2 syntax."""

    def sequence(
        self, items: list[tuple[object, object]], flags: int, start: bool, end: bool
    ) -> str:
        """``start``/``end``: nothing of the pattern can come before/after this sequence."""
        out = []
        last = len(items) - 1
        for j, (op, av) in enumerate(items):
            first, final = start and j == 0, end and j == last
            if op is sre.AT and av in (sre.AT_BOUNDARY, sre.AT_NON_BOUNDARY):
                before = "start" if first else (_last_kind(items[j - 1]) if j else None)
                after = "end" if final else (_first_kind(items[j + 1]) if j < last else None)
                out.append(_boundary(av is sre.AT_BOUNDARY, before, after, flags))
            else:
                out.append(self.item(op, av, flags, first, final))
        return "".join(out)

    def item(self, op: object, av: object, flags: int, start: bool, end: bool) -> str:
        if op in _UNSUPPORTED:
            raise PatternError(_UNSUPPORTED[op])  # type: ignore[index]
        if op is sre.LITERAL:
            return _char(av)  # type: ignore[arg-type]
        if op is sre.NOT_LITERAL:
            return f"[^{_char(av)}]"  # type: ignore[arg-type]
        if op is sre.ANY:
            return r"(?s:.)" if flags & sre.SRE_FLAG_DOTALL else r"[^\n]"
        if op is sre.IN:
            return _klass(av, flags)  # type: ignore[arg-type]
        if op is sre.BRANCH:
            _, branches = av  # type: ignore[misc]
            parts = [self.sequence(list(b), flags, start, end) for b in branches]
            return f"(?:{'|'.join(parts)})"
        if op is sre.SUBPATTERN:
            _, add, remove, sub = av  # type: ignore[misc]
            inner = (flags | add) & ~remove
            body = self.sequence(list(sub), inner, start, end)
            case = inner & sre.SRE_FLAG_IGNORECASE
            if case == flags & sre.SRE_FLAG_IGNORECASE:
                return f"(?:{body})"
            return f"(?{'i' if case else '-i'}:{body})"
        if op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
            low, high, sub = av  # type: ignore[misc]
            if low > MAX_REPEAT or (high is not _MAXREPEAT and high > MAX_REPEAT):
                raise PatternError(
                    f"counted repeats above {MAX_REPEAT} are not supported "
                    f"(got {_quantifier(low, high)}); use a smaller count"
                )
            body = self.sequence(list(sub), flags, False, False)
            return f"(?:{body}){_quantifier(low, high)}{'?' if op is sre.MIN_REPEAT else ''}"
        if op is sre.AT:
            return _anchor(av, flags, end)
        raise PatternError(f"{op} is not supported; simplify the pattern")


def _quantifier(low: int, high: int) -> str:
    if high is _MAXREPEAT:
        return {0: "*", 1: "+"}.get(low, f"{{{low},}}")
    if (low, high) == (0, 1):
        return "?"
    return f"{{{low}}}" if low == high else f"{{{low},{high}}}"


def _anchor(at: object, flags: int, end: bool) -> str:
    multiline = flags & sre.SRE_FLAG_MULTILINE
    if at is sre.AT_BEGINNING:
        return "(?m:^)" if multiline else r"\A"
    if at is sre.AT_BEGINNING_STRING:
        return r"\A"
    if at is sre.AT_END:
        if multiline:
            return "(?m:$)"
        # Python's $ also matches before a newline that ends the text; at the end of the
        # pattern, taking that newline in changes no answer to "is there a match". Before
        # more pattern it would take a look-ahead, which RE2 has not ($\W matches "\n").
        if not end:
            raise PatternError(
                "$ is followed by more of the pattern, where it can only match before a "
                "newline that ends the text; put $ at the end of the pattern (or of a branch "
                "of it), or use \\Z for the very end"
            )
        return r"(?:\n?\z)"
    if at is sre.AT_END_STRING:
        return r"\z"
    raise PatternError(f"the anchor {at} is not supported; simplify the pattern")


def _boundary(word: bool, before: object, after: object, flags: int) -> str:
    """``\\b`` (``word``) or ``\\B`` with Python's Unicode notion of a word character.

    ``before``/``after``: True (a word character), False (not one), None (either),
    "start"/"end" (nothing of the pattern is there, so the search may take in the character
    next to the match to check it).
    """
    w, nw = (
        (r"[0-9A-Za-z_]", r"[^0-9A-Za-z_]")
        if flags & sre.SRE_FLAG_ASCII
        else (
            f"[{_WORD}]",
            f"[^{_WORD}]",
        )
    )
    if isinstance(before, bool) and isinstance(after, bool):
        return "" if (before != after) == word else _NEVER
    if before == "start" and after == "end":
        if word:
            return w  # some word character has a boundary on one side
        # \B somewhere: a non-word character at either end, or two neighbours of one kind
        return f"(?:\\A{nw}|{nw}\\z|{w}{w}|{nw}{nw})"
    if before == "start" and isinstance(after, bool):
        # \b before a word character: the text starts here or a non-word character precedes.
        return f"(?:\\A|{nw})" if after == word else w
    if after == "end" and isinstance(before, bool):
        return f"(?:\\z|{nw})" if before == word else w
    return r"\b" if word else r"\B"  # RE2's ASCII rule: both sides can be either kind


def _first_kind(item: tuple[object, object]) -> bool | None:
    """Whether what ``item`` matches starts with a word character (None: it depends)."""
    return _kind(item, first=True)


def _last_kind(item: tuple[object, object]) -> bool | None:
    return _kind(item, first=False)


def _kind(item: tuple[object, object], first: bool) -> bool | None:
    op, av = item
    if op is sre.LITERAL:
        return _is_word(av)  # type: ignore[arg-type]
    if op is sre.IN:
        return _class_kind(av)  # type: ignore[arg-type]
    if op is sre.SUBPATTERN:
        sub = list(av[3])  # type: ignore[index]
        return _kind(sub[0] if first else sub[-1], first) if sub else None
    if op is sre.BRANCH:
        kinds = {
            _kind(b[0] if first else b[-1], first) if len(b) else None
            for b in av[1]  # type: ignore[index]
        }
        return kinds.pop() if len(kinds) == 1 else None
    if op in (sre.MAX_REPEAT, sre.MIN_REPEAT) and av[0] >= 1:  # type: ignore[index]
        sub = list(av[2])  # type: ignore[index]
        return _kind(sub[0] if first else sub[-1], first) if sub else None
    return None


_CATEGORY_KIND = {
    sre.CATEGORY_WORD: True,
    sre.CATEGORY_NOT_WORD: False,
    sre.CATEGORY_DIGIT: True,
    sre.CATEGORY_SPACE: False,
}


def _class_kind(items: list[tuple[object, object]]) -> bool | None:
    kinds = set()
    for op, av in items:
        if op is sre.NEGATE:
            return None
        if op is sre.LITERAL:
            kinds.add(_is_word(av))  # type: ignore[arg-type]
        elif op is sre.RANGE and av[1] - av[0] < 4096:  # type: ignore[index]
            kinds |= {_is_word(c) for c in range(av[0], av[1] + 1)}  # type: ignore[index]
        elif op is sre.CATEGORY and av in _CATEGORY_KIND:
            kinds.add(_CATEGORY_KIND[av])
        else:
            return None
    return kinds.pop() if len(kinds) == 1 else None


def _klass(items: list[tuple[object, object]], flags: int) -> str:
    """A character class ([...], \\d, \\w, \\s) in RE2 syntax."""
    ascii_only = flags & sre.SRE_FLAG_ASCII
    negate = bool(items) and items[0][0] is sre.NEGATE
    positive, negatives = [], []
    for op, av in items[1:] if negate else items:
        if op is sre.LITERAL:
            positive.append(_char(av))  # type: ignore[arg-type]
        elif op is sre.RANGE:
            lo, hi = av  # type: ignore[misc]
            positive.append(f"{_char(lo)}-{_char(hi)}")
        elif op is sre.CATEGORY:
            if av is sre.CATEGORY_DIGIT:
                positive.append("0-9" if ascii_only else _DIGIT)
            elif av is sre.CATEGORY_NOT_DIGIT:
                if ascii_only:
                    negatives.append("0-9")
                else:
                    positive.append(r"\P{Nd}")
            elif av is sre.CATEGORY_WORD:
                positive.append("0-9A-Za-z_" if ascii_only else _WORD)
            elif av is sre.CATEGORY_NOT_WORD:
                negatives.append("0-9A-Za-z_" if ascii_only else _WORD)
            elif av is sre.CATEGORY_SPACE:
                positive.append(r"\t\n\x0b\f\r " if ascii_only else _SPACE)
            elif av is sre.CATEGORY_NOT_SPACE:
                negatives.append(r"\t\n\x0b\f\r " if ascii_only else _SPACE)
            else:
                raise PatternError(f"the class {av} is not supported")
        else:
            raise PatternError(f"{op} in a character class is not supported")
    if not negatives:
        if not positive:
            return r"[\x00-\x{10FFFF}]" if negate else _NEVER
        return f"[{'^' if negate else ''}{''.join(positive)}]"
    if negate:
        # [^\W\d] and the like: "not (not A or B)" is an intersection, which RE2's classes
        # cannot spell; list the code points Python's own class accepts instead.
        return _enumerated(items, flags)
    parts = [f"[{''.join(positive)}]"] if positive else []
    parts += [f"[^{n}]" for n in negatives]
    return parts[0] if len(parts) == 1 else f"(?:{'|'.join(parts)})"


def _enumerated(items: list[tuple[object, object]], flags: int) -> str:
    """The class as explicit ranges of the code points Python's ``re`` matches with it."""
    return _code_point_ranges(
        _python_class(items), flags & (sre.SRE_FLAG_IGNORECASE | sre.SRE_FLAG_ASCII)
    )


@functools.lru_cache(maxsize=64)
def _code_point_ranges(python_class: str, flags: int) -> str:
    """Rare (``[^\\W\\d]``) and ~1 s each: every code point is tried once, then remembered."""
    every = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)
    ranges: list[tuple[int, int]] = []
    for m in re.compile(python_class, flags).finditer(every):
        c = ord(m.group())
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1] = (ranges[-1][0], c)
        else:
            ranges.append((c, c))
    if not ranges:
        return _NEVER
    body = "".join(_char(a) if a == b else f"{_char(a)}-{_char(b)}" for a, b in ranges)
    return f"(?-i:[{body}])"


_PY_CATEGORY = {
    sre.CATEGORY_DIGIT: r"\d",
    sre.CATEGORY_NOT_DIGIT: r"\D",
    sre.CATEGORY_WORD: r"\w",
    sre.CATEGORY_NOT_WORD: r"\W",
    sre.CATEGORY_SPACE: r"\s",
    sre.CATEGORY_NOT_SPACE: r"\S",
}


def _python_class(items: list[tuple[object, object]]) -> str:
    """A parsed class written back in Python's syntax."""
    out = []
    for op, av in items:
        if op is sre.NEGATE:
            out.append("^")
        elif op is sre.LITERAL:
            out.append(f"\\U{av:08x}")
        elif op is sre.RANGE:
            out.append(f"\\U{av[0]:08x}-\\U{av[1]:08x}")  # type: ignore[index]
        else:
            out.append(_PY_CATEGORY[av])
    return f"[{''.join(out)}]"
