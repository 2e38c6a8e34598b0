"""`channels:` in the rules file, the URL policy, and the pure parts of a delivery."""

from __future__ import annotations

import random

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from leadscore.channels import delivery_issues, is_loopback, transport_problem
from leadscore.delivery import (
    DONE,
    FINAL,
    RETRY,
    RetryPolicy,
    Target,
    classify,
    fired_at,
    render_body,
    retry_after,
    sign,
    verify,
)
from leadscore.rules import RulesError, load_rules_text

BASE = """
version: 1
channels:
  sales: {webhook: "https://crm.example.com/h", secret_env: SALES_SECRET}
  hot: {webhook_env: HOT_URL, format: slack}
triggers:
  - id: mql
    at_least: 10
    actions: [{notify: sales}, {notify: hot}, {webhook: "https://x.example.com/y"}]
"""


def problems(text: str) -> list[str]:
    with pytest.raises(RulesError) as err:
        load_rules_text(text, "r.yaml")
    return [str(p) for p in err.value.problems]


def test_channels_load_and_name_their_settings() -> None:
    rules = load_rules_text(BASE, "r.yaml")
    assert rules.channels["sales"].webhook == "https://crm.example.com/h"
    assert rules.channels["sales"].secret_env == "SALES_SECRET"
    assert rules.channels["hot"].webhook_env == "HOT_URL"
    assert rules.channels["hot"].format == "slack"


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ("{notify: hot}", "{notify: hott}", "actions[1].notify': unknown channel 'hott'"),
        (
            "secret_env: SALES_SECRET}",
            "secret: hunter2}",
            "secrets are never written in the rules file",
        ),
        ("https://crm.example.com/h", "ftp://crm.example.com/h", "expected an https:// URL"),
        ("https://crm.example.com/h", "https://u:p@crm.example.com/h", "carries credentials"),
        ("https://x.example.com/y", "not a url", "actions[2].webhook'"),
        (", secret_env: SALES_SECRET", "", "'secret_env': is required for json channels"),
        ("format: slack", "format: teams", "'format': expected one of ['json', 'slack']"),
        ("webhook_env: HOT_URL", "webhook_env: 1HOT", "expected an environment variable name"),
        ("webhook_env: HOT_URL, ", "", "expected exactly one of 'webhook'"),
        ("  hot:", "  'bad name!':", "a channel name is letters"),
    ],
)
def test_channel_mistakes_name_the_channel_and_field(old: str, new: str, needle: str) -> None:
    assert old in BASE
    found = problems(BASE.replace(old, new))
    assert any(needle in p for p in found), found


def test_without_a_channels_section_notify_stays_a_label() -> None:
    rules = load_rules_text(
        "version: 1\ntriggers: [{id: t, at_least: 1, actions: [{notify: sales}]}]\n"
    )
    assert rules.channels == {}
    [issue] = delivery_issues(rules.channels, [("t", {"notify": "sales"})], {})
    assert "names no channel" in issue.message and not issue.environment


def test_delivery_issues_separate_file_problems_from_missing_variables() -> None:
    rules = load_rules_text(BASE, "r.yaml")
    actions = [("t", a) for t in rules.triggers for a in t.actions]
    issues = delivery_issues(rules.channels, actions, {})
    assert all(i.environment for i in issues)
    assert {i.message for i in issues} == {
        "webhook actions are signed with $LEADSCORE_WEBHOOK_SECRET, which is not set",
        "$SALES_SECRET is not set",
        "$HOT_URL is not set",
    }
    env = {"SALES_SECRET": "s", "HOT_URL": "http://hooks.example.com/secret-token"}
    env["LEADSCORE_WEBHOOK_SECRET"] = "w"
    [issue] = delivery_issues(rules.channels, actions, env)
    assert "secret-token" not in issue.message and "$HOT_URL" in issue.message
    env["HOT_URL"] = "https://hooks.example.com/secret-token"
    assert delivery_issues(rules.channels, actions, env) == []


@pytest.mark.parametrize(
    ("url", "allowed", "ok"),
    [
        ("https://a.example.com/x", (), True),
        ("http://127.0.0.1:8080/x", (), True),
        ("http://127.9.9.9/x", (), True),
        ("http://[::1]:9/x", (), True),
        ("http://localhost/x", (), True),
        ("http://crm.internal/x", (), False),
        ("http://crm.internal/x", ("crm.internal",), True),
        ("http://10.0.0.1/x", (), False),
        ("https://a.example.com:99999/x", (), False),
    ],
)
def test_plain_http_only_to_loopback_or_allowed_hosts(
    url: str, allowed: tuple[str, ...], ok: bool
) -> None:
    assert (transport_problem(url, allowed) is None) == ok


def test_loopback_names() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("LOCALHOST") and is_loopback("[::1]")
    assert not is_loopback("example.com") and not is_loopback("10.1.1.1")


@given(st.binary(max_size=200), st.binary(min_size=1, max_size=40), st.integers(0, 2**40))
def test_a_signature_verifies_only_for_its_body_secret_and_time(
    body: bytes, secret: bytes, t: int
) -> None:
    header = sign(secret, body, t)
    assert verify(secret, header, body, now=t)
    assert verify(secret, header, body, now=t + 299)
    assert not verify(secret, header, body, now=t + 301)
    assert not verify(secret + b"x", header, body, now=t)
    assert not verify(secret, header, body + b"x", now=t)
    assert not verify(secret, header.replace(f"t={t}", f"t={t + 1}"), body, now=t)


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, DONE),
        (204, DONE),
        (301, FINAL),
        (400, FINAL),
        (404, FINAL),
        (408, RETRY),
        (429, RETRY),
        (500, RETRY),
        (503, RETRY),
        (None, RETRY),
    ],
)
def test_what_a_status_means(status: int | None, verdict: str) -> None:
    assert classify(status) == verdict


def test_retry_after_takes_seconds_or_a_date() -> None:
    assert retry_after("7", 0) == 7.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == 10.0
    assert retry_after("soon", 0) is None and retry_after(None, 0) is None


def test_back_off_grows_with_jitter_and_stays_under_the_cap() -> None:
    policy = RetryPolicy(base=1.0, cap=10.0)
    rng = random.Random(3)
    for attempt, full in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (9, 10.0)]:
        delays = [policy.delay(attempt, rng) for _ in range(50)]
        assert all(full / 2 <= d <= full for d in delays)
        assert len(set(delays)) > 1


def test_the_body_is_the_record_with_its_id_and_the_slack_text_a_sentence() -> None:
    rec = {"contact": "a<b", "trigger": "mql", "score": 52.5, "at": "2026-01-01T00:00:00.000Z"}
    rec["cause"] = "form.submit e-1: demo +30"
    body = render_body(Target("sales", "https://x", b"s"), rec, "ls:1:1-0:0")
    assert orjson.loads(body) == {"id": "ls:1:1-0:0", "channel": "sales", **rec}
    slack = orjson.loads(render_body(Target("hot", "https://x", b"", "slack"), rec, "i"))
    assert slack == {
        "text": "Lead *a&lt;b* fired *mql* with a score of 52.5 at 2026-01-01T00:00:00.000Z "
        "(form.submit e-1: demo +30)."
    }


def test_a_firing_is_as_old_as_its_event_when_a_backlog_commits_it_late() -> None:
    committed = "1800000000000-0"
    assert fired_at({"at": "2026-12-01T00:00:00Z"}, committed) == 1796083200.0
    assert fired_at({"at": "2030-01-01T00:00:00Z"}, committed) == 1800000000.0
    assert fired_at({"at": "garbage"}, committed) == 1800000000.0
