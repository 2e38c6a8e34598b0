"""Which rules a live deployment runs: their version, hash and text in ``{prefix}:meta``.

Restarting a flow with an edited rules file used to mix old and new scoring silently (a
contact scored under "click = +10" kept those points, its next event scored under "+30").
So the deployment records the rules it runs, any process can tell what is live
(``leadscore rules --redis URL``), and a flow started with other rules is refused: rules
change only through ``leadscore publish``, which rescores the history into a new generation
of state and switches the live flow over (``leadscore/rescore.py``), so that no state mixes
two rule sets; ``leadscore preview`` shows what a change would do first.

Fields of ``{prefix}:meta`` (besides ``version`` and ``partitions``, ``state/keys.py``):

- ``rules_version``: 1, 2, ... one more at every publish;
- ``rules_sha256``: sha256 of the rules file's bytes (an edit, even of a comment, is a change);
- ``rules_text``: the file itself, so any process can load what is live;
- ``rules_published``: when that version was recorded (epoch seconds, Redis's clock).

When no rules are recorded yet: a deployment with no checkpoint committed records the rules
of its first flow as v1 (nothing was scored under anything else); one that has state but no
record (it ran before versions existed) is refused unless the flow is started with
``--publish``, which adopts its rules as v1 (the operator vouches that they are the rules
the state was scored with).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from state.keys import Keys
from state.redis_store import StoreError

FIELDS = ("rules_version", "rules_sha256", "rules_text", "rules_published")

# Records the rules as v1 only if no rules are recorded yet (concurrent first starts agree).
_RECORD_FIRST_LUA = """
if redis.call('HEXISTS', KEYS[1], 'rules_sha256') == 1 then return 0 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'rules_version', 1, 'rules_sha256', ARGV[1],
           'rules_text', ARGV[2], 'rules_published', t[1] .. '.' .. string.format('%06d', t[2]))
return 1
"""


class RulesMismatch(StoreError):
    """The flow was started with rules other than the deployment's published ones."""


def rules_digest(text: bytes) -> str:
    """The hash the deployment records for a rules file: sha256 of its bytes, hex."""
    return hashlib.sha256(text).hexdigest()


@dataclass(frozen=True)
class LiveRules:
    """The rules a deployment runs, as recorded in ``{prefix}:meta``."""

    version: int
    sha256: str
    text: bytes
    published: float

    def describe(self) -> str:
        return f"v{self.version} (sha256 {self.sha256[:12]})"


def live_rules(r: Any, keys: Keys) -> LiveRules | None:
    """What ``{prefix}:meta`` records as live, or None when no rules were ever recorded."""
    raw = r.hmget(keys.meta, list(FIELDS))
    if raw[1] is None:
        return None
    return LiveRules(
        version=int(raw[0] or 0),
        sha256=raw[1].decode(),
        text=raw[2] or b"",
        published=float(raw[3] or 0),
    )


def has_state(r: Any, keys: Keys) -> bool:
    """True once any partition committed a checkpoint (contacts were scored under something)."""
    names = [keys.checkpoint(p) for p in range(keys.partitions)]
    mget = getattr(r, "mget_nonatomic", r.mget)  # a cluster: one slot per partition
    return any(v is not None for v in mget(names))


def check_rules(r: Any, keys: Keys, text: bytes, path: str, *, publish: bool = False) -> LiveRules:
    """The live rules, which must be ``text`` (the file at ``path``); raises RulesMismatch.

    With no rules recorded, records ``text`` as v1 when nothing was scored yet or when
    ``publish`` is set (see the module docstring); otherwise refuses.
    """
    digest = rules_digest(text)
    live = live_rules(r, keys)
    if live is None:
        if not publish and has_state(r, keys):
            raise RulesMismatch(
                f"{keys.meta} records no rules, but this deployment already has scored "
                f"state (it ran before rules were versioned): start the flow once with "
                f"--publish (LEADSCORE_PUBLISH=1) to record {path} as v1 if these are the rules "
                "it was scored with, or score the history under them in a new deployment "
                "(another --prefix; `leadscore preview` shows what they change, "
                "`leadscore publish` changes the rules of a running deployment)"
            )
        r.eval(_RECORD_FIRST_LUA, 1, keys.meta, digest, text)
        live = live_rules(r, keys)
        assert live is not None  # just recorded (by us or a concurrent first start)
    if live.sha256 != digest:
        raise RulesMismatch(
            f"this deployment runs rules {live.describe()}, published at "
            f"{_when(live.published)}; {path} is different (sha256 {digest[:12]}). "
            "Starting with them would score new events under other rules than the existing "
            "states. To see what they would change: `leadscore preview --rules "
            f"{path} --redis URL`; to change the rules: `leadscore publish --rules {path} "
            "--redis URL` (rescores the history and switches the live flow over); "
            "to run what is live, "
            "`leadscore rules --redis URL --text > live.yaml` and start with --rules live.yaml"
        )
    return live


def _when(epoch: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
