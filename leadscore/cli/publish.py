"""``leadscore publish --rules NEW --redis URL``: change the rules of a live deployment.

Validates NEW, prints the preview (``leadscore preview``: kind of change, backtest) unless
``--yes``, then publishes: a cheap change switches at once; a rescoring change rebuilds a new
generation of state from the retained history (with ``--history DIR``: the flow's
``--archive`` directory for what the streams no longer hold, ``leadscore/history.py``) while
the live flow keeps scoring, then switches the live flow over at a checkpoint boundary
(``leadscore/rescore.py``). Also
``--rollback`` (back to the previous rules, the same way) and ``--prune`` (delete the
generations that are not live). Running it again after a crash resumes the publish.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from leadscore.cli.app import (
    DEFAULT_REDIS,
    Cluster,
    Prefix,
    RedisUrl,
    app,
    fail,
    load_rules_or_exit,
    masked_url,
    new_console,
    redis_url_arg,
    require_redis,
)

if TYPE_CHECKING:
    from leadscore.history import ArchiveHistory
    from leadscore.rescore import Outcome, Plan
    from state.keys import Keys


@app.command()
def publish(
    rules: Annotated[
        str | None,
        typer.Option("--rules", "-r", metavar="NEW", help="The new rules file (YAML)."),
    ] = None,
    redis_url: RedisUrl = DEFAULT_REDIS,
    prefix: Prefix = "ls",
    cluster: Cluster = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Publish without printing the preview first.")
    ] = False,
    on_switch: Annotated[
        str,
        typer.Option(
            "--on-switch",
            metavar="fire|silent",
            help="At the switch, fire each contact's trigger differences once (cause "
            "'rules published: vN'), or not.",
        ),
    ] = "fire",
    rollback: Annotated[
        bool,
        typer.Option("--rollback", help="Switch back to the previous rules and their state."),
    ] = False,
    prune: Annotated[
        bool,
        typer.Option("--prune", help="Delete the state of every generation that is not live."),
    ] = False,
    max_contacts: Annotated[
        int,
        typer.Option(
            "--max-contacts",
            metavar="N",
            help="Contact states the rebuild keeps in memory (the rest wait in Redis).",
        ),
    ] = 50_000,
    history: Annotated[
        str | None,
        typer.Option(
            "--history",
            metavar="DIR",
            help="The live flow's --archive directory: the rebuild and the preview replay it "
            "for what the retained input streams no longer hold, then the streams.",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port", metavar="PORT", help="Serve the progress as Prometheus metrics."
        ),
    ] = None,
) -> None:
    """Publish new rules to a live deployment: rescore from history, switch live, roll back."""
    from redis.exceptions import RedisError

    from leadscore import rescore
    from state.generations import PublishError, live_generation, mark_pruned, read_markers
    from state.generations import prune as drop
    from state.generations import publishing as in_progress
    from state.keys import parse_live
    from state.redis_store import RedisStore, RetryPolicy, StoreError

    if on_switch not in ("fire", "silent"):
        fail(f"--on-switch must be fire or silent, got {on_switch!r}")
    if sum(map(bool, (rules, rollback, prune))) != 1:
        fail("give one of --rules NEW, --rollback or --prune")
    redis_url_arg(redis_url, "--redis")
    require_redis(redis_url, "--redis")
    new_text = None
    if rules is not None:
        load_rules_or_exit(rules)
        new_text = Path(rules).read_bytes()
    archive = None
    if history is not None and not prune:
        from leadscore.history import ArchiveHistory, HistoryError

        try:
            archive = ArchiveHistory(history)
        except HistoryError as err:
            fail(str(err))
        refusal = archive.unindexed()
        if refusal is not None:
            fail(f"--history {history}: {refusal}")
    console = new_console()
    where = masked_url(redis_url)
    try:
        with RedisStore(
            redis_url, prefix=prefix, cluster=cluster, retry=RetryPolicy(attempts=3)
        ) as store:
            r, keys = store.r, store.keys
            if prune:
                live = live_generation(r, keys)
                job = in_progress(r, keys)
                keep = {live} | ({job.generation} if job is not None else set())
                keep |= {parse_live(m)[0] for m in read_markers(r, keys)}
                gens = _generations(r, keys) - keep
                if not gens:
                    console.print(f"nothing to prune: only generation {live} (live) is kept")
                    return
                for gen in sorted(gens):
                    removed = drop(r, keys, gen)
                    versions = mark_pruned(r, keys, gen)
                    names = ", ".join(f"v{v}" for v in versions) or "no recorded rules"
                    console.print(f"pruned generation {gen} ({names}): {removed:,} keys deleted")
                return
            if not yes and not rollback and rules is not None and in_progress(r, keys) is None:
                from leadscore.cli.preview import preview

                preview(
                    rules=rules, redis_url=redis_url, prefix=prefix, history=history,
                    cluster=cluster,
                )  # fmt: skip
                if not sys.stdin.isatty():
                    console.print("nothing published: run again with --yes to publish")
                    return
                if not typer.confirm("publish these rules?"):
                    console.print("nothing published")
                    return
            plan = rescore.plan(
                r, keys, new_text, source=rules or "", on_switch=on_switch, rollback=rollback
            )
            if plan.job is None:
                console.print("nothing to publish: these are the live rules")
                return
            what = "rolling back to" if plan.job.kind == "rollback" else "publishing"
            console.print(
                f"{what} rules v{plan.job.version} as generation {plan.job.generation}"
                + (" (resuming the publish in progress)" if plan.resumed else "")
            )
            if not plan.resumed:
                console.print(plan.change.describe())
            if plan.job.kind == "cheap":
                console.print(
                    "no replay needed: the live flow switches rules at its next checkpoint"
                )
            total = sum(_entries(r, keys, p, archive is not None) for p in range(keys.partitions))
            if metrics_port:
                from prometheus_client import start_http_server

                start_http_server(metrics_port, addr="127.0.0.1")
            outcome = _run(r, keys, plan, total, max_contacts, archive)
    except PublishError as err:
        fail(str(err))
    except (StoreError, RedisError) as err:
        fail(f"cannot publish to the deployment at {where}: {err}; run publish again to resume")
    console.print(
        f"live: rules v{outcome.version}, generation {outcome.generation} "
        f"({outcome.events:,} events replayed in {outcome.seconds:.1f} s; "
        f"{outcome.fired:,} switch firings; checkpoints held {outcome.held_seconds:.1f} s)"
    )
    if plan.job.kind != "cheap":
        console.print(
            "the previous generation is kept: `leadscore publish --rollback` switches back, "
            "`leadscore publish --prune` deletes it"
        )
    console.print(
        "restart the flow with the published rules (`leadscore rules --redis URL --text`): "
        "a flow started with other rules is refused"
    )


def _generations(r: Any, keys: Keys) -> set[int]:
    """Every generation a rules record names (pruned ones left out)."""
    from state.generations import rules_record

    top = int(r.hget(keys.meta, "rules_version_max") or 0)
    gens = set()
    for v in range(1, top + 1):
        rec = rules_record(r, keys, v)
        if rec is not None and not rec.pruned:
            gens.add(rec.generation)
    return gens


def _entries(r: Any, keys: Keys, p: int, archived: bool) -> int:
    """Input entries a full rebuild of ``p`` replays: the retained ones, and with an archive
    the ones trimmed too (the progress bar's total)."""
    from state.generations import removed_entries

    retained = int(r.xlen(keys.input(p)))
    return retained + removed_entries(r, keys, p) if archived else retained


def _run(
    r: Any, keys: Keys, plan: Plan, total: int, max_contacts: int, archive: ArchiveHistory | None
) -> Outcome:
    """Execute with a progress bar on stderr and the metrics fed."""
    from leadscore import rescore

    gauges = _GAUGES or _make_gauges()
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} entries"),
        TextColumn("{task.fields[events]:,} events, {task.fields[rate]:,.0f}/s"),
        TimeRemainingColumn(),
        console=new_console(stderr=True),
        transient=True,
    )
    task = bar.add_task("rebuild", total=max(total, 1), events=0, rate=0.0)

    def update(progress: rescore.Progress) -> None:
        description = f"{progress.phase} p{progress.partition}/{keys.partitions}"
        bar.update(
            task,
            completed=min(progress.entries, total),
            description=description,
            events=progress.events,
            rate=progress.rate,
        )
        gauges["partitions"].set(progress.done_partitions)
        gauges["partitions_total"].set(progress.partitions)
        gauges["events"].set(progress.events)
        gauges["entries"].set(progress.entries)
        gauges["entries_total"].set(total)
        gauges["rate"].set(progress.rate)
        eta = progress.eta
        gauges["eta"].set(float("nan") if eta is None else eta)
        gauges["fired"].set(progress.fired)
        gauges["phase"].state(progress.phase)
        gauges["seconds"].set(time.monotonic() - started)

    progress = rescore.Progress(keys.partitions, update=update, total=total)
    started = time.monotonic()
    with bar:
        outcome = rescore.execute(
            r, keys, plan, progress=progress, max_contacts=max_contacts, pause=_pause,
            history=archive,
        )  # fmt: skip
    gauges["seconds"].set(time.monotonic() - started)
    return outcome


def _pause(step: str) -> None:
    """``LEADSCORE_PUBLISH_PAUSE=STEP`` stops the publish at STEP (a step name of
    ``rescore.execute``: rebuilt:P, caught-up, marked, held, fired:N, on Redis Cluster
    committed and switched:P, then done) until it is killed: the crash tests kill it there,
    the metrics test scrapes it there. Everything before the step is written."""
    if os.environ.get("LEADSCORE_PUBLISH_PAUSE") == step:
        print(f"publish paused at {step}", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)


_GAUGES: dict[str, Any] = {}


def _make_gauges() -> dict[str, Any]:
    """The progress as Prometheus metrics (``--metrics-port``): the bar's numbers."""
    from prometheus_client import Enum, Gauge

    _GAUGES.update(
        partitions=Gauge("leadscore_publish_partitions_done", "Partitions rebuilt"),
        partitions_total=Gauge("leadscore_publish_partitions", "Partitions to rebuild"),
        events=Gauge("leadscore_publish_events_replayed", "Events replayed into the generation"),
        entries=Gauge("leadscore_publish_entries_replayed", "Input entries replayed"),
        entries_total=Gauge(
            "leadscore_publish_entries", "Input entries retained when the publish started"
        ),
        rate=Gauge("leadscore_publish_events_per_second", "Replay rate of this process"),
        eta=Gauge(
            "leadscore_publish_eta_seconds",
            "Seconds until every entry is replayed at this rate (NaN: no rate yet)",
        ),
        fired=Gauge("leadscore_publish_switch_firings", "Switch firings written"),
        phase=Enum("leadscore_publish_phase", "Step of the publish", states=list(PHASES)),
        seconds=Gauge("leadscore_publish_seconds", "Duration of the publish so far"),
    )
    return _GAUGES


PHASES = ("rebuild", "catch-up", "differences", "switch", "switch firings", "done")
"""The steps a publish goes through (``rescore.Progress.phase``), in order."""
