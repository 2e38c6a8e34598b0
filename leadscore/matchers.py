"""Rule matchers: all the `where` tests one action name selects, run once per event.

Why a module of its own: matching is the largest part of a page hit's cost, and it has two
implementations with one meaning. Interpreted, :func:`generate_matcher` writes the tests out
as one Python function (each prop read and lower-cased once, substring and equality tests
inline) and compiles it with ``exec`` from our own text only. Compiled (Cython, this module
is in ``leadscore/accel.py``'s COMPILED list, types in ``matchers.pxd``), generated Python would
run interpreted, so :class:`Where` holds the same tests as small typed objects
(:class:`Test`, :class:`Atom`) that a C loop evaluates; nothing is generated or exec'd.
:func:`compile_matcher` picks the one that is faster where it runs. Every test is pure, so
the order and laziness of evaluation cannot change a result: both give what
``Condition.holds`` composes, and the tests check them against each other.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from typing import Any

from leadscore.accel import is_c_type

# The rules' types (leadscore.rules imports this module, so not the other way round): a
# matcher reads `where`, `conds`, `match` of both and `rank` of a stage rule.
ActionRule = Any
StageRule = Any

_MISSING = object()
_UNRESOLVED = object()  # a dotted path's value not read yet (Where reads them lazily)
Predicate = Callable[[Any], bool]
# An action's matcher: props -> (the action rules whose `where` holds, in file order, and the
# ranks of the stage rules whose `where` holds, in file order).
Matcher = Callable[[dict[str, Any]], tuple[tuple[ActionRule, ...], tuple[int, ...]]]
# A Where evaluates at most this many tests (rules) and atoms per action: its masks are C
# integers. Beyond, the generated function runs (still correct, interpreted).
MAX_TYPED = 64


class Condition:
    """One `where` entry: a dotted path into props and a precompiled test.

    ``low`` tests an already lower-cased string (None: no string matches) and ``needle``, when
    set, means "contains this": the engine lower-cases each prop once per event and checks
    these inline, because matching dominates the cost of a page hit.
    """

    __slots__ = ("expected", "keys", "low", "needle", "test")

    def __init__(
        self,
        keys: tuple[str, ...],
        test: Predicate,
        low: Callable[[str], bool] | None = None,
        needle: str | None = None,
        expected: object = None,
    ) -> None:
        self.keys = keys
        self.test = test
        self.low = low
        self.needle = needle
        self.expected = expected  # the value as written: compile_matcher inlines it

    def holds(self, props: dict[str, Any]) -> bool:
        if len(self.keys) == 1:
            value = props.get(self.keys[0], _MISSING)
            return value is not _MISSING and self.test(value)
        value: Any = props
        for key in self.keys:
            if type(value) is not dict:
                return False
            value = value.get(key, _MISSING)
            if value is _MISSING:
                # A flat key like "page.url" also counts as the dotted path.
                value = props.get(".".join(self.keys), _MISSING)
                if value is _MISSING:
                    return False
                break
        return self.test(value)


def lowered(expected: object) -> tuple[Callable[[str], bool] | None, str | None]:
    """The test of a lower-cased string value, and its substring needle when it is one."""
    if isinstance(expected, list):
        tests = [t for t in (lowered(e)[0] for e in expected) if t is not None]
        if not tests:
            return None, None
        return (lambda lv: any(t(lv) for t in tests)), None
    if not isinstance(expected, str):
        return None, None  # numbers and booleans never equal a string
    pattern = expected.lower()
    if not any(c in pattern for c in "*?["):
        return pattern.__eq__, None
    if not any(c in pattern for c in "?["):
        head, *middle, tail = pattern.split("*")
        if not head and not tail and len(middle) == 1:
            needle = middle[0]
            return (lambda lv: needle in lv), needle
        star = star_glob(pattern)
        return star, None
    match = re.compile(fnmatch.translate(pattern), re.DOTALL).match
    return (lambda lv: match(lv) is not None), None


def inline_form(
    conditions: tuple[Condition, ...],
) -> tuple[tuple[str, str | None, Callable[[str], bool] | None, Predicate], ...] | None:
    """The (key, needle, lowered test, raw test) form the engine checks inline, when every
    condition reads a top-level prop; None otherwise (then `match` is used)."""
    if not conditions or any(len(c.keys) != 1 for c in conditions):
        return None
    return tuple((c.keys[0], c.needle, c.low, c.test) for c in conditions)


def compile_where(conditions: tuple[Condition, ...]) -> Callable[[dict[str, Any]], bool] | None:
    """One callable for all of a rule's conditions; the common one-prop case is a closure."""
    if not conditions:
        return None
    if len(conditions) == 1 and len(conditions[0].keys) == 1:
        key, test = conditions[0].keys[0], conditions[0].test

        def one(props: dict[str, Any]) -> bool:
            value = props.get(key, _MISSING)
            return value is not _MISSING and test(value)

        return one

    def every(props: dict[str, Any]) -> bool:
        for condition in conditions:  # noqa: SIM110 - a plain loop: no generator per event
            if not condition.holds(props):
                return False
        return True

    return every


def star_glob(pattern: str) -> Predicate:
    """A glob with only `*` wildcards, as substring checks: several times faster than a regex."""
    head, *middle, tail = pattern.split("*")
    middle = [part for part in middle if part]
    least = len(head) + len(tail) + sum(map(len, middle))
    if not head and not tail and len(middle) == 1:
        needle = middle[0]
        return lambda v: isinstance(v, str) and needle in v.lower()

    def match(v: object) -> bool:
        if not isinstance(v, str) or len(v) < least:
            return False
        text = v.lower()
        if not text.startswith(head) or not text.endswith(tail):
            return False
        at, end = len(head), len(text) - len(tail)
        for part in middle:
            at = text.find(part, at, end)
            if at < 0:
                return False
            at += len(part)
        return True

    return match


def scalar_test(expected: object) -> Predicate | None:
    """The test of a `where` value that is not a list (None: a type no value can match)."""
    if isinstance(expected, bool):
        return lambda v: v is expected
    if isinstance(expected, int | float):
        number = float(expected)
        return lambda v: isinstance(v, int | float) and not isinstance(v, bool) and v == number
    if isinstance(expected, str):
        pattern = expected.lower()
        if not any(c in pattern for c in "*?["):
            return lambda v: isinstance(v, str) and v.lower() == pattern
        if not any(c in pattern for c in "?["):
            return star_glob(pattern)
        regex = re.compile(fnmatch.translate(pattern), re.IGNORECASE | re.DOTALL)
        match = regex.match
        return lambda v: isinstance(v, str) and match(v) is not None
    return None


def any_test(tests: tuple[Predicate, ...]) -> Predicate:
    """A list's test: any of its values' tests."""
    return lambda v: any(t(v) for t in tests)


def generate_matcher(
    action: str, rules: tuple[ActionRule, ...], stage_rules: tuple[StageRule, ...]
) -> Matcher:
    """All the `where` tests one action name selects, generated as one Python function
    (what the interpreted engine runs; see :func:`compile_matcher`).

    Why: a page hit runs ~14 tests against the same few props, and as closures each costs a
    call, a generator and a lower-casing. The generated function reads and lower-cases each
    prop once, inlines substring and equality tests, computes a test shared by several rules
    (``*/pricing*`` thrice) once, and maps the set of rules that hold to precomputed tuples.
    Every test is pure, so the order and laziness of evaluation cannot change a result: the
    semantics are exactly those of ``Condition.holds``, which ``match`` composes.
    """
    consts: dict[str, Any] = {"_MISSING": _MISSING}
    keys: dict[str, int] = {}  # top-level prop -> its local variable index

    def const(value: object) -> str:
        name = f"k{len(consts)}"
        consts[name] = value
        return name

    def low_expr(expected: object, lv: str) -> str | None:
        """An expression for `low(lv)` (see lowered), None when no string matches."""
        if isinstance(expected, list):
            parts = [p for p in (low_expr(e, lv) for e in expected) if p is not None]
            return f"({' or '.join(parts)})" if parts else None
        test, needle = lowered(expected)
        if test is None:
            return None
        if needle is not None:
            return f"{needle!r} in {lv}"
        if isinstance(expected, str) and not any(c in expected for c in "*?["):
            return f"{lv} == {expected.lower()!r}"
        return f"{const(test)}({lv})"

    def inline(cond: Condition) -> str:
        """One condition on a top-level prop, inline (same result as Condition.holds)."""
        key = cond.keys[0]
        i = keys.setdefault(key, len(keys))
        v, lv = f"v{i}", f"l{i}"
        expected = cond.expected
        if isinstance(expected, bool):  # `v is expected`, and no string is a bool
            return f"{v} is {expected!r}"
        if cond.needle is not None:
            on_str = f"{cond.needle!r} in {lv}"
        elif cond.low is None:
            on_str = "False"
        else:
            on_str = low_expr(expected, lv) or f"{const(cond.low)}({lv})"
        if _only_text(expected):  # its raw test is False for anything but a string
            return f"({lv} is not None and {on_str})"
        raw = f"({v} is not _MISSING and {const(cond.test)}({v}))"
        return f"({on_str} if {lv} is not None else {raw})"

    paths: dict[tuple[str, ...], str] = {}  # dotted path -> its local variable
    path_lines: list[str] = []

    def resolve(keys_: tuple[str, ...]) -> str:
        """Locals holding what Condition.holds reads at a dotted path (_MISSING: it fails)."""
        var = paths.get(keys_)
        if var is not None:
            return var
        var = paths[keys_] = f"d{len(paths)}"
        flat = ".".join(keys_)

        def step(i: int, cur: str, ind: str) -> list[str]:
            x = f"{var}_{i}"
            out = [
                f"{ind}{x} = {cur}.get({keys_[i]!r}, _MISSING)",
                f"{ind}if {x} is _MISSING:",  # a flat key like "utm.source" counts too
                f"{ind}    {var} = props.get({flat!r}, _MISSING)",
            ]
            if i == len(keys_) - 1:
                return [*out, f"{ind}else:", f"{ind}    {var} = {x}"]
            deeper = step(i + 1, x, ind + "    ")
            return [
                *out,
                f"{ind}elif type({x}) is dict:",
                *deeper,
                f"{ind}else:",
                f"{ind}    {var} = _MISSING",
            ]

        path_lines.extend(step(0, "props", "    "))
        return var

    def raw_expr(expected: object, v: str) -> str | None:
        """An expression for the raw test (see matcher) of a value known not to be _MISSING."""
        if isinstance(expected, bool):
            return f"{v} is {expected!r}"
        if isinstance(expected, list):
            parts = [raw_expr(e, v) for e in expected]
            if any(p is None for p in parts):
                return None
            return f"({' or '.join(parts)})"  # type: ignore[arg-type]
        if not isinstance(expected, str):
            return None
        _, needle = lowered(expected)
        if needle is not None:
            return f"(isinstance({v}, str) and {needle!r} in {v}.lower())"
        if not any(c in expected for c in "*?["):
            return f"(isinstance({v}, str) and {v}.lower() == {expected.lower()!r})"
        return None

    def dotted(cond: Condition) -> str:
        """Condition.holds, with the path walked once per event and common tests inline."""
        if len(cond.keys) == 1:
            return f"{const(cond.holds)}(props)"
        var = resolve(cond.keys)
        test = raw_expr(cond.expected, var) or f"{const(cond.test)}({var})"
        return f"({var} is not _MISSING and {test})"

    def where_expr(conds: Any, match: Any, where: tuple[Condition, ...]) -> str:
        if conds is None:
            if match is None:
                return "True"
            return " and ".join(dotted(c) for c in where)
        return " and ".join(inline(c) for c in where)

    tests = [where_expr(r.conds, r.match, r.where) for r in rules]
    tests += [where_expr(s.conds, s.match, s.where) for s in stage_rules]
    # Atoms used by several rules are computed once, up front.
    atoms: dict[str, int] = {}
    for test in tests:
        for atom in set(_split_and(test)) - {"True"}:
            atoms[atom] = atoms.get(atom, 0) + 1
    shared = {atom: f"a{j}" for j, atom in enumerate(a for a, n in atoms.items() if n > 1)}
    body, always = [], 0
    for bit, test in enumerate(tests):
        if test == "True":
            always |= 1 << bit  # no `where`: folded into the starting mask
            continue
        expr = " and ".join(shared.get(a, a) for a in _split_and(test))
        body += [f"    if {expr}:", f"        m |= {1 << bit}"]
    body.append("    return resolved[m]")
    lines = ["def match(props):"]
    used = "\n".join([*shared, *body])
    for key, i in keys.items():
        lines.append(f"    v{i} = props.get({key!r}, _MISSING)")
        if re.search(rf"\bl{i}\b", used):
            lines.append(f"    l{i} = v{i}.lower() if type(v{i}) is str else None")
    lines += path_lines
    lines += [f"    {name} = {atom}" for atom, name in shared.items()]
    lines += [f"    m = {always}", *body]

    count = len(rules)

    class Resolved(dict[int, tuple[tuple[ActionRule, ...], tuple[int, ...]]]):
        def __missing__(self, m: int) -> tuple[tuple[ActionRule, ...], tuple[int, ...]]:
            hit = tuple(r for b, r in enumerate(rules) if m >> b & 1)
            ranks = tuple(s.rank for b, s in enumerate(stage_rules) if m >> (count + b) & 1)
            self[m] = value = (hit, ranks)
            return value

    consts["resolved"] = Resolved()
    source = "\n".join(lines)
    namespace = dict(consts)
    # Only our own text runs: every literal is repr()-quoted, every value a bound constant.
    exec(compile(source, f"<where of {action}>", "exec"), namespace)
    matcher: Matcher = namespace["match"]
    matcher.source = source  # type: ignore[attr-defined]  # for debugging and tests
    return matcher


def _only_text(expected: object) -> bool:
    """Whether a `where` value is text or a list of texts (so only strings can match it)."""
    if isinstance(expected, list):
        return all(_only_text(e) for e in expected)
    return isinstance(expected, str)


def _split_and(expr: str) -> list[str]:
    """The top-level ` and `-joined atoms of a generated test (atoms are parenthesised)."""
    out, depth, start = [], 0, 0
    i = 0
    while i < len(expr):
        c = expr[i]
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c in "'\"":  # skip a string literal
            end = i + 1
            while expr[end] != c:
                end += 2 if expr[end] == "\\" else 1
            i = end
        elif depth == 0 and expr.startswith(" and ", i):
            out.append(expr[start:i])
            start = i + 5
            i += 5
            continue
        i += 1
    out.append(expr[start:])
    return out


# --------------------------------------------------------------------------- compiled


# How a Test tests a value. LOW_*: an already lower-cased string (a top-level prop, as the
# generated function reads it); RAW_*: the value as it is (Condition.test's meaning).
LOW_EQ, LOW_IN, LOW_ANY, LOW_CALL = 1, 2, 3, 4
RAW_IS, RAW_NUMBER, RAW_STR_EQ, RAW_STR_IN, RAW_ANY, RAW_CALL = 11, 12, 13, 14, 15, 16


class Test:
    """One test of one value, as data: ``kind`` and its argument (``text`` for the string
    kinds, ``value`` for `is`, a number or a callable, ``parts`` for any-of)."""

    def __init__(
        self, kind: int, text: str = "", value: object = None, parts: tuple[Test, ...] = ()
    ) -> None:
        self.kind = kind
        self.text = text
        self.value = value
        self.parts = parts


class Atom:
    """One condition as the matcher checks it: the value it reads (``source``: a top-level
    prop, then the dotted paths) and how. ``lowered``: as the generated function's inline
    test (``low`` on a string, else ``raw``); otherwise ``raw`` alone (Condition.holds)."""

    def __init__(self, source: int, lowered: bool, low: Test | None, raw: Test) -> None:
        self.source = source
        self.lowered = lowered
        self.low = low
        self.raw = raw
        # A dotted path's keys and its flat spelling ("utm.source"): read when first needed.
        self.path: tuple[str, ...] = ()
        self.flat = ""


def low_test(expected: object) -> Test | None:
    """``lowered(expected)[0]`` as a Test; None when no string matches."""
    if isinstance(expected, list):
        parts = tuple(t for t in (low_test(e) for e in expected) if t is not None)
        return Test(LOW_ANY, parts=parts) if parts else None
    if not isinstance(expected, str):
        return None
    return _string_test(expected, (LOW_IN, LOW_EQ, LOW_CALL))


def raw_test(expected: object) -> Test | None:
    """The rules loader's test of a `where` value (Condition.test) as a Test."""
    if isinstance(expected, list):
        parts = tuple(t for t in (raw_test(e) for e in expected) if t is not None)
        return Test(RAW_ANY, parts=parts)
    if isinstance(expected, bool):
        return Test(RAW_IS, value=expected)
    if isinstance(expected, int | float):
        return Test(RAW_NUMBER, value=float(expected))
    if not isinstance(expected, str):
        return None
    return _string_test(expected, (RAW_STR_IN, RAW_STR_EQ, RAW_CALL))


def _string_test(expected: str, kinds: tuple[int, int, int]) -> Test:
    """A text `where` value's Test of the family ``kinds`` (its contains, equals and call
    kinds): ``*x*`` is a substring test, text without wildcards an equality, any other glob
    a call (``lowered``'s test of a lower-cased string, or ``scalar_test``'s of a value)."""
    contains, equals, call = kinds
    test, needle = lowered(expected)
    if needle is not None:
        return Test(contains, needle)
    pattern = expected.lower()
    if not any(c in pattern for c in "*?["):
        return Test(equals, pattern)
    return Test(call, value=test if call == LOW_CALL else scalar_test(expected))


class Scan:
    """The substring atoms (``*/pricing*``: ``LOW_IN``) of one top-level prop, tested in one
    pass over its value when that is ASCII text, compiled only (``ls_scan`` in matchers.pxd):
    it folds the case as it reads, so no lower-cased copy is made and the text is read once,
    not once per needle (a page hit's URL against five needles: ~1.4k instructions as
    ``str.lower`` and five searches). ASCII text lower-cases byte by byte, A-Z only, which is
    what makes the folding exact; any other text takes the atoms one by one, as before.
    Only needles that are ASCII, non-empty and at most 255 characters are scanned; the
    others stay with ``_holds``."""

    def __init__(self, source: int, needles: list[tuple[str, int]]) -> None:
        self.source = source
        self.blob = b"".join(needle.encode() for needle, _ in needles)
        self.lens = bytes(len(needle) for needle, _ in needles)
        self.atoms = bytes(atom for _, atom in needles)
        first = bytearray(256)
        for needle, _ in needles:
            first[ord(needle[0])] = 1
        self.first = bytes(first)
        self.count = len(needles)
        heads = {needle[0] for needle, _ in needles}
        head = min(heads)
        # One first byte that is no letter (`/` for URL paths): memchr finds its places.
        self.single = ord(head) if len(heads) == 1 and not head.isalpha() else -1
        self.mask = sum(1 << atom for _, atom in needles)  # the atoms it answers


def scans_of(atoms: tuple[Atom, ...]) -> tuple[Scan, ...]:
    """A :class:`Scan` per top-level prop that has scannable substring atoms."""
    by_source: dict[int, list[tuple[str, int]]] = {}
    for index, a in enumerate(atoms):
        low = a.low
        if (
            a.lowered
            and low is not None
            and low.kind == LOW_IN
            and low.text
            and low.text.isascii()
            and len(low.text) <= 255
        ):
            by_source.setdefault(a.source, []).append((low.text, index))
    return tuple(Scan(source, needles) for source, needles in by_source.items())


class Where:
    """An action's matcher, compiled: props -> (rules that hold, stage ranks that hold).

    ``plan`` lists each test with a `where` as bytes: its bit, its length, then each
    condition as (atom count, atom indices...); a test holds when every condition has an
    atom that holds (a list's values are one atom each). Atoms are evaluated at most once
    per event (several rules share ``*/pricing*``), lazily, and each prop is read and
    lower-cased once.
    """

    def __init__(
        self,
        keys: tuple[str, ...],
        lowers: tuple[bool, ...],
        paths: tuple[tuple[str, ...], ...],
        atoms: tuple[Atom, ...],
        plan: bytes,
        always: int,
        rules: tuple[ActionRule, ...],
        stage_rules: tuple[StageRule, ...],
    ) -> None:
        self.keys = keys
        self.lowers = lowers
        self.paths = paths
        self.flats = tuple(".".join(p) for p in paths)
        # What match copies per event, one list: each key's value (missing until read), each
        # dotted path's (unresolved), then each key's lower-cased text (None: not made yet).
        self.blank = [_MISSING] * len(keys) + [_UNRESOLVED] * len(paths) + [None] * len(keys)
        self.atoms = atoms
        self.scans = scans_of(atoms)
        self.plan = plan
        self.always = always
        self.resolved: dict[int, tuple[tuple[ActionRule, ...], tuple[int, ...]]] = {}
        self.rules = rules
        self.stage_rules = stage_rules
        # The last mask and its answer: consecutive events of an action mostly hold the same
        # tests (often none), and a C comparison costs less than boxing m for the dict.
        # Compiled, match reads and writes the pair with no Python code between (one GIL
        # hold), so threads sharing the engine never see half an update.
        self.last_mask = always
        self.last_found = self.resolve(always)

    def __call__(self, props: dict[str, Any]) -> tuple[tuple[ActionRule, ...], tuple[int, ...]]:
        return self.match(props)

    def match(self, props: dict[str, Any]) -> tuple[tuple[ActionRule, ...], tuple[int, ...]]:
        nkeys = len(self.keys)
        # Dotted paths are read when an atom first needs one (a rule on utm.source and
        # utm.medium reads the second only if the first holds), a key's text lower-cased
        # when an atom first needs it (at vals[lows + key]): one list per event.
        vals = self.blank[:]
        lows = nkeys + len(self.paths)
        for i in range(nkeys):
            vals[i] = props.get(self.keys[i], _MISSING)
        m = self.always
        known = 0
        truth = 0
        if _TYPED:  # compiled: each prop's substring atoms in one pass over ASCII text
            for s in self.scans:
                v = vals[s.source]
                if type(v) is str and PyUnicode_IS_ASCII(v):  # noqa: F821 - matchers.pxd's
                    truth |= ls_scan(  # noqa: F821 - C, in matchers.pxd
                        PyUnicode_DATA(v),  # noqa: F821
                        PyUnicode_GET_LENGTH(v),  # noqa: F821
                        s.blob,
                        s.lens,
                        s.atoms,
                        s.first,
                        s.count,
                        s.single,
                    )
                    known |= s.mask
        one = 1  # an unsigned 64-bit 1 compiled: `1 << bit` would shift a C int
        plan = self.plan  # compiled: the bytes' own buffer, read as C bytes
        n = len(self.plan)
        p = 0
        while p < n:
            bit = plan[p]
            end = p + 2 + plan[p + 1]
            p += 2
            ok = True
            while p < end:  # each condition: any of its atoms (a list's values)
                count = plan[p]
                p += 1
                ok = False
                for k in range(count):
                    a = plan[p + k]
                    if known >> a & 1:
                        ok = bool(truth >> a & 1)
                    else:
                        ok = _holds(self.atoms[a], vals, lows, props)
                        known |= one << a
                        if ok:
                            truth |= one << a
                    if ok:
                        break
                p += count
                if not ok:
                    break
            p = end
            if ok:
                m |= one << bit
        if m == self.last_mask:
            return self.last_found
        found = self.resolved.get(m)
        if found is None:
            found = self.resolve(m)
        self.last_mask = m
        self.last_found = found
        return found

    def resolve(self, m: int) -> tuple[tuple[ActionRule, ...], tuple[int, ...]]:
        """The rules and stage ranks of a mask of tests that hold (remembered)."""
        count = len(self.rules)
        hit = tuple(r for b, r in enumerate(self.rules) if m >> b & 1)
        ranks = tuple(s.rank for b, s in enumerate(self.stage_rules) if m >> (count + b) & 1)
        self.resolved[m] = found = (hit, ranks)
        return found


def _holds(a: Atom, vals: list[Any], lows: int, props: dict[str, Any]) -> bool:
    v = vals[a.source]
    if a.lowered and type(v) is str:  # a top-level text prop, lower-cased once per event
        lv = vals[lows + a.source]
        if lv is None:
            text = v  # compiled: typed str, so lower() is called in C, not looked up
            lv = vals[lows + a.source] = text.lower()
        return a.low is not None and _low(a.low, lv)
    if v is _UNRESOLVED:
        v = vals[a.source] = _resolve(props, a.path, a.flat)
    if v is _MISSING:
        return False
    return _raw(a.raw, v)


def _low(t: Test, lv: str) -> bool:
    kind = t.kind
    if kind == LOW_IN:
        return t.text in lv
    if kind == LOW_EQ:
        return lv == t.text
    if kind == LOW_ANY:
        for part in t.parts:  # noqa: SIM110 - a C loop compiled, no generator
            if _low(part, lv):
                return True
        return False
    return bool(t.value(lv))  # type: ignore[operator]


def _raw(t: Test, v: object) -> bool:
    kind = t.kind
    if kind == RAW_IS:
        return v is t.value
    if kind == RAW_STR_EQ:
        return isinstance(v, str) and v.lower() == t.text
    if kind == RAW_STR_IN:
        return isinstance(v, str) and t.text in v.lower()
    if kind == RAW_NUMBER:
        # a tuple, not `int | float`: Cython tests a tuple of builtins in C
        return isinstance(v, (int, float)) and not isinstance(v, bool) and v == t.value
    if kind == RAW_ANY:
        for part in t.parts:  # noqa: SIM110 - a C loop compiled, no generator
            if _raw(part, v):
                return True
        return False
    return bool(t.value(v))  # type: ignore[operator]


def _resolve(props: dict[str, Any], keys: tuple[str, ...], flat: str) -> Any:
    """What Condition.holds reads at a dotted path (_MISSING: it fails)."""
    cur = props
    last = len(keys) - 1
    for i in range(last + 1):
        x = cur.get(keys[i], _MISSING)
        if x is _MISSING:
            return props.get(flat, _MISSING)  # a flat key like "utm.source" counts too
        if i == last:
            return x
        if type(x) is not dict:
            return _MISSING
        cur = x
    return _MISSING


def typed_matcher(
    rules: tuple[ActionRule, ...], stage_rules: tuple[StageRule, ...]
) -> Where | None:
    """The Where of one action's rules and stage rules (None: more than MAX_TYPED)."""
    keys: dict[str, int] = {}
    lowers: dict[str, bool] = {}
    paths: dict[tuple[str, ...], int] = {}
    atoms: dict[tuple[Any, ...], int] = {}
    made: list[Atom] = []
    plan: list[int] = []
    always = 0

    def atom(cond: Condition, expected: object, lowered: bool) -> int:
        if len(cond.keys) == 1:
            source = keys.setdefault(cond.keys[0], len(keys))
            if lowered:
                lowers[cond.keys[0]] = True
        else:
            source = -1 - paths.setdefault(cond.keys, len(paths))  # placed after the keys
        # Every test of text reads it lower-cased (so */PRICING* is */pricing*); repr tells 1
        # from 1.0 and True from 1: equal keys, equal tests.
        key = expected.lower() if isinstance(expected, str) else repr(expected)
        identity = (source, lowered, type(expected), key)
        index = atoms.get(identity)
        if index is None:
            raw = raw_test(expected)
            if raw is None:  # a value of no type a test exists for: the loader refused it
                raw = Test(RAW_CALL, value=cond.test) if expected is cond.expected else None
            low = low_test(expected) if lowered else None
            index = atoms[identity] = len(made)
            made.append(Atom(source, lowered, low, raw or Test(RAW_ANY)))
        return index

    tests = [(r.conds, r.where) for r in rules] + [(s.conds, s.where) for s in stage_rules]
    if len(tests) > MAX_TYPED:
        return None
    for bit, (conds, where) in enumerate(tests):
        if not where:
            always |= 1 << bit  # no `where`: always holds
            continue
        # As the generated function: inline (lower-cased) when every condition reads a
        # top-level prop, else each as Condition.holds. A list holds when any of its values
        # does: one atom per value, so a value several lists share is tested once.
        body: list[int] = []
        for c in where:
            values = c.expected if isinstance(c.expected, list) else [c.expected]
            indices = [atom(c, e, conds is not None) for e in values]
            body += [len(indices), *indices]
        plan += [bit, len(body), *body]
    if len(made) > MAX_TYPED or any(x > 255 for x in plan):
        return None
    nkeys = len(keys)
    dotted = list(paths)
    for a in made:
        if a.source < 0:
            path = dotted[-1 - a.source]
            a.path, a.flat = path, ".".join(path)
            a.source = nkeys - 1 - a.source
    return Where(
        tuple(keys),
        tuple(lowers.get(k, False) for k in keys),
        tuple(paths),
        tuple(made),
        bytes(plan),
        always,
        rules,
        stage_rules,
    )


_TYPED = is_c_type(Where)


def compile_matcher(
    action: str, rules: tuple[ActionRule, ...], stage_rules: tuple[StageRule, ...]
) -> Matcher:
    """All the `where` tests one action name selects, as one callable: a :class:`Where` when
    this module runs compiled, else the generated Python function (faster interpreted)."""
    if _TYPED:
        typed = typed_matcher(rules, stage_rules)
        if typed is not None:
            return typed
    return generate_matcher(action, rules, stage_rules)
