"""The synthetic event generator: exact, reproducible, realistic enough to exercise the rules."""

from __future__ import annotations

import collections
import gzip
import io
import re
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leadscore.events import STANDARD_ACTIONS, Event, Reject, format_ts, parse_event
from leadscore.generate import DEFAULT_START, SITE, generate_events, write_events

NOW = DEFAULT_START  # parse_event's fallback clock; every generated event carries its own ts
MALFORMED_CODES = {"invalid_json", "not_an_object", "missing_field", "wrong_type", "bad_ts"}


def parse_all(lines: list[bytes]) -> tuple[list[Event], list[Reject]]:
    events: list[Event] = []
    rejects: list[Reject] = []
    for line in lines:
        result = parse_event(line, NOW)
        (rejects if isinstance(result, Reject) else events).append(result)
    return events, rejects


@pytest.fixture(scope="module")
def sample() -> list[bytes]:
    """One mid-sized stream shared by the property checks below."""
    return list(generate_events(contacts=2000, events=40_000, seed=7, malformed_rate=0.005))


@pytest.fixture(scope="module")
def parsed(sample: list[bytes]) -> tuple[list[Event], list[Reject]]:
    return parse_all(sample)


# --- determinism and counts -----------------------------------------------------------------


def test_same_seed_same_bytes_and_other_seed_differs() -> None:
    a = list(generate_events(300, 5000, seed=11))
    b = list(generate_events(300, 5000, seed=11))
    c = list(generate_events(300, 5000, seed=12))
    assert a == b
    assert a != c
    assert sum(x != y for x, y in zip(a, c, strict=True)) > 4000


def test_start_time_shifts_the_stream() -> None:
    later = DEFAULT_START + 30 * 86400
    first = parse_event(next(iter(generate_events(50, 5000, seed=1, start=later))), 0.0)
    assert isinstance(first, Event)
    assert later <= first.ts < later + 86400


@settings(max_examples=40, deadline=None)
@given(
    contacts=st.integers(min_value=1, max_value=400),
    events=st.integers(min_value=0, max_value=1500),
    seed=st.integers(min_value=0, max_value=2**32),
    rate=st.sampled_from([0.0, 0.001, 0.01, 0.2, 1.0]),
)
def test_any_size_gives_exactly_events_lines(
    contacts: int, events: int, seed: int, rate: float
) -> None:
    lines = list(generate_events(contacts, events, seed=seed, malformed_rate=rate))
    assert len(lines) == events
    assert all(isinstance(line, bytes) and b"\n" not in line for line in lines)
    good, bad = parse_all(lines)
    assert len(bad) == round(events * rate)
    assert len({e.contact for e in good}) <= contacts


def test_malformed_rate_only_breaks_lines_it_replaces() -> None:
    clean = list(generate_events(500, 10_000, seed=3, malformed_rate=0.0))
    dirty = list(generate_events(500, 10_000, seed=3, malformed_rate=0.01))
    assert sum(a != b for a, b in zip(clean, dirty, strict=True)) == 100


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"contacts": 0, "events": 10}, "contacts"),
        ({"contacts": 5, "events": -1}, "events"),
        ({"contacts": 5, "events": 10, "malformed_rate": 1.5}, "malformed_rate"),
        ({"contacts": 5, "events": 10, "days": 0}, "days"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_events(**kwargs)


# --- validity -----------------------------------------------------------------------------


def test_valid_lines_parse_and_use_standard_actions(
    sample: list[bytes], parsed: tuple[list[Event], list[Reject]]
) -> None:
    events, rejects = parsed
    assert len(events) + len(rejects) == len(sample) == 40_000
    assert {e.action for e in events} <= STANDARD_ACTIONS
    # the stream exercises (nearly) the whole standard vocabulary
    assert STANDARD_ACTIONS - {e.action for e in events} == set()
    assert all(re.fullmatch(r"c-\d{6}", e.contact) for e in events)
    ids = [e.id for e in events]
    assert len(set(ids)) == len(ids)
    assert all(i is not None and i.startswith("e-7-") for i in ids)


def test_malformed_lines_are_rejected_at_the_rate_and_cycle_kinds(
    parsed: tuple[list[Event], list[Reject]],
) -> None:
    _, rejects = parsed
    assert len(rejects) == round(40_000 * 0.005)
    counts = collections.Counter(r.code for r in rejects)
    assert set(counts) == MALFORMED_CODES
    assert max(counts.values()) - min(counts.values()) <= 1


def test_each_malformed_kind_is_broken_the_way_it_claims(sample: list[bytes]) -> None:
    kinds: collections.Counter[str] = collections.Counter()
    for line in sample:
        result = parse_event(line, NOW)
        if not isinstance(result, Reject):
            continue
        kinds[result.code] += 1
        if result.code == "invalid_json":  # truncated in the middle of an object
            assert line.startswith(b'{"contact":') and not line.endswith(b"}")
            continue
        obj = orjson.loads(line)
        if result.code == "not_an_object":
            assert isinstance(obj, list) and isinstance(obj[0], dict)
        elif result.code == "missing_field":
            assert "contact" not in obj and obj["action"] in STANDARD_ACTIONS
        elif result.code == "wrong_type":
            assert isinstance(obj["contact"], int)
        else:
            assert result.code == "bad_ts" and isinstance(obj["ts"], str)
    assert sum(kinds.values()) == 200


def test_timestamps_mix_rfc3339_and_epoch_milliseconds(sample: list[bytes]) -> None:
    kinds: collections.Counter[str] = collections.Counter()
    for line in sample[:5000]:
        result = parse_event(line, NOW)
        if isinstance(result, Reject):
            continue
        ts = orjson.loads(line)["ts"]
        kinds[type(ts).__name__] += 1
        if isinstance(ts, str):
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", ts)
            assert format_ts(result.ts) == ts  # same rendering as the rest of leadscore
        else:
            assert isinstance(ts, int) and ts > 1e12  # milliseconds, not seconds
    assert kinds["str"] > 10 * kinds["int"] > 0


# --- realism ------------------------------------------------------------------------------


def test_activity_is_skewed_with_a_long_tail(parsed: tuple[list[Event], list[Reject]]) -> None:
    events, _ = parsed
    per_contact = sorted(collections.Counter(e.contact for e in events).values(), reverse=True)
    top_share = sum(per_contact[:20]) / len(events)  # top 1% of 2000 contacts
    assert top_share > 0.15  # fifteen times their share of the population
    median = per_contact[len(per_contact) // 2]
    assert median < len(events) / len(per_contact) / 2  # most contacts are quiet


def test_time_mostly_increases_with_only_seconds_of_disorder(
    parsed: tuple[list[Event], list[Reject]],
) -> None:
    events, _ = parsed
    latest = events[0].ts
    backwards = 0
    worst = 0.0
    for e in events:
        if e.ts < latest:
            backwards += 1
            worst = max(worst, latest - e.ts)
        latest = max(latest, e.ts)
    assert 0 < backwards < len(events) * 0.05
    assert worst <= 3.5
    days = (max(e.ts for e in events) - min(e.ts for e in events)) / 86400
    assert 40 < days < 80  # default: about eight weeks


def test_sessions_are_bursts_of_page_hits_on_one_site(
    parsed: tuple[list[Event], list[Reject]],
) -> None:
    events, _ = parsed
    hits = [e for e in events if e.action == "page.hit"]
    assert len(hits) > len(events) / 2
    assert all(e.props["url"].startswith(SITE + "/") for e in hits)
    assert all({"url", "title", "referrer"} <= e.props.keys() for e in hits)
    paths = collections.Counter(e.props["url"][len(SITE) :].split("?")[0] for e in hits)
    for path in ("/", "/pricing", "/demo", "/customers", "/careers"):
        assert paths[path] > 0, path
    assert any(p.startswith("/blog/") for p in paths)
    assert any(p.startswith("/docs/") for p in paths)
    # within a session the referrer is the previous page of the same site
    internal = sum(e.props["referrer"].startswith(SITE) for e in hits)
    assert internal > len(hits) / 3
    assert any("utm" in e.props and e.props["utm"]["source"] for e in hits)


def test_email_funnel_forms_downloads_and_purchases(
    parsed: tuple[list[Event], list[Reject]],
) -> None:
    events, _ = parsed
    by_action = collections.defaultdict(list)
    for e in events:
        by_action[e.action].append(e)
    sends, opens, clicks = (len(by_action[a]) for a in ("email.send", "email.open", "email.click"))
    assert sends > opens > clicks > 0
    assert 0 < len(by_action["email.unsubscribe"]) < sends * 0.05
    assert all("campaign" in e.props for a in ("email.send", "email.open") for e in by_action[a])
    assert all(e.props["url"].startswith(SITE) for e in by_action["email.click"])
    forms = {e.props["form"] for e in by_action["form.submit"]}
    assert forms == {"newsletter", "demo-request", "contact", "webinar"}
    assets = {e.props["asset"].split("-")[0] for e in by_action["asset.download"]}
    assert assets == {"whitepaper", "ebook", "case"}
    assert by_action["cart.add"] and len(by_action["purchase"]) < len(by_action["cart.add"])
    for p in by_action["purchase"]:
        assert p.props["amount"] > 0 and p.props["currency"] in {"EUR", "USD"}


def test_identify_events_carry_nested_traits(parsed: tuple[list[Event], list[Reject]]) -> None:
    events, _ = parsed
    identifies = [e for e in events if e.action == "identify"]
    assert len(identifies) > 100
    phones = 0
    for e in identifies:
        t = e.traits
        assert t is not None
        assert isinstance(t["title"], str) and t["title"]
        assert isinstance(t["company"]["name"], str)
        assert isinstance(t["company"]["size"], int) and t["company"]["size"] > 0
        assert isinstance(t["industry"], str)
        assert re.fullmatch(r"[A-Z]{2}", t["country"])
        assert "@" in t["email"]
        phones += "phone" in t
    assert 0 < phones < len(identifies)
    titles = {e.traits["title"] for e in identifies if e.traits}
    assert {"Student", "Marketing Manager"} <= titles
    assert any(re.search(r"\b(VP|CTO|CEO|Head)\b", title) for title in titles)
    # the same contact keeps the same identity across identify events
    seen: dict[str, str] = {}
    for e in identifies:
        assert seen.setdefault(e.contact, e.traits["email"]) == e.traits["email"]  # type: ignore[index]


# --- writing ------------------------------------------------------------------------------


def test_write_events_plain_gzip_and_stream(tmp_path: Path) -> None:
    expected = b"".join(line + b"\n" for line in generate_events(100, 3000, seed=2))
    plain, packed = tmp_path / "events.jsonl", tmp_path / "events.jsonl.gz"
    assert write_events(plain, 100, 3000, seed=2) == 3000
    assert write_events(str(packed), 100, 3000, seed=2) == 3000
    assert plain.read_bytes() == expected
    assert packed.read_bytes()[:2] == b"\x1f\x8b"
    assert gzip.decompress(packed.read_bytes()) == expected
    buffer = io.BytesIO()
    assert write_events(buffer, 100, 3000, seed=2) == 3000
    assert buffer.getvalue() == expected


def test_write_events_to_stdout(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    assert write_events("-", 20, 50, seed=4) == 50
    out = capfdbinary.readouterr().out
    assert out == b"".join(line + b"\n" for line in generate_events(20, 50, seed=4))


def test_conversions_close_deals_likelier_for_engaged_contacts() -> None:
    """--conversions adds sales-closed purchases weeks after engagement; off, nothing changes."""
    plain = list(generate_events(contacts=800, events=30_000, seed=4))
    assert list(generate_events(contacts=800, events=30_000, seed=4, conversions=0.0)) == plain
    lines = list(generate_events(contacts=800, events=30_000, seed=4, conversions=0.2))
    assert lines == list(generate_events(contacts=800, events=30_000, seed=4, conversions=0.2))
    events, _ = parse_all(lines)
    deals = [e for e in events if e.action == "purchase" and e.props.get("source") == "sales"]
    assert len({e.contact for e in deals}) == len(deals) > 20  # at most one deal a contact
    before: collections.Counter[str] = collections.Counter()
    first_deal = {e.contact: e.ts for e in deals}
    for e in events:
        if e.ts < first_deal.get(e.contact, float("inf")):
            before[e.contact] += 1
    buyers = [before[c] for c in first_deal]
    rest = [n for c, n in before.items() if c not in first_deal]
    # Buyers did much more before their deal than the others did in the whole stream.
    assert sum(buyers) / len(buyers) > 2 * sum(rest) / len(rest)
