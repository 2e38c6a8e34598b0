"""User patterns run in time linear in the input (RE2) and keep the matches they had under re.

Issue 11 part 2: `matches: "(?i)^([a-z]+\\s?)+$"` and a 41-character title spun the flow at 100%
CPU forever. The timeouts below are generous guards against a hang, not time assertions.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from leadscore.engine import Engine, PointChange
from leadscore.generate import generate_events
from leadscore.patterns import PatternError, compile_search, to_re2
from leadscore.rules import RulesError, load_rules
from tests.scoring_helpers import T0, ev, of_type, rules

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "rules.yaml"
REDOS = r"(?i)^([a-z]+\\s?)+$"  # as written inside a double-quoted YAML string
HOSTILE_TITLE = "a" * 40 + "!"  # 41 characters: exponential for a backtracking matcher


@pytest.mark.timeout(60)
def test_a_backtracking_pattern_on_a_hostile_title_is_scored() -> None:
    eng = Engine(
        rules(
            f"""
            version: 1
            fit:
              - {{id: words, trait: title, matches: "{REDOS}", points: 7}}
              - {{id: vp, trait: title, matches: "(?i)\\\\bvp\\\\b", points: 3}}
            """
        )
    )
    state = eng.new_state()
    hostile = eng.apply(state, ev("identify", T0, traits={"title": HOSTILE_TITLE}))
    assert [p.rule for p in of_type(hostile, PointChange)] == []  # no match, and it returns
    words = eng.apply(state, ev("identify", T0 + 1, traits={"title": "Vp of sales"}))
    assert sorted(p.rule for p in of_type(words, PointChange)) == ["vp", "words"]


@pytest.mark.timeout(60)
def test_hostile_globs_in_where_finish() -> None:
    """Globs go through fnmatch's translation, whose stars are atomic: it cannot backtrack."""
    eng = Engine(
        rules(
            """
            version: 1
            actions:
              - {id: stars, on: page.hit, where: {url: "*a*a*a*a*a*a*a*a*?b"}, points: 1}
              - {id: classes, on: page.hit, where: {url: "*[a-z]*[a-z]*[a-z]*[!a]"}, points: 1}
            """
        )
    )
    state = eng.new_state()
    assert eng.apply(state, ev("page.hit", T0, url="a" * 50_000)) == []
    fired = eng.apply(state, ev("page.hit", T0 + 1, url="a" * 8 + "xb"))
    assert sorted(p.rule for p in of_type(fired, PointChange)) == ["classes", "stars"]


@pytest.mark.parametrize(
    ("pattern", "needle"),
    [
        (r"(\\w+) \\1", "backreferences"),
        (r"(?P<x>a)(?P=x)", "backreferences"),
        (r"vp(?= of)", "lookahead"),
        (r"(?<!assistant )director", "lookbehind"),
        (r"(?!intern)\\w+", "lookahead"),
        (r"(?>vp|head)", "atomic"),
        (r"a++", "possessive"),
        (r"a{1001}", "1000"),
        (r"(unclosed", "invalid regular expression"),
    ],
)
def test_patterns_re2_cannot_run_are_refused_at_load(
    tmp_path: Path, pattern: str, needle: str
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "version: 1\nfit:\n"
        f'  - {{id: ok, trait: title, matches: "(?i)vp", points: 1}}\n'
        f'  - {{id: picky, trait: title, matches: "{pattern}", points: 5}}\n'
    )
    with pytest.raises(RulesError) as caught:
        load_rules(path)
    [line] = str(caught.value).splitlines()
    assert line.startswith(f"{path}: fit[1] (picky): field 'matches': ")
    assert needle in line


def test_check_names_the_rule_and_what_to_change(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from leadscore.cli import app

    path = tmp_path / "rules.yaml"
    path.write_text(
        'version: 1\nfit:\n  - {id: picky, trait: title, matches: "vp(?! intern)", points: 5}\n'
    )
    result = CliRunner().invoke(app, ["check", str(path)])
    assert result.exit_code == 1
    assert "fit[0] (picky): field 'matches'" in result.output
    assert "match what you want instead" in result.output


# --------------------------------------------------------------------------- same results


def _example_patterns() -> list[str]:
    doc = yaml.safe_load(EXAMPLES.read_text())
    return [rule["matches"] for rule in doc.get("fit", []) if "matches" in rule]


@functools.cache
def _search(pattern: str) -> Callable[[str], bool]:
    return compile_search(pattern)


@functools.cache
def _example_inputs() -> list[str]:
    """Every trait value the generator writes, plus hand-picked edge cases."""
    values: set[str] = set()
    for line in generate_events(200, 2000, 11):
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:  # the generator's deliberately malformed lines
            continue
        if isinstance(event, dict) and isinstance(event.get("traits"), dict):
            values |= {str(v) for v in event["traits"].values() if v is not None}
    return [
        *sorted(values),
        "VP",
        "vp.",
        "svp",
        "Vice-President",
        "Head of Growth",
        "Directora de Adquisición",
        "CTO\n",
        "Ingénieur Manager",
        "managerial",
        "ana@gmail.com",
        "ana@Gmail.Co",
        "ana@gmailx.com",
        "",
    ]


def test_the_example_rules_match_exactly_as_before() -> None:
    patterns = _example_patterns()
    assert len(patterns) >= 3
    inputs = _example_inputs()
    assert len(inputs) > 50
    for pattern in patterns:
        search, old = compile_search(pattern), re.compile(pattern).search
        for text in inputs:
            assert search(text) == (old(text) is not None), (pattern, text)


# A corpus of ordinary patterns: how people write title, email and domain tests.
ORDINARY = [
    r"(?i)\b(vp|vice president|head|director|founder|chief|ceo|cto|cmo)\b",
    r"(?i)\bmanager\b",
    r"(?i)@(gmail|outlook|yahoo|hotmail|proton)\.",
    r"(?i)^(intern|student|trainee)",
    r"(?i)(sales|marketing)$",
    r"^\d{3,5}$",
    r"\d+",
    r"(?i)\bdirect(or|ora|eur)\b",
    r"(?i)\bdirecci\w+",
    r"(?i)\bjefe\b|\bjefa\b",
    r"(?i)\bétude",
    r"(?i)ingénieur",
    r"\w+@\w+\.\w+",
    r"(?i)^\s*$",
    r"(?i)[^\W\d]+",
    r"(?m)^vp",
    r"(?s)head.of",
    r"head.of",
    r"(?i:VP) of (Sales|Marketing)",
    r"(?x) \b vp \b  # the VP title",
    r"[A-Z][a-z]+ [A-Z][a-z]+",
    r"\bVP\b.*\bSales\b",
    r"\Bgr",
    r"er\B",
    r"[.]com$|[.]org$",
    r"^[^@]+@[^@]+$",
    r"(?i)\s(of|de)\s",
    r"\S+\s\S+",
    r"\D{2}",
    r"(?i)^([a-z]+\s?)+$",
    r"é\b",
    r"\b",
    r"\B",
    r"\A(ceo|cto)\Z",
    r"(?a)\w+\b",
    r"(?i)straße",
    r"ñ|Ñ",
    r"[à-ÿ]+",
    r"(?i)[^a-z ]",
    r"a{2,}|b{,2}c",
    r"(vp|head)*?x",
]

ALPHABET = st.sampled_from(
    list("aAbcdeEghilmnoprsStvVxzZ0123456789 _-.@\n\t")
    + list("éÉèíñÑóúüßàÀÿçø")
    + ["\xa0", "\u2003", "٣", "²", "ǅ", "K", "ſ"]
)
TEXT = st.one_of(
    st.text(ALPHABET, max_size=24),
    st.sampled_from(_example_inputs()),
    st.builds(
        lambda a, w, b: a + w + b,
        st.text(ALPHABET, max_size=4),
        st.sampled_from(
            [
                "vp",
                "VP",
                "head",
                "Director",
                "directora",
                "dirección",
                "manager",
                "étude",
                "jefe",
                "ceo",
                "intern",
                "gmail",
                "sales",
                "of",
                "de",
                "straße",
                "STRASSE",
            ]
        ),
        st.text(ALPHABET, max_size=4),
    ),
)


@pytest.mark.parametrize("pattern", ORDINARY)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=TEXT)
@example(text="Directora de Adquisición")
@example(text="VP Sales\n")
@example(text="étude")
@example(text="")
def test_ordinary_patterns_match_as_under_re(pattern: str, text: str) -> None:
    expected = re.search(pattern, text) is not None
    assert _search(pattern)(text) == expected, (pattern, to_re2(pattern), text)


# Patterns made of the pieces people combine, in every arrangement hypothesis finds.
PIECES = st.sampled_from(
    [
        r"vp",
        r"head",
        r"é",
        r"\d",
        r"\w",
        r"\W",
        r"\s",
        r"\S",
        r"\b",
        r"\B",
        r"^",
        r"$",
        ".",
        r"[a-z]",
        r"[^a-z]",
        r"[ée]",
        r"(?:de|of)",
        " ",
        "@",
        r"\.",
        r"\A",
        r"\Z",
    ]
)
ANCHORS = {r"\b", r"\B", "^", "$", r"\A", r"\Z"}
QUANT = st.sampled_from(["", "", "", "*", "+", "?", "{1,2}", "*?"])


@st.composite
def patterns(draw: st.DrawFn) -> str:
    flags = draw(st.sampled_from(["", "(?i)", "(?s)", "(?m)", "(?im)"]))

    def atom() -> str:
        piece = draw(PIECES)
        if piece in ANCHORS:  # a repeated anchor means nothing; re rejects most of them
            return piece
        quant = draw(QUANT)
        return f"(?:{piece}){quant}" if quant else piece

    seqs = [
        "".join(atom() for _ in range(draw(st.integers(1, 4))))
        for _ in range(draw(st.integers(1, 3)))
    ]
    return flags + "|".join(seqs)


@settings(max_examples=1500, deadline=None)
@given(pattern=patterns(), text=TEXT)
def test_combined_pieces_match_as_under_re(pattern: str, text: str) -> None:
    try:
        expected = re.search(pattern, text) is not None
    except re.error:
        with pytest.raises(PatternError):
            compile_search(pattern)
        return
    try:
        got = _search(pattern)(text)
    except PatternError as err:  # the one refusal of a pattern re accepts
        assert "$ is followed by more of the pattern" in str(err), (pattern, err)
        return
    if got != expected and r"\b" not in pattern and r"\B" not in pattern:
        raise AssertionError((pattern, to_re2(pattern), text))
    if got != expected:
        # The one documented difference: a \b or \B whose neighbours can each be either kind
        # keeps RE2's ASCII rule. It can only differ next to a non-ASCII word character.
        assert any(not c.isascii() and (c.isalnum()) for c in text), (pattern, text)


def test_the_classes_are_pythons_on_every_code_point_python_knows() -> None:
    """\\s exactly; \\w and \\d wherever Python's Unicode tables (older than RE2's) assign."""
    import unicodedata

    text = "".join(chr(c) for c in range(0x30000) if not 0xD800 <= c < 0xE000)
    for cls in (r"\s", r"\S", r"\w", r"\W", r"\d", r"\D"):
        search = compile_search(f"^{cls}$")
        for ch in text:
            if cls in (r"\w", r"\W", r"\d", r"\D") and unicodedata.category(ch) == "Cn":
                continue  # unassigned in Python's tables: RE2's newer ones may assign it
            assert search(ch) == (re.search(f"^{cls}$", ch) is not None), (cls, hex(ord(ch)))


@pytest.mark.parametrize("pattern", [r"$\W", r"a$\n", r"(?:a$)?b", r"(a$|b)c"])
def test_a_dollar_before_more_pattern_is_refused_saying_where_to_put_it(pattern: str) -> None:
    """RE2 has no look-ahead: "$ then more" was translated to \\z then more, which never
    matched where Python does ($\\W and a$\\n match a text ending in a newline)."""
    with pytest.raises(PatternError, match=r"put \$ at the end of the pattern"):
        compile_search(pattern)


@pytest.mark.parametrize(
    ("pattern", "text"),
    [(r"com$", "x.com\n"), (r"com$|org$", "a.org"), (r"(?m)a$\n", "a\nb"), (r"(?:a|b$)", "b")],
)
def test_a_dollar_at_the_end_still_matches_as_under_re(pattern: str, text: str) -> None:
    assert compile_search(pattern)(text) == (re.search(pattern, text) is not None) is True


# Texts with lone surrogates too (encoded with surrogatepass: not valid UTF-8).
ANY_TEXT = st.one_of(
    TEXT,
    st.text(
        st.one_of(ALPHABET, st.sampled_from(["\ud800", "\udfff", "\x00", "\uffff"])), max_size=24
    ),
)


@settings(max_examples=2000, deadline=None)
@given(pattern=st.one_of(st.sampled_from(ORDINARY), patterns()), text=ANY_TEXT)
def test_whole_text_tests_answer_as_unanchored_searches(pattern: str, text: str) -> None:
    """A search asks RE2 whether the whole text matches ``\\C*(?:p)\\C*`` (no reversed program
    to build and run): on any text, RE2's unanchored search of ``p`` (what it asked before)."""
    import re2

    try:
        translated = to_re2(pattern)
    except PatternError:
        return
    if not text and "\\B" in translated:  # empty text: \B never matches (see compile_search)
        translated = translated.replace("\\B", r"[^\x00-\x{10FFFF}]")
    options = re2.Options()
    options.never_capture = True
    unanchored = re2._re2.RE2(translated.encode("utf-8"), options)
    if not unanchored.ok():
        return
    data = text.encode("utf-8", "surrogatepass")
    expected = unanchored.Match(re2._re2.RE2.Anchor.UNANCHORED, data, 0, len(data))[0] != (-1, -1)
    assert compile_search(pattern)(text) == expected, (pattern, translated, text)
