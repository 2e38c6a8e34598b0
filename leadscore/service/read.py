"""The read endpoints: a contact's scores from the read model the flow maintains
(``/v1/contacts/{id}``, with ``?explain=1`` its recent change records), and the liveness and
readiness probes (``/healthz``, ``/readyz``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import orjson
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from leadscore.engine import Engine
from leadscore.events import MAX_CONTACT_CHARS
from leadscore.identity import MAX_CHAIN as MAX_ALIAS_CHAIN
from leadscore.readmodel import view_at
from leadscore.rules import RulesError, load_rules, load_rules_text
from leadscore.service.auth import authorize_read
from leadscore.service.backend import Service
from leadscore.service.config import FALSE_WORDS, TRUE_WORDS
from leadscore.service.errors import ApiError, StorageUnavailable, json_response
from state.codec import StateFormatError, decode
from state.keys import Keys, parse_live, serving
from state.versions import rules_digest

log = logging.getLogger("leadscore.service")

EXPLAIN_SCAN = 5000  # change records looked at per explain request, newest first
EXPLAIN_PAGE = 50  # stream entries per XREVRANGE (an entry packs up to 100 records)
EXPLAIN_MAX = 200
MAX_MERGED_EXPLAINED = 4  # merged ids whose own records an explain request also reads
EXPLAIN_FACTORS = 5  # features shown raising and lowering a likelihood


def _flag(value: str | None, name: str) -> bool:
    if value is None:
        return False
    lowered = value.strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise ApiError(400, "wrong_type", f"query parameter '{name}' must be true or false", name)


class Reads:
    """The read endpoints of one app, bound to its :class:`Service`."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.config = service.config
        # Given the flow's rules (--rules), ?explain=1 also explains the likelihood of rules
        # with `predict` from the contact's stored state (the state the read model was built
        # from), under the rules live now: those of {prefix}:meta, which a publish changes
        # while the service runs (``_live_engine``); its own file until the meta records any.
        self.own: Engine | None = None
        self._own_sha = ""
        self._engines: dict[str, Engine | None] = {}  # published rules by sha256
        self._generations: dict[int, int] = {}  # per partition, the generation seen last
        if self.config.rules:
            path = Path(self.config.rules)
            self.own = Engine(load_rules(path))  # RulesError: a bad file stops the start
            self._own_sha = rules_digest(path.read_bytes())

    async def contact(self, request: Request) -> Response:
        """The contact's scores as of this read (``as_of``), from the read model the flow
        maintains (leadscore.readmodel.view_at); ``?explain=1`` adds its recent change records.
        """
        cfg = self.config
        authorize_read(cfg.read_keys, cfg.write_keys, request)
        contact = request.path_params["id"]
        if not 0 < len(contact) <= MAX_CONTACT_CHARS:
            raise ApiError(400, "wrong_type", "contact id must be 1 to 256 characters", "id")
        explain = _flag(request.query_params.get("explain"), "explain")
        limit_text = request.query_params.get("limit", "20")
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= EXPLAIN_MAX:
            raise ApiError(
                400, "wrong_type", f"query parameter 'limit' must be 1 to {EXPLAIN_MAX}", "limit"
            )
        try:
            keys = await self.service.keys()
            assert self.service.redis is not None
            base = keys
            keys, raw = await self._read_model(base, contact)
            chain = [contact]
            if raw is None:  # merged into another contact? (identify with merge)
                chain = await self._merged_into(base, contact)
                if len(chain) > 1:
                    keys, raw = await self._read_model(base, chain[-1])
            if raw is None:
                raise ApiError(404, "not_found", f"no contact {contact[:64]!r} yet", "id")
            # Decayed to now: the flow rewrites a contact only when it changes, not as it cools.
            now = time.time()
            view = view_at(orjson.loads(raw), now)
            if len(chain) > 1:  # the known contact's scores, saying whose they are
                view["requested"] = contact
                view["merged_into"] = chain[1:]
            if not explain:
                return Response(orjson.dumps(view), 200, media_type="application/json")
            view["changes"] = await self._with_merged(keys, chain[-1], int(limit_text))
            engine = await self._live_engine(base)
            if engine is not None:
                await self._explain_likelihood(engine, keys, chain[-1], view, now)
        except (StorageUnavailable, RedisError, OSError) as exc:
            raise ApiError(
                503, "unavailable", f"read model unavailable: {exc}", None, {"Retry-After": "1"}
            ) from None
        return json_response(view)

    async def _with_merged(self, keys: Keys, contact: str, limit: int) -> list[Any]:
        """The contact's newest ``limit`` change records, with those of the ids its records
        say were merged into it (kind ``merge``, up to MAX_MERGED_EXPLAINED of them): where
        each point came from. Each record names the id it was earned under (``contact``)."""
        found = await self._changes(keys, contact, limit)
        merged = [r["from"] for r in found if r.get("kind") == "merge" and r.get("from")]
        if not merged:
            return found
        for old in dict.fromkeys(merged[-MAX_MERGED_EXPLAINED:]):
            found += await self._changes(keys, old, limit)
        found.sort(key=lambda r: str(r.get("at", "")))  # RFC 3339 UTC text sorts by time
        return found[-limit:]

    async def _merged_into(self, keys: Keys, contact: str) -> list[str]:
        """``[contact, ..., root]``: the contacts ``contact`` was merged into, in order
        (``{prefix}:aliases``, written by the flow); ``[contact]`` if it was not merged."""
        assert self.service.redis is not None
        chain = [contact]
        while len(chain) <= MAX_ALIAS_CHAIN:
            into = await self.service.redis.hget(keys.aliases, chain[-1])
            if not into or into.decode() in chain:
                break
            chain.append(into.decode())
        return chain

    async def _read_model(self, keys: Keys, contact: str) -> tuple[Keys, bytes | None]:
        """The contact's read model from the generation its partition serves now (a publish
        switches generations: ``state/generations.py``), and that generation's layout.

        One round trip: the partition's ``live`` marker and the document of the generation
        seen last are read together; only right after a switch is a second read needed."""
        assert self.service.redis is not None
        p = keys.partition(contact)
        cached = self._generations.get(p, 0)
        pipe = self.service.redis.pipeline(transaction=False)
        pipe.get(keys.live(p))
        pipe.get(keys.at(cached).read_model(p, contact))
        marker, raw = await pipe.execute()
        generation = parse_live(marker)[0]
        if parse_live(marker)[2] is not None:  # held: a committed switch may serve the target
            record = await self.service.redis.hmget(keys.publishing, ["phase", "target"])
            generation = serving(marker, record)
        if generation != cached:
            self._generations[p] = generation
            raw = await self.service.redis.get(keys.at(generation).read_model(p, contact))
        return keys.at(generation), raw

    async def _live_engine(self, keys: Keys) -> Engine | None:
        """The engine of the rules live now if they ``predict`` (else None): the meta's
        ``rules_sha256`` (one HGET); rules other than the service's own file are built from
        the meta's ``rules_text`` once per version, a relative model path resolved beside the
        own file (as the flow does). Rules that fail to load explain no likelihood (logged)."""
        if self.own is None:
            return None
        assert self.service.redis is not None
        raw = await self.service.redis.hget(keys.meta, "rules_sha256")
        sha = raw.decode() if raw else self._own_sha
        if sha == self._own_sha:
            engine: Engine | None = self.own
        elif sha in self._engines:
            engine = self._engines[sha]
        else:
            got, text, version = await self.service.redis.hmget(
                keys.meta, ["rules_sha256", "rules_text", "rules_version"]
            )
            engine = None
            if got is not None and text is not None:
                sha = got.decode()
                assert self.config.rules is not None
                beside = (
                    Path(self.config.rules).parent / f"published-rules-v{int(version or 0)}.yaml"
                )
                try:
                    engine = Engine(load_rules_text(text.decode(), str(beside)))
                except RulesError as err:
                    log.warning("explain: the live rules v%s do not load here: %s", version, err)
            self._engines[sha] = engine
        return engine if engine is not None and engine.rules.predict is not None else None

    async def _explain_likelihood(
        self, engine: Engine, keys: Keys, contact: str, view: dict[str, Any], at: float
    ) -> None:
        """Add ``{as}_factors``: the features raising and lowering the likelihood most, as of
        the read like the view (decaying scores among them)."""
        assert self.service.redis is not None
        prediction = engine.rules.predict
        assert prediction is not None
        packed = await self.service.redis.get(keys.state(keys.partition(contact), contact))
        if packed is None:
            return
        try:
            state = decode(packed)
        except StateFormatError:
            return  # the read model still answers; the flow dead-letters damaged state
        explanation = engine.explain_likelihood(state, at)
        if explanation is not None:
            view[f"{prediction.name}_factors"] = explanation.to_json(EXPLAIN_FACTORS)

    async def _changes(self, keys: Keys, contact: str, limit: int) -> list[Any]:
        """The newest ``limit`` change records of one contact, oldest first.

        An entry of ``{prefix}:{p}:changes`` packs one or more JSON records joined by ``\\n``
        (the flow writes a checkpoint's records together), and neighbours in the partition
        share it. At most EXPLAIN_SCAN records are looked at, newest first, so a busy
        partition cannot make this slow; an entry without the contact's id is skipped whole.
        """
        assert self.service.redis is not None
        stream = keys.changes(keys.partition(contact))
        needle = orjson.dumps(contact)
        found: list[Any] = []
        scanned = 0
        upper = "+"
        while scanned < EXPLAIN_SCAN and len(found) < limit:
            entries = await self.service.redis.xrevrange(stream, upper, "-", count=EXPLAIN_PAGE)
            if not entries:
                break
            for _id, fields in entries:
                payload = fields.get(b"c") or b""
                scanned += payload.count(b"\n") + 1
                if needle not in payload:
                    continue
                for record in reversed(payload.split(b"\n")):
                    if needle not in record:
                        continue
                    with contextlib.suppress(orjson.JSONDecodeError):
                        change = orjson.loads(record)
                        if isinstance(change, dict) and change.get("contact") == contact:
                            found.append(change)
                            if len(found) == limit:
                                break
                if len(found) == limit or scanned >= EXPLAIN_SCAN:
                    break
            upper = "(" + entries[-1][0].decode()  # exclusive: continue below the last one
        found.reverse()
        return found

    async def healthz(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        try:
            assert self.service.redis is not None
            await asyncio.wait_for(self.service.redis.ping(), 1.0)
            keys = await asyncio.wait_for(self.service.keys(), 1.0)
        except (StorageUnavailable, RedisError, OSError, TimeoutError, AssertionError) as exc:
            return json_response(
                {
                    "status": "unavailable",
                    "code": "redis_unavailable",
                    "message": f"Redis is not usable: {exc or type(exc).__name__}",
                },
                503,
            )
        return json_response({"status": "ready", "partitions": keys.partitions})
