"""Realistic synthetic events for demos, tests and benchmarks (`leadscore generate`).

Real lead data is private, so we need a stand-in that stresses what a real site does: a few
very busy contacts and a long tail, bursty browsing sessions, email funnels, forms that
identify people, timestamps that arrive slightly out of order and the odd broken line.
The output is a pure function of the arguments, so a benchmark or a bug report can name its
input as "seed 7, 1M events" and everyone gets the same bytes.

How it works: "episodes" (a browsing session, an email and its opens and clicks, a CRM sync)
start at random times that follow a working-week rhythm. Each episode schedules its events
into a heap, and an event is written once no later episode can precede it, so the stream is
in time order except for a deliberate few seconds of jitter on some events.
"""

from __future__ import annotations

import gzip
import itertools
import math
import random
import sys
from bisect import bisect
from collections.abc import Iterator
from datetime import UTC, datetime
from heapq import heappop, heappush
from math import log
from pathlib import Path
from typing import IO, Any

import orjson

# A Sunday, and far enough back that the default 56 days end in the past: events dated past
# the wall clock (plus max_future) are rejected, so generated data must not be in the future.
# 2025-11-02 is 52 weeks before the 2026-11-01 used until 2026-12: same weekdays, same
# Black Friday campaign dates.
DEFAULT_START = datetime(2025, 11, 2, tzinfo=UTC).timestamp()
DEFAULT_DAYS = 56.0
SITE = "https://www.acme.com"

# Activity skew: contact of rank r gets weight (r + 4) ** -0.75, and the top 1% also browse
# longer (high intent). The top 1% of contacts then produce roughly 25-40% of events and the
# busiest one a few percent, while most contacts show up a handful of times: a long tail.
_ZIPF_S = 0.75
_ZIPF_K = 4.0
_JITTER_P = 0.03  # share of events whose timestamp is pulled back a little
_MAX_JITTER = 3.0  # seconds: the most an event may appear earlier than the one before it
_EPOCH_MS_P = 0.05  # share of timestamps sent as epoch milliseconds instead of RFC 3339
_EPOCH_MS_CUT = _JITTER_P + _EPOCH_MS_P  # draws in [_JITTER_P, this) get epoch ms
_MEAN_EVENTS_PER_EPISODE = 2.9  # measured; spreads `events` over about `days`

_TWO = tuple(f"{i:02d}" for i in range(60))
_THREE = tuple(f"{i:03d}" for i in range(1000))
_MALFORMED_KINDS = ("truncated", "array", "missing_contact", "contact_number", "bad_ts")
_BAD_TIMESTAMPS = ("yesterday", "2026-13-45T25:61:00Z", "31/11/2026 10:00", "", "soon")


def _title(slug: str) -> str:
    return slug.replace("-", " ").capitalize()


# The site, by section. Sections drive both rules (pricing, demo, blog...) and what a visit
# can lead to (a form, a download, a checkout).
_SECTIONS: dict[str, list[tuple[str, str]]] = {
    "home": [("/", "Acme Analytics: revenue intelligence for B2B teams")],
    "blog": [
        (f"/blog/{slug}", _title(slug))
        for slug in (
            "lead-scoring-101",
            "fit-vs-engagement",
            "mql-is-dead-long-live-the-mql",
            "b2b-attribution-models",
            "sales-and-marketing-alignment",
            "intent-data-explained",
            "why-scores-should-decay",
            "abm-playbook-2026",
            "webinar-recap-pipeline-reviews",
            "how-we-built-our-stream-processor",
            "nurture-emails-that-work",
            "pricing-page-teardown",
            "churn-signals-to-watch",
            "crm-data-quality-checklist",
            "gdpr-consent-for-marketers",
        )
    ],
    "docs": [
        ("/docs/getting-started", "Getting started"),
        ("/docs/quickstart", "Quickstart"),
        ("/docs/api/events", "API: events"),
        ("/docs/api/contacts", "API: contacts"),
        ("/docs/integrations/salesforce", "Salesforce integration"),
        ("/docs/integrations/hubspot", "HubSpot integration"),
        ("/docs/rules/actions", "Rules: point actions"),
        ("/docs/rules/triggers", "Rules: triggers"),
        ("/docs/self-hosting", "Self-hosting"),
        ("/docs/security", "Security and compliance"),
    ],
    "pricing": [
        ("/pricing", "Pricing"),
        ("/pricing", "Pricing"),
        ("/pricing/enterprise", "Enterprise plan"),
        ("/pricing?billing=annual", "Pricing"),
    ],
    "demo": [("/demo", "Book a demo")],
    "customers": [
        ("/customers", "Customers"),
        ("/customers/northwind", "How Northwind doubled pipeline"),
        ("/customers/globex", "Globex cut lead response time to minutes"),
        ("/customers/umbrella-health", "Umbrella Health scores 2M leads a day"),
    ],
    "careers": [
        ("/careers", "Careers"),
        ("/careers/senior-data-engineer", "Senior data engineer"),
        ("/careers/account-executive-emea", "Account executive, EMEA"),
        ("/careers/marketing-intern", "Marketing intern"),
    ],
    "product": [
        ("/product", "Product tour"),
        ("/product/scoring", "Real-time lead scoring"),
        ("/integrations", "Integrations"),
    ],
    "webinars": [
        ("/webinars/scoring-in-real-time", "Webinar: scoring in real time"),
        ("/webinars/attribution-masterclass", "Webinar: attribution masterclass"),
    ],
    "contact": [("/contact", "Talk to us")],
    "about": [("/about", "About Acme")],
}

# The highest chance, per section, that a page view leads somewhere (see `_convert`). Most
# views convert to nothing, so the session loop only calls `_convert` below this threshold.
_CONVERT_P = {"demo": 0.6, "blog": 0.065, "customers": 0.07, "webinars": 0.25,
              "contact": 0.3, "pricing": 0.1, "product": 0.08}  # fmt: skip

# Section weights for low, medium and high intent visitors: intent moves traffic from the
# blog and careers towards docs, pricing and the demo page.
_SECTION_WEIGHTS: tuple[dict[str, float], ...] = (
    {"home": 14, "blog": 36, "docs": 9, "pricing": 5, "demo": 1.5, "customers": 5,
     "careers": 6, "product": 12, "webinars": 3, "contact": 1.5, "about": 4},
    {"home": 10, "blog": 24, "docs": 16, "pricing": 12, "demo": 4, "customers": 9,
     "careers": 2, "product": 14, "webinars": 4, "contact": 2.5, "about": 2},
    {"home": 6, "blog": 12, "docs": 20, "pricing": 20, "demo": 9, "customers": 12,
     "careers": 1, "product": 12, "webinars": 4, "contact": 3, "about": 1},
)  # fmt: skip

_Page = tuple[str, str, str, float]  # url, title, section, conversion threshold
_PAGE_BY_PATH: dict[str, _Page] = {
    path: (SITE + path, title, section, _CONVERT_P.get(section, 0.0))
    for section, entries in _SECTIONS.items()
    for path, title in entries
}


def _page_table(weights: dict[str, float]) -> tuple[list[_Page], list[float], float]:
    pages: list[_Page] = []
    cum: list[float] = []
    total = 0.0
    for section, entries in _SECTIONS.items():
        for path, _ in entries:
            total += weights[section] / len(entries)
            pages.append(_PAGE_BY_PATH[path])
            cum.append(total)
    return pages, cum, total


_PAGE_TABLES = tuple(_page_table(w) for w in _SECTION_WEIGHTS)

_REFERRERS: tuple[tuple[str, float], ...] = (
    ("https://www.google.com/", 34),
    ("", 26),
    ("https://www.linkedin.com/", 12),
    ("https://www.bing.com/", 4),
    ("https://x.com/", 4),
    ("https://www.g2.com/products/acme-analytics", 5),
    ("https://news.ycombinator.com/", 2),
    ("https://www.reddit.com/r/marketing/", 2),
    ("https://partner.example.org/blog/best-scoring-tools", 3),
)
_REF_URLS = [r for r, _ in _REFERRERS]
_REF_CUM = list(itertools.accumulate(w for _, w in _REFERRERS))
_REF_TOTAL = _REF_CUM[-1]

_ASSETS_GATED = (
    "whitepaper-state-of-b2b-attribution-2026",
    "whitepaper-real-time-scoring-architecture",
    "ebook-lead-scoring-101",
    "ebook-mql-to-sql-handoff",
)
_PLANS = (("team", 49.0), ("business", 199.0), ("scale", 799.0))
_VIDEOS = (
    "product-tour-2026",
    "product-tour-2026",
    "customer-story-northwind",
    "rules-in-5-minutes",
)

# fmt: off
_FIRST = (
    "ana", "ben", "carla", "david", "elena", "farid", "grace", "hugo", "ines", "jonas", "kate",
    "luis", "maria", "nils", "olga", "pablo", "quinn", "rosa", "sam", "tara", "umar", "vera",
    "will", "xavi", "yara", "zoe", "marc", "laia", "pierre", "lena",
)
_LAST = (
    "garcia", "martin", "smith", "muller", "rossi", "dubois", "jansen", "silva", "novak",
    "kowalski", "ferrer", "puig", "schmidt", "brown", "lopez", "moreau", "bianchi", "costa",
    "lindqvist", "oconnor", "nakamura", "patel", "kim", "haddad", "vidal",
)
_TITLES: tuple[tuple[str, float], ...] = (
    ("CEO", 2), ("CTO", 3), ("CMO", 2), ("Founder", 3), ("VP Sales", 4), ("VP Marketing", 4),
    ("Vice President, Revenue Operations", 1), ("Head of Growth", 4),
    ("Director of Demand Generation", 4), ("Marketing Manager", 12), ("Sales Manager", 6),
    ("Marketing Operations Manager", 6), ("Account Executive", 6),
    ("Sales Development Representative", 6), ("Software Engineer", 10), ("Data Analyst", 8),
    ("Consultant", 5), ("Student", 8), ("Marketing Intern", 3),
)  # fmt: skip
_TITLE_NAMES = [t for t, _ in _TITLES]
_TITLE_CUM = list(itertools.accumulate(w for _, w in _TITLES))
_INDUSTRIES = (
    "Software",
    "Financial Services",
    "Healthcare",
    "Manufacturing",
    "Retail",
    "Media",
    "Logistics",
    "Telecommunications",
    "Professional Services",
    "Government",
)
_COUNTRIES: tuple[tuple[str, str, float], ...] = (
    ("US", "+1", 24), ("GB", "+44", 10), ("DE", "+49", 10), ("ES", "+34", 10), ("FR", "+33", 9),
    ("NL", "+31", 5), ("IT", "+39", 5), ("SE", "+46", 3), ("IE", "+353", 3), ("PT", "+351", 3),
    ("CA", "+1", 5), ("BR", "+55", 4), ("MX", "+52", 3), ("IN", "+91", 6),
)  # fmt: skip
_COUNTRY_CUM = list(itertools.accumulate(w for _, _, w in _COUNTRIES))
_CO_A = (
    "North", "Blue", "Iron", "Bright", "Silver", "Green", "Red", "Nova", "Peak", "True",
    "Clear", "Swift", "Stone", "Sun", "Oak",
)
_CO_B = (
    "wind", "field", "bridge", "path", "stack", "wave", "point", "line", "works", "hub",
    "labs", "forge", "gate", "river",
)
# fmt: on
_CO_SUFFIX = ("", " Inc", " GmbH", " S.L.", " Ltd", " SAS", " Group", " Systems")
_UNIVERSITIES = ("Universitat de Barcelona", "TU Munich", "University of Leeds", "Sciences Po")
_FREE_MAIL = ("gmail.com", "outlook.com", "yahoo.com", "proton.me")

# Hourly activity (UTC) for a weekday; weekends run at 35%. Shapes when episodes start.
_HOURLY = (0.15, 0.12, 0.12, 0.12, 0.15, 0.2, 0.3, 0.6, 0.9, 1.0, 1.0, 1.0,
           1.0, 1.0, 1.0, 1.0, 1.0, 0.95, 0.8, 0.7, 0.55, 0.45, 0.3, 0.2)  # fmt: skip
_HOUR_OF_WEEK = tuple(
    _HOURLY[h % 24] * (0.35 if h // 24 in (2, 3) else 1.0) for h in range(168)
)  # index 0 = Thursday 00:00 UTC, the weekday of the Unix epoch
_WEEK_CUM = list(itertools.accumulate(w * 3600.0 for w in _HOUR_OF_WEEK))  # activity seconds
_WEEK_ACTIVITY = _WEEK_CUM[-1]


class _Contact:
    """What the generator remembers about one contact, created on first activity."""

    __slots__ = (
        "cid",
        "episodes",
        "identified",
        "intent",
        "tier",
        "traits",
        "unsubscribed",
        "window",
        "won",
    )

    def __init__(self, cid: str, intent: float, window: tuple[float, float, float, float]) -> None:
        self.cid = cid
        self.intent = intent
        self.tier = 0 if intent < 0.3 else (1 if intent < 0.6 else 2)
        self.window = window  # two active periods (lo1, hi1, lo2, hi2)
        self.traits: dict[str, Any] | None = None
        self.identified = False
        self.unsubscribed = False
        self.episodes = 0  # counted only when conversions are on
        self.won = False  # closed a deal (conversions on): no second one


# Heap entries: (time, sequence, contact, action, props, traits). The unique sequence number
# keeps heap comparisons away from the dicts and makes ties deterministic.
_Item = tuple[float, int, _Contact, str, dict[str, Any], dict[str, Any] | None]


class _Generator:
    """One deterministic run; all randomness comes from ``self.rng``.

    The per-event paths (`_browse`, `lines`) bind hot names to locals and inline the
    exponential draws: at a million events, every attribute lookup shows up in the run time.
    """

    def __init__(
        self,
        contacts: int,
        events: int,
        seed: int,
        start: float,
        days: float,
        conversions: float = 0.0,
    ) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.conversions = conversions
        self.n_contacts = contacts
        self.events = events
        self.start = start
        self.span = days * 86400.0
        self.prob, self.alias = _alias_table([(r + _ZIPF_K) ** -_ZIPF_S for r in range(contacts)])
        # An affine permutation spreads busy ranks over the id space without a big shuffle.
        step = self.rng.randrange(1, max(contacts, 2))
        while math.gcd(step, contacts) != 1:
            step += 1
        self.step = step
        self.offset = self.rng.randrange(contacts)
        self.people: list[_Contact | None] = [None] * contacts
        self.companies = [self._company() for _ in range(max(8, min(400, contacts // 20)))]
        self.heap: list[_Item] = []
        self.next_seq = itertools.count().__next__
        self.day_cache: dict[int, tuple[str, list[tuple[str, _Page]]]] = {}
        # Mean gap between episode starts, in activity time, so `events` cover about `days`.
        mean_rate = _WEEK_ACTIVITY / (168 * 3600.0)
        self.mean_gap = self.span * mean_rate / max(events, 1) * _MEAN_EVENTS_PER_EPISODE
        self.u = self._activity_time(start)

    # -- people ---------------------------------------------------------------------------

    def _company(self) -> tuple[str, str, int, str, str, str]:
        rng = self.rng
        a, b = rng.choice(_CO_A), rng.choice(_CO_B)
        country, prefix, _ = _COUNTRIES[bisect(_COUNTRY_CUM, rng.random() * _COUNTRY_CUM[-1])]
        tld = {"US": "com", "GB": "co.uk", "CA": "ca", "IN": "in", "BR": "com.br"}.get(
            country, country.lower()
        )
        size = max(2, int(rng.lognormvariate(4.6, 1.6)))
        name = a + b + rng.choice(_CO_SUFFIX)
        return name, f"{(a + b).lower()}.{tld}", size, rng.choice(_INDUSTRIES), country, prefix

    def _contact(self, rank: int) -> _Contact:
        rng = self.rng
        cid = f"c-{(rank * self.step + self.offset) % self.n_contacts:06d}"
        top = rank < max(1, self.n_contacts // 100)
        intent = 0.5 + 0.5 * rng.random() if top else rng.random() ** 3
        kind = rng.random()
        inf = math.inf
        if kind < 0.5:  # around the whole time
            window = (-inf, inf, inf, -inf)
        elif kind < 0.6:  # early interest, a month or more of silence, then back
            window = (-inf, self.start + self.span * 0.2, self.start + self.span * 0.8, inf)
        else:  # one burst of interest somewhere in the period, then gone cold
            length = self.span * (0.08 + 0.45 * rng.random())
            lo = self.start + rng.random() * (self.span - length)
            window = (lo, lo + length, inf, -inf)
        return _Contact(cid, intent, window)

    def _traits(self) -> dict[str, Any]:
        rng = self.rng
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        title = _TITLE_NAMES[bisect(_TITLE_CUM, rng.random() * _TITLE_CUM[-1])]
        name, domain, size, industry, country, prefix = rng.choice(self.companies)
        if title == "Student":
            name, size, industry = (
                rng.choice(_UNIVERSITIES),
                20000 + rng.randrange(30000),
                "Education",
            )
        if title == "Student" or rng.random() < 0.2:
            domain = rng.choice(_FREE_MAIL)
        number = rng.randrange(100) if rng.random() < 0.3 else ""
        traits: dict[str, Any] = {
            "email": f"{first}.{last}{number}@{domain}",
            "first_name": first.capitalize(),
            "last_name": last.capitalize(),
            "title": title,
            "company": {"name": name, "size": size},
            "industry": industry,
            "country": country,
        }
        if rng.random() < 0.4:
            traits["phone"] = f"{prefix} {rng.randrange(100, 1000)} {rng.randrange(10**5, 10**6)}"
        return traits

    # -- scheduling -----------------------------------------------------------------------

    def _push(
        self,
        t: float,
        who: _Contact,
        action: str,
        props: dict[str, Any],
        traits: dict[str, Any] | None = None,
    ) -> None:
        heappush(self.heap, (t, self.next_seq(), who, action, props, traits))

    def _next_start(self) -> float:
        """Next episode start: a Poisson process in "activity time", mapped onto the clock.

        Activity time runs at the hour-of-week rate, so a uniform stream of episodes in it
        becomes busy weekday afternoons and quiet weekend nights on the wall clock.
        """
        self.u -= log(1.0 - self.rng.random()) * self.mean_gap
        week, rest = divmod(self.u, _WEEK_ACTIVITY)
        hour = bisect(_WEEK_CUM, rest)
        before = _WEEK_CUM[hour - 1] if hour else 0.0
        return (week * 168 + hour) * 3600.0 + (rest - before) / _HOUR_OF_WEEK[hour]

    def _activity_time(self, t: float) -> float:
        """The inverse of the mapping in `_next_start`: activity seconds up to epoch ``t``."""
        week, rest = divmod(t, 168 * 3600.0)
        hour = int(rest // 3600.0)
        before = _WEEK_CUM[hour - 1] if hour else 0.0
        return week * _WEEK_ACTIVITY + before + (rest - hour * 3600.0) * _HOUR_OF_WEEK[hour]

    def _day(self, t: float) -> tuple[str, list[tuple[str, _Page]]]:
        """The RFC 3339 date and the email campaigns running on the UTC day of ``t``."""
        day = int(t // 86400.0)
        cached = self.day_cache.get(day)
        if cached is None:
            d = datetime.fromtimestamp(day * 86400, UTC)
            month = f"{d.year}-{d.month:02d}"
            page = _PAGE_BY_PATH
            campaigns: list[tuple[str, _Page]] = [
                (f"newsletter-{month}", page["/blog/why-scores-should-decay"]),
                (f"newsletter-{month}", page["/blog/lead-scoring-101"]),
                ("webinar-invite-real-time-scoring", page["/webinars/scoring-in-real-time"]),
                (f"product-update-{month}", page["/product/scoring"]),
                ("case-study-northwind", page["/customers/northwind"]),
                ("nurture-day-3", page["/docs/getting-started"]),
                ("nurture-day-7", page["/demo"]),
                ("nurture-day-14", page["/pricing"]),
            ]
            if (d.month == 11 and d.day >= 20) or (d.month == 12 and d.day <= 2):
                campaigns += [(f"black-friday-{d.year}", page["/pricing"])] * 3
            cached = self.day_cache[day] = (d.strftime("%Y-%m-%d"), campaigns)
        return cached

    # -- episodes -------------------------------------------------------------------------

    def episode(self, t: float) -> None:
        """Schedule everything one contact does starting at ``t``.

        The contact is drawn by activity weight, preferring one whose active period covers
        ``t`` (a few redraws, then whoever came up).
        """
        rng = self.rng
        rnd, people, n = rng.random, self.people, self.n_contacts
        prob, alias = self.prob, self.alias
        for _ in range(4):
            x = rnd() * n
            rank = int(x)
            if x - rank >= prob[rank]:
                rank = alias[rank]
            who = people[rank]
            if who is None:
                who = people[rank] = self._contact(rank)
            lo1, hi1, lo2, hi2 = who.window
            if lo1 <= t <= hi1 or lo2 <= t <= hi2:
                break
        r = rnd()
        if r < 0.60 or (r < 0.90 and who.unsubscribed):
            self._browse(t, who, None, None)
        elif r < 0.90:
            self._email(t, who)
        elif r < 0.94:
            self._sync(t, who)
        elif r < 0.98:
            self._video(t, who, None)
        else:
            self._webinar(t + 60.0, who, rng.choice(_SECTIONS["webinars"])[0].rsplit("/", 1)[1])
        if self.conversions and not who.won:
            self._sales_cycle(t, who)

    def _sales_cycle(self, t: float, who: _Contact) -> None:
        """With conversions on: a deal that closes some weeks after enough engagement.

        Each episode is a chance to close, rising with intent and with how often the contact
        has engaged (saturating at 10 episodes), so a score that tracks engagement predicts
        who buys. Off (0) by default: no draws are made and existing seeds keep their bytes.
        """
        rng = self.rng
        who.episodes += 1
        if rng.random() < self.conversions * who.intent * min(1.0, who.episodes / 10.0):
            who.won = True
            plan, price = rng.choice(_PLANS)
            seats = 1 + int(rng.expovariate(1 / 6))
            props = {
                "plan": plan,
                "seats": seats,
                "amount": round(price * seats, 2),
                "currency": "USD",
                "order": f"o-{self.seed}-{self.next_seq()}",
                "source": "sales",
            }
            self._push(t + 86400.0 * (3.0 + 27.0 * rng.random()), who, "purchase", props)

    def _browse(
        self, t: float, who: _Contact, landing: _Page | None, utm: dict[str, str] | None
    ) -> None:
        """A session: a burst of page views and whatever those pages lead to."""
        rnd, heap, next_seq = self.rng.random, self.heap, self.next_seq
        pages, cum, total = _PAGE_TABLES[who.tier]
        n = min(30, 1 + int(-log(1.0 - rnd()) * (1.0 + 4.0 * who.intent)))
        if landing is None:
            landing = pages[bisect(cum, rnd() * total)]
            referrer = _REF_URLS[bisect(_REF_CUM, rnd() * _REF_TOTAL)]
            if referrer.startswith("https://www.linkedin") and rnd() < 0.5:
                utm = {"source": "linkedin", "medium": "paid", "campaign": "q4-abm"}
            elif referrer.startswith("https://www.google") and rnd() < 0.2:
                utm = {"source": "google", "medium": "cpc", "campaign": "brand"}
        else:
            referrer = ""  # arrivals from email clients carry no referrer
        url, title, section, convert = landing
        props: dict[str, Any] = {"url": url, "title": title, "referrer": referrer}
        if utm is not None:
            props["url"] = f"{url}?utm_source={utm['source']}&utm_medium={utm['medium']}"
            props["utm"] = utm
        while True:
            heappush(heap, (t, next_seq(), who, "page.hit", props, None))
            r = rnd()
            if r < convert:
                t = self._convert(t, who, url, section, r)
            n -= 1
            if not n:
                return
            t += 4.0 - log(1.0 - rnd()) * 50.0
            referrer = url
            url, title, section, convert = pages[bisect(cum, rnd() * total)]
            props = {"url": url, "title": title, "referrer": referrer}

    def _convert(self, t: float, who: _Contact, url: str, section: str, r: float) -> float:
        """What a page view leads to, given a uniform draw ``r``; returns when the visitor
        moves on."""
        rng = self.rng
        intent = who.intent
        if section == "demo":
            if r < 0.15 + 0.45 * intent:
                t = self._form(t + 30.0 + rng.random() * 90.0, who, "demo-request", url)
        elif section == "blog":
            if r < 0.03:
                t = self._form(t + 20.0 + rng.random() * 60.0, who, "newsletter", url)
            else:
                t += 15.0 + rng.random() * 60.0
                asset = rng.choice(_ASSETS_GATED)
                self._push(t, who, "asset.download", {"asset": asset, "url": _asset_url(asset)})
                if not who.identified:  # gated content: the download form identifies them
                    t = self._identify(t + 1.0, who)
        elif section == "customers":
            if url != f"{SITE}/customers":
                t += 20.0 + rng.random() * 40.0
                asset = "case-study-" + url.rsplit("/", 1)[1]
                self._push(t, who, "asset.download", {"asset": asset, "url": _asset_url(asset)})
        elif section == "webinars":
            t = self._form(t + 30.0 + rng.random() * 60.0, who, "webinar", url)
            if rng.random() < 0.6:  # registered people often show up some days later
                self._webinar(t + 86400.0 * (1 + rng.random() * 9), who, url.rsplit("/", 1)[1])
        elif section == "contact":
            t = self._form(t + 40.0 + rng.random() * 120.0, who, "contact", url)
        elif section == "pricing":
            if r < 0.02 + 0.08 * intent * intent:
                t = self._checkout(t + 20.0 + rng.random() * 40.0, who)
        elif section == "product":
            t = self._video(t + 5.0, who, url)
        return t

    def _form(self, t: float, who: _Contact, form: str, url: str) -> float:
        self._push(t, who, "form.submit", {"form": form, "url": url})
        if not who.identified or self.rng.random() < 0.3:
            t = self._identify(t + 0.5 + self.rng.random() * 2.5, who)
        return t

    def _identify(self, t: float, who: _Contact) -> float:
        if who.traits is None:
            who.traits = self._traits()
        who.identified = True
        self._push(t, who, "identify", {}, who.traits)
        return t

    def _sync(self, t: float, who: _Contact) -> None:
        """A CRM sync or a login: re-sends what we know, sometimes with a new phone number."""
        traits = who.traits
        if traits is not None and "phone" not in traits and self.rng.random() < 0.2:
            prefix = next(p for c, p, _ in _COUNTRIES if c == traits["country"])
            phone = f"{prefix} 555 {self.rng.randrange(10**5, 10**6)}"
            who.traits = {**traits, "phone": phone}  # a new dict: queued events keep the old
        self._identify(t, who)

    def _checkout(self, t: float, who: _Contact) -> float:
        rng = self.rng
        plan, price = rng.choice(_PLANS)
        seats = 1 + int(rng.expovariate(1 / 6))
        currency = "EUR" if rng.random() < 0.45 else "USD"
        cart = {
            "plan": plan,
            "seats": seats,
            "amount": round(price * seats, 2),
            "currency": currency,
        }
        self._push(t, who, "cart.add", cart)
        r = rng.random()
        if r < 0.35:
            t += 60.0 + rng.random() * 600.0
            self._push(t, who, "purchase", {**cart, "order": f"o-{self.seed}-{self.next_seq()}"})
            if not who.identified:
                t = self._identify(t + 1.0, who)
        elif r < 0.85:
            self._push(t + 3600.0, who, "cart.abandon", cart)
        return t

    def _video(self, t: float, who: _Contact, url: str | None) -> float:
        rng = self.rng
        seconds = int(rng.expovariate(1 / 90)) + 1
        props = {"video": rng.choice(_VIDEOS), "url": url or f"{SITE}/product", "seconds": seconds}
        self._push(t, who, "video.play", props)
        return t + seconds

    def _webinar(self, t: float, who: _Contact, slug: str) -> None:
        minutes = 1 + int(self.rng.random() * 60)
        props = {"webinar": slug, "minutes": minutes, "completed": minutes >= 45}
        self._push(t, who, "webinar.attend", props)

    def _email(self, t: float, who: _Contact) -> None:
        """A campaign email and what the contact does with it over the next hours."""
        rng = self.rng
        campaign, landing = rng.choice(self._day(t)[1])
        props = {"campaign": campaign}
        self._push(t, who, "email.send", props)
        if rng.random() < 0.012:
            self._push(t + 2.0 + rng.random() * 30.0, who, "email.bounce", props)
            return
        intent = who.intent
        if rng.random() >= 0.25 + 0.35 * intent:
            return
        t += 60.0 + rng.expovariate(1.0 / 10800.0)
        self._push(t, who, "email.open", props)
        if rng.random() < 0.25:  # opened again later, e.g. on another device
            self._push(t + rng.expovariate(1.0 / 86400.0), who, "email.open", props)
        if rng.random() < 0.015:
            self._push(t + 20.0 + rng.random() * 180.0, who, "email.unsubscribe", props)
            who.unsubscribed = True
            return
        if rng.random() < 0.2 + 0.35 * intent:
            t += 5.0 + rng.expovariate(1.0 / 40.0)
            url = f"{landing[0]}?utm_source=email&utm_campaign={campaign}"
            self._push(t, who, "email.click", {"campaign": campaign, "url": url})
            utm = {"source": "email", "medium": "email", "campaign": campaign}
            self._browse(t + 1.0 + rng.random() * 2.0, who, landing, utm)

    # -- output ---------------------------------------------------------------------------

    def lines(self, malformed_rate: float) -> Iterator[bytes]:
        """The event lines in emission order; see :func:`generate_events`."""
        events = self.events
        # Malformed positions come from their own generator, so the rate does not change
        # which valid events are produced, only which of them get broken.
        bad_rng = random.Random(f"leadscore-malformed-{self.seed}")
        bad_at = sorted(bad_rng.sample(range(events), round(events * malformed_rate)))
        bad_at.append(events)  # sentinel
        next_bad, bad_i = bad_at[0], 0
        rnd, heap, dumps, pop = self.rng.random, self.heap, orjson.dumps, heappop
        next_start, episode, day_of = self._next_start, self.episode, self._day
        prefix = f"e-{self.seed}-"
        minute, minute_text = -1, ""
        n = 0
        while n < events:
            t = next_start()
            while heap and heap[0][0] <= t:
                at, _, who, action, props, traits = pop(heap)
                r = rnd()
                if r < _JITTER_P:  # a late-arriving clock: up to _MAX_JITTER seconds early
                    at -= r * (_MAX_JITTER / _JITTER_P)
                ms = int(at * 1000.0)
                if r >= _EPOCH_MS_CUT:
                    m, rest = divmod(ms, 60000)
                    if m != minute:  # events are dense in time: format each minute once
                        minute = m
                        hm = m % 1440
                        minute_text = f"{day_of(m * 60.0)[0]}T{_TWO[hm // 60]}:{_TWO[hm % 60]}:"
                    ts: str | int = f"{minute_text}{_TWO[rest // 1000]}.{_THREE[rest % 1000]}Z"
                else:
                    ts = ms
                obj: dict[str, Any] = {
                    "contact": who.cid,
                    "action": action,
                    "ts": ts,
                    "id": f"{prefix}{n}",
                    "props": props,
                }
                if traits is not None:
                    obj["traits"] = traits
                if n == next_bad:
                    yield _malform(obj, bad_i, bad_rng)
                    bad_i += 1
                    next_bad = bad_at[bad_i]
                else:
                    yield dumps(obj)
                n += 1
                if n == events:
                    return
            episode(t)


def _alias_table(weights: list[float]) -> tuple[list[float], list[int]]:
    """Walker's alias method (Vose's variant): draw a weighted index in O(1).

    A bisect over a million cumulative weights costs more than the rest of an episode.
    Index ``i`` is kept with probability ``prob[i]``, otherwise replaced by ``alias[i]``.
    """
    n = len(weights)
    scale = n / math.fsum(weights)
    scaled = [w * scale for w in weights]
    prob = [1.0] * n
    alias = list(range(n))
    small = [i for i, w in enumerate(scaled) if w < 1.0]
    large = [i for i, w in enumerate(scaled) if w >= 1.0]
    while small and large:
        lo, hi = small.pop(), large[-1]
        prob[lo], alias[lo] = scaled[lo], hi
        scaled[hi] -= 1.0 - scaled[lo]
        if scaled[hi] < 1.0:
            small.append(large.pop())
    return prob, alias  # leftovers keep prob 1.0: rounding error, not weight


def _asset_url(asset: str) -> str:
    return f"{SITE}/assets/{asset}.pdf"


def _malform(obj: dict[str, Any], i: int, rng: random.Random) -> bytes:
    """Break an event in the i-th way of :data:`_MALFORMED_KINDS` (cycled)."""
    kind = _MALFORMED_KINDS[i % len(_MALFORMED_KINDS)]
    if kind == "truncated":  # a proper prefix of a JSON object is never valid JSON
        line = orjson.dumps(obj)
        return line[: max(1, len(line) // 2)]
    if kind == "array":
        return orjson.dumps([obj])
    obj = dict(obj)
    if kind == "missing_contact":
        del obj["contact"]
    elif kind == "contact_number":
        obj["contact"] = int(obj["contact"].rsplit("-", 1)[1])
    else:
        obj["ts"] = rng.choice(_BAD_TIMESTAMPS)
    return orjson.dumps(obj)


def generate_events(
    contacts: int,
    events: int,
    seed: int = 0,
    start: float | None = None,
    malformed_rate: float = 0.001,
    *,
    days: float = DEFAULT_DAYS,
    conversions: float = 0.0,
) -> Iterator[bytes]:
    """Yield exactly ``events`` JSONL lines (bytes, no newline) for ``contacts`` contacts.

    Deterministic for given arguments. ``start`` is the epoch time of the first activity
    (default 2025-11-02T00:00:00Z) and ``days`` roughly how long the stream covers.
    ``round(events * malformed_rate)`` lines are malformed on purpose (truncated JSON, an
    array, no contact, a numeric contact, a bad timestamp, in turn) to exercise dead letters.
    ``conversions`` (0 to 1) adds deals closed by sales: ``purchase`` events some weeks after
    engagement, likelier the more engaged the contact (see ``_sales_cycle``); 0 adds none.
    """
    if contacts < 1:
        raise ValueError(f"contacts must be at least 1, got {contacts}")
    if events < 0:
        raise ValueError(f"events must not be negative, got {events}")
    if not 0.0 <= malformed_rate <= 1.0:
        raise ValueError(f"malformed_rate must be between 0 and 1, got {malformed_rate}")
    if not days > 0:
        raise ValueError(f"days must be positive, got {days}")
    if not 0.0 <= conversions <= 1.0:
        raise ValueError(f"conversions must be between 0 and 1, got {conversions}")
    start_ts = DEFAULT_START if start is None else float(start)
    gen = _Generator(contacts, events, seed, start_ts, days, conversions)
    return gen.lines(malformed_rate)


def write_events(
    path_or_stdout: str | Path | IO[bytes] | None,
    contacts: int,
    events: int,
    seed: int = 0,
    start: float | None = None,
    malformed_rate: float = 0.001,
    *,
    days: float = DEFAULT_DAYS,
    conversions: float = 0.0,
) -> int:
    """Write the lines of :func:`generate_events` to a file, stream or stdout; return the count.

    ``None`` or ``"-"`` means stdout; a path ending in ``.gz`` is gzip-compressed. Lines are
    joined in blocks because one write call per line would dominate the run time.
    """
    lines = generate_events(
        contacts, events, seed, start, malformed_rate, days=days, conversions=conversions
    )
    if path_or_stdout is None or path_or_stdout == "-":
        out = sys.stdout.buffer
        count = _write_lines(out, lines)
        out.flush()
        return count
    if isinstance(path_or_stdout, str | Path):
        path = Path(path_or_stdout)
        if path.suffix == ".gz":
            with gzip.open(path, "wb", compresslevel=6) as gz:
                return _write_lines(gz, lines)
        with path.open("wb") as fh:
            return _write_lines(fh, lines)
    return _write_lines(path_or_stdout, lines)


def _write_lines(out: IO[bytes], lines: Iterator[bytes], block: int = 4096) -> int:
    count = 0
    for chunk in iter(lambda: list(itertools.islice(lines, block)), []):
        out.write(b"\n".join(chunk) + b"\n")
        count += len(chunk)
    return count
