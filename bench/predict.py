"""What a predictive model costs the flow: the same run with and without `predict`.

``python -m bench.predict [--events 1000000 --contacts 100000] [--repeat 3] [--redis]
[--json bench/results/predict.json] [--quick]``

Two designs of ``bench.throughput`` (c1 on files and, with ``--redis``, d1 on Redis) run
round by round on the same generated events, once with ``examples/rules.yaml`` and once with
the same rules plus ``predict:`` naming a model of realistic size for those events: every
trait the generator sends that is not an identifier (title, industry, country, company
size; the trainer drops id-like columns such as e-mail addresses), the three
group scores, the hits of five tracked rules and, as `train --events` now gives, the hits of
two rules without a tracker and the counts of three actions, 17 features. Its weights are
made up (a model's cost does not depend on them): the point is the price of keeping the
model's traits and counters in each contact's state, of one likelihood per read model, i.e.
per dirty contact per flush, and of the bigger read model that lets readers bring it to the
read (two of the scores decay). The target is the model run at 85% or more of the plain
run's throughput.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import orjson

from bench.common import RESULTS, count_lines, events_file, load_redis_server, rules_path
from bench.common import split_file as split_events
from bench.throughput import DESIGNS, Context, run_design
from leadscore.model import Feature, model_document, save_model
from leadscore.rules import load_rules

TARGET = 0.85


def bench_model(rules_file: Path) -> dict[str, Any]:
    """A 12-feature model the generated events and ``rules_file`` can feed."""
    rules = load_rules(rules_file)
    tracked = [r.id for r in rules.actions if r.tracked][:5]
    untracked = [r.id for r in rules.actions if not r.tracked][:2]

    def category(key: str, levels: list[str]) -> Feature:
        weights = {level: round(0.1 * ((i * 7) % 11 - 5), 3) for i, level in enumerate(levels)}
        return Feature(key, "trait", key, "category", -0.2, weights, 0.05)

    def number(name: str, source: str, key: str, edges: tuple[float, ...]) -> Feature:
        bins = tuple(round(0.05 * i, 3) for i in range(len(edges) + 1))
        return Feature(
            name,
            source,
            key,
            "number",
            -0.1,
            {},
            transform="log1p",
            low=0.0,
            high=12.0,
            mean=2.0,
            scale=1.5,
            weight=0.4,
            edges=edges,
            bins=bins,
        )

    features = [
        category("title", ["CEO", "VP Sales", "Head of Growth", "Marketing Manager", "Student"]),
        category("industry", ["Software", "Retail", "Education", "Finance", "Health"]),
        category("country", ["US", "GB", "DE", "ES", "FR", "IN", "BR"]),
        number("company size", "trait", "company.size", (2.0, 3.5, 5.0, 6.5, 8.0, 9.5)),
        *(
            number(f"{g} score", "score", g, (0.5, 1.5, 2.5, 3.5))
            for g in ("engagement", "fit", "product")
        ),
        *(number(f"{r} hits", "rule_hits", r, (0.5, 1.2, 2.0)) for r in (*tracked, *untracked)),
        *(
            number(f"{a} events", "action_count", a, (0.5, 1.2, 2.0))
            for a in ("email.send", "video.play", "form.submit")
        ),
    ]
    return model_document(
        features,
        -1.0,
        {"method": "platt", "a": 1.0, "b": 0.0},
        ["", "select"],
        {"training": {"note": "bench model: real structure, made-up weights"}},
    )


def with_predict(rules_file: Path, tmp: Path) -> Path:
    """``rules_file`` plus `predict:`, written next to its model."""
    save_model(bench_model(rules_file), tmp / "model.json")
    target = tmp / "rules-predict.yaml"
    target.write_text(
        rules_file.read_text(encoding="utf-8") + "\npredict: {model: model.json, as: likelihood}\n"
    )
    return target


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.predict", description=__doc__)
    parser.add_argument("--events", type=int, default=None, help="default 1,000,000")
    parser.add_argument("--contacts", type=int, default=None, help="default 100,000")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=None, help="rounds (default 3)")
    parser.add_argument("--redis", action="store_true", help="also d1 (Redis) with and without")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds (CI smoke)")
    parser.add_argument("--json", default=None, help="default bench/results/predict.json")
    args = parser.parse_args(argv)
    events = args.events or (3_000 if args.quick else 1_000_000)
    contacts = args.contacts or (300 if args.quick else 100_000)
    repeat = args.repeat or (1 if args.quick else 3)
    timeout = 60.0 if args.quick else 900.0
    single = events_file(events, contacts, args.seed)
    split = split_events(single, 2)
    tmp = Path(tempfile.mkdtemp(prefix="leadscore-bench-predict-"))
    plain_rules = rules_path(None)
    model_rules = with_predict(plain_rules, tmp)
    lines = count_lines([single])
    plain = Context(str(plain_rules), single, split, lines, tmp)
    model = Context(str(model_rules), single, split, lines, tmp)
    designs = [d for d in DESIGNS if d.key == "c1" or (args.redis and d.key == "d1")]
    server = None
    samples: dict[str, list[int]] = {}
    cpu: dict[str, list[float]] = {}
    try:
        if args.redis:
            server = load_redis_server().RedisServer(tmp / "redis").start()
            plain.redis_url = model.redis_url = server.url
        for round_no in range(repeat):
            for design in designs:
                for name, ctx in (("plain", plain), ("predict", model)):
                    result = run_design(design, ctx, timeout)
                    rate = result["events_per_s"]
                    samples.setdefault(f"{design.key} {name}", []).append(rate)
                    cpu.setdefault(f"{design.key} {name}", []).append(result["cpu_seconds"])
                    print(
                        f"round {round_no + 1}: {design.key} {name:<8} {rate:>9,} events/s, "
                        f"{result['cpu_seconds']:.1f} CPU s",
                        flush=True,
                    )
    finally:
        if server is not None:
            server.stop()
    report: dict[str, Any] = {
        "events": lines,
        "contacts": contacts,
        "rounds": repeat,
        "samples": samples,
        "cpu_seconds": cpu,
        "ratios": {},
    }
    for design in designs:
        with_model = samples[f"{design.key} predict"]
        without = samples[f"{design.key} plain"]
        per_round = [m / p for m, p in zip(with_model, without, strict=True)]
        ratio = statistics.median(with_model) / statistics.median(without)
        # CPU seconds per run: less sensitive than wall time to the other users of the box.
        cpu_ratio = statistics.median(cpu[f"{design.key} plain"]) / statistics.median(
            cpu[f"{design.key} predict"]
        )
        report["ratios"][design.key] = {
            "predict_over_plain": round(ratio, 3),
            "per_cpu_second": round(cpu_ratio, 3),
            "per_round": [round(r, 3) for r in per_round],
            "target": TARGET,
            "holds": ratio >= TARGET,
        }
        print(
            f"{design.key}: with a model {ratio:.3f}x the throughput without "
            f"({cpu_ratio:.3f}x per CPU second; target >= {TARGET})"
        )
    out = Path(os.environ.get("LEADSCORE_BENCH_CWD", "."), args.json) if args.json else None
    out = out or RESULTS / "predict.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    return report


if __name__ == "__main__":
    main()
