"""Rule matchers: the compiled form (``Where``) and the generated function agree, always.

``leadscore.matchers`` has two implementations of one meaning: the compiled engine matches
with typed ``Where`` objects, the interpreted one with a generated Python function. Both are
built here from random `where` filters and run on random props, whichever engine this
process loaded (``Where`` runs as Python when the module is not compiled), and compared with
each other and with ``Condition.holds``, the plain reading of a filter.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import leadscore.matchers as matchers_module
from leadscore.accel import decide
from leadscore.matchers import MAX_TYPED, Where, generate_matcher, typed_matcher
from leadscore.rules import Rules, parse_rules

KEYS = ("url", "form", "seats", "utm.source", "utm.medium", "page.url")
TEXTS = ("/pricing", "Pricing", "demo-request", "İstanbul", "paid", "", "a.b", "ß", "K")
# Globs of each kind the compiler tells apart: plain, one needle, several stars, ? and [].
PATTERNS = (
    "*/pricing*",
    "*/PRICING*",
    "demo-request",
    "*blog/*",
    "https://*acme*/docs/*",
    "*/pricing",
    "whitepaper-*",
    "case-?tudy*",
    "[dp]aid",
    "İ*",
    "*ß*",
    "*",
    "",
    "paid",
    "Paid",
    "*DOCS/*",
    "*Ng*",
    "*/*",
    "*k*",
)
scalars = st.one_of(
    st.sampled_from(PATTERNS),
    st.booleans(),
    st.integers(-2, 3),
    st.sampled_from((1.0, 2.5, -0.0)),
)
expected = st.one_of(scalars, st.lists(scalars, min_size=1, max_size=3))
wheres = st.dictionaries(st.sampled_from(KEYS), expected, min_size=0, max_size=3)

values = st.one_of(
    st.sampled_from(TEXTS),
    st.sampled_from(("https://acme.com/Pricing", "https://www.acme.com/docs/x", "PAID")),
    st.sampled_from(("whitepaper-1", "case-study-2", "case-Study", "K", "k", "İstanbul")),
    st.sampled_from(("HTTPS://WWW.ACME.COM/DOCS/X/PRICING", "/pricin", "/blog", "x/BLOG/")),
    st.text(max_size=12),
    # ASCII text of the needles' letters: the compiled one-pass scan's case folding, its
    # partial matches and matches at either end.
    st.text(alphabet="/aAbBcCdDgGiIkKlLnNoOpPrRsS", max_size=16),
    st.booleans(),
    st.integers(-2, 3),
    st.sampled_from((1.0, 2.5, 0.0, -0.0)),
    st.none(),
)
leaves = st.one_of(values, st.lists(values, max_size=2))
props_strategy = st.dictionaries(
    st.sampled_from(("url", "form", "seats", "utm", "utm.source", "utm.medium", "page")),
    st.one_of(
        leaves,
        st.dictionaries(st.sampled_from(("source", "medium", "url")), leaves, max_size=3),
    ),
    max_size=5,
)


def compile_rules(action_wheres: list[dict[str, Any]], stage_wheres: list[dict[str, Any]]) -> Rules:
    doc: dict[str, Any] = {
        "version": 1,
        "groups": {"g": {}},
        "actions": [
            {"id": f"r{i}", "on": "page.hit", "points": 1, "repeat": True, "where": w or None}
            for i, w in enumerate(action_wheres)
        ],
    }
    if stage_wheres:
        doc["stages"] = {
            "order": [f"s{i}" for i in range(len(stage_wheres))],
            "rules": [
                {"on": "page.hit", "where": w or None, "stage": f"s{i}"}
                for i, w in enumerate(stage_wheres)
            ],
        }
    return parse_rules(doc)


def expected_result(rules: Rules, props: dict[str, Any]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """What Condition.holds says, rule by rule (the generated function reads top-level text
    lower-cased first; for these patterns that gives the same answer)."""
    hit = tuple(r.id for r in rules.by_action["page.hit"] if all(c.holds(props) for c in r.where))
    stages = rules.stages_by_action.get("page.hit", ())
    ranks = tuple(s.rank for s in stages if all(c.holds(props) for c in s.where))
    return hit, ranks


@settings(max_examples=300, deadline=None)
@given(
    action_wheres=st.lists(wheres, min_size=1, max_size=6),
    stage_wheres=st.lists(wheres, max_size=3),
    props=st.lists(props_strategy, min_size=1, max_size=8),
)
def test_the_compiled_matcher_and_the_generated_one_agree(
    action_wheres: list[dict[str, Any]],
    stage_wheres: list[dict[str, Any]],
    props: list[dict[str, Any]],
) -> None:
    rules = compile_rules(action_wheres, stage_wheres)
    actions = rules.by_action["page.hit"]
    stages = rules.stages_by_action.get("page.hit", ())
    typed = typed_matcher(actions, stages)
    assert isinstance(typed, Where)
    generated = generate_matcher("page.hit", actions, stages)
    loaded = rules.matchers["page.hit"]
    for p in props:
        want = generated(p)
        assert typed(p) == want, (p, typed.plan)
        assert typed(p) == want  # again: the remembered result of the same mask
        assert loaded(p) == want
        hit, ranks = want
        assert (tuple(r.id for r in hit), ranks) == expected_result(rules, p)


def test_a_shared_value_is_one_atom() -> None:
    """`*/pricing*` alone and inside two lists: one test per event, not three."""
    rules = compile_rules(
        [{"url": "*/pricing*"}, {"url": ["*/pricing*", "*/demo*"]}, {"url": "*/demo*"}],
        [{"url": ["*/PRICING*", "*/docs/*"]}],
    )
    typed = typed_matcher(rules.by_action["page.hit"], rules.stages_by_action["page.hit"])
    assert typed is not None
    assert len(typed.atoms) == 3
    hit, ranks = typed({"url": "https://acme.com/Pricing"})
    assert [r.id for r in hit] == ["r0", "r1"]
    assert ranks == (0,)


def test_more_tests_than_a_mask_holds_fall_back_to_the_generated_function() -> None:
    wheres = [{"url": f"*/page{i}/*"} for i in range(MAX_TYPED + 1)]
    rules = compile_rules(wheres, [])
    actions = rules.by_action["page.hit"]
    assert typed_matcher(actions, ()) is None
    matcher = rules.matchers["page.hit"]
    assert not isinstance(matcher, Where)
    hit, _ = matcher({"url": f"https://acme.com/page{MAX_TYPED}/"})
    assert [r.id for r in hit] == [f"r{MAX_TYPED}"]


def test_the_engine_in_this_process_matches_with_where_only_when_compiled() -> None:
    rules = compile_rules([{"url": "*/pricing*"}], [])
    compiled = decide()[0]
    assert matchers_module.__file__ is not None
    assert matchers_module.__file__.endswith(".py") != compiled
    assert isinstance(rules.matchers["page.hit"], Where) == compiled
