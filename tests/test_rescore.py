"""The rebuild of a generation (leadscore/rescore.py) against a real redis-server: bounded
memory changes nothing, a replay resumes where it stopped, trimmed history is refused."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leadscore.engine import Engine
from leadscore.rescore import Rebuilder
from leadscore.rules import load_rules
from state.codec import decode
from state.generations import PublishError, acked_upto
from state.keys import Keys
from state.redis_store import RedisStore

RULES = load_rules("examples/rules.yaml")
P = 2
ACTIONS = ["email.click", "email.open", "page.hit", "form.submit", "never.used"]

events = st.lists(
    st.tuples(
        st.integers(0, 5),  # contact
        st.sampled_from(ACTIONS),
        st.integers(0, 3 * 86400),  # seconds after the first event
        st.sampled_from(["/pricing", "/demo", "/blog/x", "/docs/a"]),
    ),
    min_size=1,
    max_size=60,
)


def lines(items: list[tuple[int, str, int, str]]) -> list[bytes]:
    t0 = 1_700_000_000
    out = []
    for contact, action, dt, url in sorted(items, key=lambda i: i[2]):
        event = {"contact": f"c-{contact}", "action": action, "ts": t0 + dt}
        if action == "page.hit":
            event["props"] = {"url": f"https://acme.com{url}"}
        if action == "form.submit":
            event["props"] = {"form": "demo-request"}
        out.append(orjson.dumps(event))
    return out


def load(url: str, items: list[tuple[int, str, int, str]], batch: int) -> Keys:
    """The events in the input streams, acknowledged as a flow that scored them would have."""
    r = redis.Redis.from_url(url)
    r.flushall()
    with RedisStore(url) as store:
        keys = store.ensure(P)
        store.send_events(lines(items), batch=batch)
        for p in range(P):
            r.xgroup_setid(keys.input(p), "leadscore", "$")
    return keys


def states(r: redis.Redis, keys: Keys) -> dict[str, bytes]:
    out = {}
    for p in range(P):
        for name in r.scan_iter(match=keys.state(p, "*")):
            out[name.decode()[len(keys.state(p, "")) :]] = r.get(name)
    return out


def placed(r: redis.Redis, keys: Keys) -> dict[tuple[int, str], bytes]:
    """Every contact state with the partition it is in."""
    return {
        (p, name.decode()[len(keys.state(p, "")) :]): r.get(name)
        for p in range(P)
        for name in r.scan_iter(match=keys.state(p, "*"))
    }


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(items=events, batch=st.integers(1, 7))
def test_bounded_memory_and_small_pages_rebuild_the_same_states(
    redis_url: str, items: list[tuple[int, str, int, str]], batch: int
) -> None:
    """One contact in memory, one entry per page (every contact evicted and read back, the
    timers fired between entries) gives exactly the states of an unbounded rebuild."""
    keys = load(redis_url, items, batch)
    r = redis.Redis.from_url(redis_url)
    engine = Engine(RULES)
    for p in range(P):
        end = acked_upto(r, keys, p)
        Rebuilder(r, keys.at(1), p, engine).replay(end)
        Rebuilder(r, keys.at(2), p, engine, max_contacts=1).replay(end, page=1)
    big, small = states(r, keys.at(1)), states(r, keys.at(2))
    assert big == small
    for p in range(P):
        # the same contacts have timers, none later than the state's next decay crossing (a
        # stored timer may be an earlier bound: it wakes, then re-arms at the exact time)
        timers = [dict(r.zrange(keys.at(g).timers(p), 0, -1, withscores=True)) for g in (1, 2)]
        assert timers[0].keys() == timers[1].keys()
        for name, due in [*timers[0].items(), *timers[1].items()]:
            exact = engine.next_due(decode(big[name.decode()]))
            assert exact is not None and due <= exact
        assert r.get(keys.at(1).clock(p)) == r.get(keys.at(2).clock(p))


def test_a_replay_resumes_where_it_stopped(redis_url: str) -> None:
    items = [(i % 10, "email.click", i * 60, "/pricing") for i in range(200)]
    keys = load(redis_url, items, 3)
    r = redis.Redis.from_url(redis_url)
    engine = Engine(RULES)
    for p in range(P):
        end = acked_upto(r, keys, p)
        Rebuilder(r, keys.at(1), p, engine).replay(end)
        # stopped after a few pages (a kill), resumed by a new Rebuilder from Redis
        first = Rebuilder(r, keys.at(2), p, engine)
        entries = r.xrange(keys.input(p), count=4)
        assert len(entries) == 4
        first.replay(entries[-1][0].decode(), page=2)
        assert r.hget(keys.at(2).upto(p), "id") == entries[-1][0]
        Rebuilder(r, keys.at(2), p, engine).replay(end)
    assert states(r, keys.at(1)) == states(r, keys.at(2))


def test_trimmed_history_is_refused(redis_url: str) -> None:
    items = [(i % 10, "email.click", i * 60, "/pricing") for i in range(100)]
    keys = load(redis_url, items, 2)
    r = redis.Redis.from_url(redis_url)
    first = r.xrange(keys.input(0), count=2)[1][0]
    assert r.xtrim(keys.input(0), minid=first, approximate=False) == 1  # the oldest is gone
    with pytest.raises(PublishError, match="trimmed"):
        Rebuilder(r, keys.at(1), 0, Engine(RULES)).replay(acked_upto(r, keys, 0))


def test_marked_differences_fire_what_a_check_of_every_contact_fires(redis_url: str) -> None:
    """The switch re-checks only the contacts marked before the hold (and those changed
    since): the same firings as checking every contact, each contact once however often the
    firing runs."""
    from leadscore.rescore import Differences
    from leadscore.rules import load_rules_text

    items = [(i % 12, "email.click", i * 60, "/pricing") for i in range(12 * 12)]
    keys = load(redis_url, items, 5)
    r = redis.Redis.from_url(redis_url)
    text = Path("examples/rules.yaml").read_text().replace("at_least: 50", "at_least: 20", 1)
    old, new = Engine(RULES), Engine(load_rules_text(text))
    for p in range(P):
        end = acked_upto(r, keys, p)
        Rebuilder(r, keys.at(1), p, old).replay(end)
        Rebuilder(r, keys.at(2), p, new).replay(end)
    differences = Differences(r, keys.at(1), keys.at(2), new, 2)

    def fired() -> list[tuple[str, str]]:
        records = [
            orjson.loads(fields[b"t"]) for p in range(P) for _, fields in r.xrange(keys.triggers(p))
        ]
        assert {t["cause"] for t in records} <= {"rules published: v2"}
        return sorted((t["contact"], t["trigger"]) for t in records)

    assert differences.fire(1.0, everyone=True) > 0
    everyone = fired()
    assert differences.fire(1.0, everyone=True) == 0  # each contact once
    for p in range(P):
        r.delete(keys.triggers(p), keys.at(2).switched(p))
    differences.mark()
    assert sum(r.scard(keys.at(2).differ(p)) for p in range(P)) == len({c for c, _ in everyone})
    differences.fire(1.0, everyone=False)
    assert fired() == everyone and len(everyone) == len(set(everyone))


def test_merges_are_replayed_as_the_live_flow_made_them(redis_url: str) -> None:
    """A live flow (in this process) merges across partitions: two visitors into c-1, c-1
    into c-4 (a chain), a refused merge, an id that never existed, events for old ids after
    their merge. Rebuilt under the same rules, with one contact in memory and one entry per
    write, or stopped part way and resumed by another process, the generation holds exactly
    the live flow's states, and no hand-over is left half done."""
    import threading
    import time

    from bytewax.testing import cluster_main

    from flows.scoring import FlowConfig, build_flow
    from leadscore.rebuild_merges import Handed, aliases_before
    from leadscore.rescore import replay_all

    r = redis.Redis.from_url(redis_url)
    r.flushall()
    keys = Keys("ls", P)
    assert keys.partition("c-1") != keys.partition("c-4") == keys.partition("v-1")
    t = time.time() - 3600

    def ev(contact: str, dt: float, action: str = "email.click", **extra: object) -> bytes:
        return orjson.dumps({"contact": contact, "action": action, "ts": t + dt, **extra})

    chain = [ev("c-4", 30, "identify", merge=["c-1"]), ev("c-9", 31, "identify", merge=["v-1"])]
    waves = [
        [ev(c, n) for n in range(6) for c in ("c-1", "v-1", "v-2", "c-4", "c-9")]
        + [ev("v-2", 10, "page.hit", props={"url": "https://acme.com/pricing"})]
        + [ev("c-1", 20, "identify", merge=["v-1", "v-2"])],
        [*chain, ev("c-9", 32, "identify", merge=["never-seen"])],
        [ev("v-1", 40), ev("c-1", 41), ev("v-2", 42, "form.submit", props={"form": "x"})],
    ]
    for wave in waves:
        with RedisStore(redis_url) as store:
            store.ensure(P)
            store.send_events(wave, batch=2)
        for _ in range(10):
            config = FlowConfig(
                rules="examples/rules.yaml", source="redis", redis_url=redis_url,
                partitions=P, tail=False, stop=threading.Event(),
            )  # fmt: skip
            cluster_main(build_flow(config), [], 0, worker_count_per_proc=1)
            if not any(r.xinfo_groups(keys.input(p))[0]["pending"] for p in range(P)) and all(
                not r.xinfo_groups(keys.input(p))[0].get("lag") for p in range(P)
            ):
                break
    assert r.hgetall(keys.aliases) == {
        b"v-1": b"c-1",
        b"v-2": b"c-1",
        b"c-1": b"c-4",
        b"never-seen": b"c-9",
    }
    live = placed(r, keys)
    assert (keys.partition("c-4"), "c-4") in live
    assert not {"v-1", "v-2", "c-1"} & {c for _, c in live}
    engine = Engine(RULES)
    ends = {p: acked_upto(r, keys, p) for p in range(P)}

    def rebuild(generation: int, ends: dict[int, str | None], **options: object) -> None:
        g = keys.at(generation)
        starts = [(v.decode() if (v := r.hget(g.upto(p), "id")) else None) for p in range(P)]
        replay_all(
            lambda p: Rebuilder(r, g, p, engine, max_contacts=1),
            ends,
            aliases=aliases_before(r, keys, starts),
            handed=Handed(r, g),
            **options,  # type: ignore[arg-type]
        )

    rebuild(1, ends, page=1, max_contacts=1, final=True)
    assert placed(r, keys.at(1)) == live
    # stopped half way through every stream (a kill), resumed with nothing in memory
    half = {p: r.xrange(keys.input(p))[r.xlen(keys.input(p)) // 2][0].decode() for p in range(P)}
    rebuild(2, half, page=3)  # type: ignore[arg-type]
    assert any(r.exists(keys.at(2).upto(p)) for p in range(P))
    rebuild(2, ends, final=True)
    assert placed(r, keys.at(2)) == live
    assert not list(r.scan_iter(match="ls:{*}:g*:h:*"))


def test_a_give_in_flight_at_the_switch_merges_the_state_the_replay_took(
    redis_url: str, tmp_path: Path
) -> None:
    """A $take acknowledged before the hold and its $give read after the switch: the replay
    took the visitor under the new rules (Keys.handed), so the live flow merges that state,
    not the one the message carries (the old rules'), and deletes it."""
    import threading
    import time

    from bytewax.testing import cluster_main

    from flows.scoring import FlowConfig, build_flow
    from leadscore.rebuild_merges import Handed, aliases_before
    from leadscore.rescore import execute, plan, replay_all
    from leadscore.rules import load_rules_text

    r = redis.Redis.from_url(redis_url)
    r.flushall()
    keys = Keys("ls", P)
    q, pv = keys.partition("c-1"), keys.partition("v-1")
    assert q != pv
    t = time.time() - 3600
    text = Path("examples/rules.yaml").read_text()
    assert "    points: 4\n    repeat: true" in text
    new_text = text.replace("    points: 4\n    repeat: true", "    points: 9\n    repeat: true")
    new_path = tmp_path / "new.yaml"
    new_path.write_text(new_text)

    def settle(rules: str) -> None:
        for _ in range(10):
            config = FlowConfig(
                rules=rules, source="redis", redis_url=redis_url, partitions=P, tail=False,
                stop=threading.Event(),
            )  # fmt: skip
            cluster_main(build_flow(config), [], 0, worker_count_per_proc=1)
            if all(acked_upto(r, keys, p) == _last(r, keys, p) for p in range(P)):
                return
        raise AssertionError("the input never settled")

    lines = [
        orjson.dumps({"contact": "v-1", "action": "email.click", "ts": t + n}) for n in range(5)
    ]
    lines += [orjson.dumps({"contact": "c-1", "action": "email.click", "ts": t + 10})]
    lines += [
        orjson.dumps({"contact": "c-1", "action": "identify", "ts": t + 20, "merge": ["v-1"]})
    ]
    with RedisStore(redis_url) as store:
        store.ensure(P)
        store.send_events(lines)
    settle("examples/rules.yaml")
    give = [e for e, f in r.xrange(keys.input(q)) if b"m" in f and b'"$give"' in f[b"m"]]
    assert len(give) == 1
    before = r.xrevrange(keys.input(q), max="(" + give[0].decode(), count=1)[0][0]
    r.xgroup_setid(keys.input(q), "leadscore", before)  # the give is not read yet

    made = plan(r, keys, new_text.encode(), on_switch="silent")
    execute(r, keys, made)
    g1 = keys.at(1)
    assert r.exists(g1.handed(pv, "v-1")) and not r.exists(g1.state(pv, "v-1"))
    settle(str(new_path))  # the live flow, now on generation 1, reads the give
    assert not r.exists(g1.handed(pv, "v-1"))

    engine = Engine(load_rules_text(new_text))
    g5 = keys.at(5)  # the oracle: the whole history, give included, replayed under NEW
    replay_all(
        lambda p: Rebuilder(r, g5, p, engine),
        {p: acked_upto(r, keys, p) for p in range(P)},
        aliases=aliases_before(r, keys, [None] * P),
        handed=Handed(r, g5),
        final=True,
    )
    at = t + 86_400
    got, want = (decode(r.get(g.state(q, "c-1"))) for g in (g1, g5))
    assert engine.view("c-1", got, at)["total"] == engine.view("c-1", want, at)["total"]
    # six clicks at the new points, decayed for a day: far above the old points' 6 * 4
    assert engine.view("c-1", got, at)["total"] > 6 * 4 * 1.5


def _last(r: redis.Redis, keys: Keys, p: int) -> str | None:
    last = r.xrevrange(keys.input(p), count=1)
    return last[0][0].decode() if last else None
