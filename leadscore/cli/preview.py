"""``leadscore preview --rules NEW --redis URL``: what a rules change would do to a live
deployment, before anyone changes it.

NEW is validated, the kind of change is decided (cheap or rescoring, and why:
``leadscore/publish.py``), and a backtest of NEW against the live rules runs on the
deployment's history (the retained input streams, or ``--history DIR``, an ``--archive``
directory). It reads Redis and changes nothing.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from leadscore.cli.app import (
    DEFAULT_REDIS,
    Cluster,
    Prefix,
    RedisUrl,
    app,
    events_arg,
    fail,
    load_rules_or_exit,
    masked_url,
    new_console,
    redis_url_arg,
)

if TYPE_CHECKING:
    from leadscore.history import ArchiveHistory


@app.command()
def preview(
    rules: Annotated[
        str, typer.Option("--rules", "-r", metavar="NEW", help="The new rules file (YAML).")
    ],
    redis_url: RedisUrl = DEFAULT_REDIS,
    prefix: Prefix = "ls",
    cluster: Cluster = False,
    history: Annotated[
        str | None,
        typer.Option(
            "--history",
            metavar="DIR",
            help="An --archive directory: replay it for what the retained input streams no "
            "longer hold, then the streams (an archive written before entry ids were "
            "archived: alone).",
        ),
    ] = None,
) -> None:
    """Preview new rules against the live ones on the deployment's history; changes nothing."""
    from redis.exceptions import RedisError

    from leadscore.backtest import backtest
    from leadscore.cli.backtest import _render
    from leadscore.history import HistoryError
    from leadscore.publish import RESCORE, UNCHANGED, archive_actions, classify, export_history
    from leadscore.rules import RulesError
    from state.redis_store import RedisStore, RetryPolicy, StoreError
    from state.versions import live_rules

    redis_url_arg(redis_url, "--redis")
    load_rules_or_exit(rules)
    new_text = Path(rules).read_bytes()
    console = new_console()
    where = masked_url(redis_url)
    with tempfile.TemporaryDirectory(prefix="leadscore-publish-") as tmp:
        try:
            with RedisStore(
                redis_url, prefix=prefix, cluster=cluster, retry=RetryPolicy(attempts=3)
            ) as store:
                keys = store.keys
                live = live_rules(store.r, keys)
                if live is None:
                    fail(
                        f"{keys.meta} at {where} records no rules: start the live flow once "
                        "(it records its rules as v1), then preview"
                    )
                archive = None if history is None else _archive_or_exit(history)
                if history is not None and archive is None:  # no entry ids: read it alone
                    paths = events_arg([history], [])
                    seen = archive_actions(paths)
                    source = (
                        f"the archive {history} alone ({len(paths)} files; written without "
                        "stream entry ids, so not joined to the retained streams)"
                    )
                elif archive is not None:
                    exported = export_history(
                        store.r,
                        keys.input,
                        keys.partitions,
                        Path(tmp) / "history.jsonl.gz",
                        older=lambda p: archive.older_lines(store.r, keys, p),
                    )
                    paths, seen = [str(exported.path)], exported.actions
                    source = (
                        f"the archive {history} ({exported.archived:,} events the streams "
                        f"no longer hold), then the retained input streams "
                        f"({exported.events - exported.archived:,} events in "
                        f"{exported.entries:,} entries)"
                    )
                else:
                    exported = export_history(
                        store.r, keys.input, keys.partitions, Path(tmp) / "history.jsonl.gz"
                    )
                    paths, seen = [str(exported.path)], exported.actions
                    source = (
                        f"the retained input streams ({exported.events:,} events in "
                        f"{exported.entries:,} entries)"
                    )
        except HistoryError as err:
            fail(str(err))
        except (StoreError, RedisError) as err:
            fail(f"cannot read the deployment at {where}: {err}")
        try:
            change = classify(live.text, new_text, seen, new_source=rules)
        except RulesError as err:  # the live text no longer loads (an older leadscore's)
            fail(f"the live rules v{live.version} do not load with this leadscore: {err}")
        console.print(f"live: rules {live.describe()}; new: {rules}")
        console.print(change.describe())
        if change.kind == UNCHANGED:
            return
        live_path = Path(tmp) / "live.yaml"
        live_path.write_bytes(live.text)
        if change.kind == RESCORE:
            console.print(f"backtest of {rules} against the live rules on {source}:")
            result = backtest(rules, paths, str(live_path), now=time.time())
            _render(console, result)


def _archive_or_exit(directory: str) -> ArchiveHistory | None:
    """The archive to join to the streams; None if it was written without entry ids."""
    from leadscore.history import ArchiveHistory, HistoryError

    try:
        archive = ArchiveHistory(directory)
    except HistoryError as err:
        fail(str(err))
    return archive if archive.unindexed() is None else None
