"""Rules that pass `check` never crash or poison the flow (issue 11 part 4).

`expire_after: 999999w` passed `check` and crashed `run --source` on every restart (a timer
past the year 9999); `points: 1.797e308` turned scores into NaN; a 500-byte YAML alias bomb
made `check` use gigabytes. Every number is bounded at load, naming file, rule and field, and
timers are safe for any value that passes.
"""

from __future__ import annotations

import math
import resource
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from flows.shards import LAST_INSTANT, ShardLogic, wake_time
from leadscore.cli import app
from leadscore.durations import MAX_DURATION, parse_duration
from leadscore.engine import Engine
from leadscore.rules import RulesError, load_rules, load_rules_text
from state.keys import partition_of
from state.redis_store import RedisStore
from tests.scoring_helpers import T0, ev

ROOT = Path(__file__).resolve().parent.parent
LAST_DAY = datetime(9999, 12, 30, tzinfo=UTC).timestamp()


def problems(text: str) -> list[str]:
    with pytest.raises(RulesError) as caught:
        load_rules_text(textwrap.dedent(text), "rules.yaml")
    return str(caught.value).splitlines()


@pytest.mark.parametrize(
    ("text", "start"),
    [
        (
            "groups: {product: {decay: {expire_after: 999999w}}}",
            "rules.yaml: groups.product: field 'decay.expire_after': '999999w' is too long",
        ),
        (
            "groups: {engagement: {decay: {half_life: 9999999999999999999999d}}}",
            "rules.yaml: groups.engagement: field 'decay.half_life': ",
        ),
        (
            "actions: [{id: a, on: page.hit, points: 1, repeat: {cooldown: 523w}}]",
            "rules.yaml: actions[0] (a): field 'repeat.cooldown': '523w' is too long",
        ),
        (
            "actions: [{id: a, on: page.hit, points: 1, repeat: {max: 2, per: 3655d}}]",
            "rules.yaml: actions[0] (a): field 'repeat.per': '3655d' is too long",
        ),
        (
            "actions: [{id: a, on: page.hit, points: 1, returns_within: 87697h}]",
            "rules.yaml: actions[0] (a): field 'returns_within': '87697h' is too long",
        ),
        (
            "actions: [{id: a, on: page.hit, points: 1, returns_after: 315705601s}]",
            "rules.yaml: actions[0] (a): field 'returns_after': '315705601s' is too long",
        ),
        (
            "actions: [{id: a, on: page.hit, points: 1.797e+308}]",
            "rules.yaml: actions[0] (a): field 'points': 1.797e+308 is out of range",
        ),
        (
            "actions: [{id: a, on: page.hit, points: -1000001}]",
            "rules.yaml: actions[0] (a): field 'points': -1e+06 is out of range",
        ),
        (
            "fit: [{id: f, trait: title, exists: true, points: 1.0e+7}]",
            "rules.yaml: fit[0] (f): field 'points': 1e+07 is out of range",
        ),
        (
            "fit: [{id: f, trait: size, between: [0, .inf], points: 1}]",
            "rules.yaml: fit[0] (f): field 'between': expected [low, high] numbers",
        ),
        (
            "groups: {engagement: {max: 1.0e+300}}",
            "rules.yaml: groups.engagement: field 'max': 1e+300 is out of range",
        ),
        (
            "groups: {engagement: {min: -1.0e+10}}",
            "rules.yaml: groups.engagement: field 'min': -1e+10 is out of range",
        ),
        (
            "triggers: [{id: t, at_least: 1.0e+308, actions: []}]",
            "rules.yaml: triggers[0] (t): field 'at_least': 1e+308 is out of range",
        ),
        (
            "triggers: [{id: t, below: -1.0e+308, actions: []}]",
            "rules.yaml: triggers[0] (t): field 'below': -1e+308 is out of range",
        ),
        (
            "triggers: [{id: t, at_least: 5, rearm_below: -2.0e+9, actions: []}]",
            "rules.yaml: triggers[0] (t): field 'rearm_below': -2e+09 is out of range",
        ),
        (
            "grades: {fit: {bands: {A: 1.0e+12}, otherwise: B}}",
            "rules.yaml: grades.fit: field 'bands.A': 1e+12 is out of range",
        ),
        ("scale: {max: 1.0e+100}", "rules.yaml: scale: field 'max': 1e+100 is out of range"),
        (
            "actions: [{id: a, on: page.hit, points: 1, hits: 1000000001}]",
            "rules.yaml: actions[0] (a): field 'hits': expected a whole number from 1 to 1000000",
        ),
        (
            "actions: [{id: a, on: page.hit, points: 1, repeat: {max: 100000, per: 1d}}]",
            "rules.yaml: actions[0] (a): field 'repeat.max': expected a whole number from 1 to "
            "1000,",
        ),
    ],
)
def test_out_of_range_numbers_are_refused_naming_file_rule_and_field(text: str, start: str) -> None:
    [line] = problems("version: 1\n" + text)
    assert line.startswith(start), line


def test_the_largest_values_that_pass_load() -> None:
    rules = load_rules_text(
        textwrap.dedent(
            """
            version: 1
            groups:
              engagement: {decay: {half_life: 522w}, max: 1.0e+9, min: -1.0e+9}
              product: {decay: {expire_after: 3654d}}
              fit: {}
            actions:
              - {id: a, on: page.hit, points: 1.0e+6, repeat: {max: 1000, per: 87696h}}
              - {id: d, on: page.hit, points: 1, hits: 1000000}
              - {id: b, on: page.hit, points: -1.0e+6, returns_within: 5261760m, group: product}
              - {id: c, on: page.hit, points: 1, returns_after: 315705600s, repeat: true}
            triggers: [{id: t, at_least: 1.0e+9, rearm_below: -1.0e+9, actions: []}]
            grades: {fit: {bands: {A: 1.0e+9}, otherwise: B}}
            scale: {max: 1.0e+9}
            """
        )
    )
    assert rules.groups["product"].expire_after == MAX_DURATION == parse_duration("522w")


def test_check_refuses_a_huge_duration_and_huge_points(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "version: 1\ngroups: {product: {decay: {expire_after: 999999w}}}\n"
        "actions: [{id: cart, on: cart.add, points: 1.797e+308, group: product}]\n"
    )
    result = CliRunner().invoke(app, ["check", str(path)])
    assert result.exit_code == 1, result.output
    assert "groups.product: field 'decay.expire_after': '999999w' is too long" in result.output
    assert "at most 522w (3654d, about 10 years)" in result.output
    assert "actions[0] (cart): field 'points': 1.797e+308 is out of range" in result.output


def test_scores_stay_finite_at_the_largest_points() -> None:
    """The most a rule may give, every time, many times: the score is large and finite."""
    eng = Engine(
        load_rules_text(
            "version: 1\ngroups: {engagement: {}}\n"
            "actions: [{id: a, on: page.hit, points: 1.0e+6, repeat: true},"
            " {id: b, on: page.hit, points: 1.0e+6, repeat: true}]\n"
        )
    )
    state = eng.new_state()
    for i in range(2000):
        eng.apply(state, ev("page.hit", T0 + i))
    total = eng.view("c-1", state)["total"]
    assert math.isfinite(total) and total == 4e9


# --------------------------------------------------------------------------- YAML aliases

BOMB = (
    "version: 1\nknown_actions:\n  - &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    + "".join(
        f"  - &{b} [{', '.join([f'*{a}'] * 9)}]\n"
        for a, b in zip("abcdefgh", "bcdefghi", strict=True)
    )
)


def test_an_alias_bomb_is_refused_with_its_line(tmp_path: Path) -> None:
    assert len(BOMB) < 500
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    with pytest.raises(RulesError) as caught:
        load_rules(path)
    [line] = str(caught.value).splitlines()
    assert line.startswith(f"{path}: line ")
    assert "more than 100,000 values once its aliases (*name) are expanded" in line


def _limit_memory() -> None:
    limit = 3 << 30  # 3 GiB of address space: today's code went past it, or ran for ever
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_check_refuses_an_alias_bomb_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    result = subprocess.run(
        [sys.executable, "-m", "leadscore.cli", "check", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limit_memory,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "use fewer aliases" in result.stdout + result.stderr


def test_modest_aliases_still_work() -> None:
    rules = load_rules_text(
        textwrap.dedent(
            """
            version: 1
            actions:
              - &visit {id: pricing, on: page.hit, where: {url: "*/pricing*"}, points: 5}
              - {<<: *visit, id: docs, where: {url: "*/docs*"}}
            """
        )
    )
    assert [(a.id, a.points) for a in rules.actions] == [("pricing", 5.0), ("docs", 5.0)]


def test_a_recursive_alias_is_refused() -> None:
    [line] = problems("version: 1\nknown_actions: &a [x, *a]\n")
    assert "the alias *a is inside its own anchor" in line


# --------------------------------------------------------------------------- timers

# The longest expiry that passes, and a trigger that waits for it: the timer is due 10 years
# after an award, and an event may be dated up to the end of the year 9999.
RULES_FAR = """\
version: 1
groups: {product: {decay: {expire_after: 3654d}}, engagement: {}}
actions:
  - {id: cart, on: cart.add, points: 5, group: product, repeat: true}
  - {id: visit, on: page.hit, points: 1, repeat: true}
triggers:
  - {id: hot, score: product, at_least: 5, actions: [{add_tag: hot}]}
  - {id: cold, score: product, below: 1, after: hot, actions: [{remove_tag: hot}]}
"""


@pytest.mark.parametrize("due", [LAST_DAY + 3654 * 86400, 6e11, math.inf, math.nan])
def test_a_timer_past_the_last_date_wakes_at_the_last_date(due: float) -> None:
    assert wake_time(due) == datetime.fromtimestamp(LAST_INSTANT, UTC)


def test_a_live_shard_arms_a_timer_due_after_the_year_9999() -> None:
    engine = Engine(load_rules_text(RULES_FAR))
    logic = ShardLogic(engine, 1, live=True)
    logic.on_batch([ev("cart.add", LAST_DAY)])
    assert logic.notify_at() == datetime.fromtimestamp(LAST_INSTANT, UTC)


def test_the_live_flow_arms_a_timer_due_after_the_year_9999_and_restarts(
    redis_url: str, tmp_path: Path
) -> None:
    """`run --source` with the longest expiry and an award dated 9999: the flow arms the
    contact's timer (at the last date), goes on scoring, stops cleanly and restarts."""
    from tests.test_redis_flow import FlowProcess, P

    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES_FAR)
    store = RedisStore(redis_url)
    store.ensure(P)
    far = partition_of("far@acme.com", P)

    def hit(n: int) -> bytes:
        return orjson.dumps({"contact": "near@acme.com", "action": "page.hit", "id": f"h{n}"})

    def total(contact: str) -> float:
        return (store.read_model(contact) or {}).get("total", 0.0)

    store.send_events(
        [
            orjson.dumps(
                {
                    "contact": "far@acme.com",
                    "action": "cart.add",
                    "id": "c1",
                    "ts": "9999-12-30T00:00:00Z",
                }
            )
        ]
    )
    for run in range(2):
        # An event dated 9999 is refused as in the future (bad_ts) by default; this test is
        # about the timer such an event arms, so the tolerance lets it in.
        flow = FlowProcess(
            tmp_path / f"flow-{run}.log",
            redis_url,
            LEADSCORE_RULES=str(rules),
            LEADSCORE_MAX_FUTURE=str(10**12),
        )
        flow.wait_until(
            lambda: [c for c, _ in store.load_timers(far)] == ["far@acme.com"], "the timer"
        )
        # Today's code died arming that timer, here and again at the restart.
        store.send_events([hit(run)])
        flow.wait_until(lambda: total("near@acme.com") == run + 1, "the next event")  # noqa: B023
        assert flow.finish(signal.SIGTERM) == 0, flow.output()[-3000:]
    assert store.read_model("far@acme.com")["scores"]["product"] == 5.0
    assert store.read_model("far@acme.com")["tags"] == ["hot"]
