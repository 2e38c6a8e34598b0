"""`leadscore send`, `leadscore run --source` and `leadscore show` against a real redis-server,
in subprocesses, as an operator runs them: exit codes and messages matter as much as data."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
import redis
import yaml
from redis_server import free_port
from terminal import run_with_terminal_stderr

from leadscore.readmodel import view_at
from state.keys import Keys, partition_of
from state.redis_store import RedisStore

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "examples" / "rules.yaml"
COMPOSE = ROOT / "docker" / "compose.yaml"
_SCRIPT = Path(sys.executable).parent / "leadscore"
LEADSCORE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "leadscore.cli"]


def cli(
    *args: str, stdin: bytes | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*LEADSCORE, *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )
    return done


def ev(contact: str, n: int, action: str = "page.hit", url: str = "/pricing") -> bytes:
    return orjson.dumps(
        {
            "contact": contact,
            "action": action,
            "id": f"{contact}-{n}",
            "ts": f"2025-03-01T10:{n:02d}:00Z",
            "props": {"url": f"https://acme.com{url}"},
        }
    )


@pytest.fixture
def events(tmp_path: Path) -> tuple[Path, list[bytes]]:
    lines = [ev(f"c-{i % 7}", i, url=["/pricing", "/blog/x", "/demo"][i % 3]) for i in range(60)]
    lines.insert(10, b"{not json")
    lines.insert(20, b"")
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, lines


def stream_lines(url: str, partitions: int = 16) -> list[bytes]:
    r = redis.Redis.from_url(url)
    keys = Keys("ls", partitions)
    out = [
        line
        for p in range(partitions)
        for _, fields in r.xrange(keys.input(p))
        for line in fields[b"e"].split(b"\n")
    ]
    r.close()
    return out


def test_send_loads_files_gzip_and_stdin_into_the_partition_streams(
    redis_url: str, events: tuple[Path, list[bytes]], tmp_path: Path
) -> None:
    path, lines = events
    gz = tmp_path / "events.jsonl.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    done = cli("send", "--redis", redis_url, "-e", str(path), str(gz), "--batch", "5")
    assert done.returncode == 0, done.stderr
    assert "sent 122 events" in done.stdout and "16 partitions" in done.stdout
    assert "2 lines without a readable contact went to partition 0" in done.stdout
    assert "2 blank lines skipped" in done.stdout
    piped = cli("send", "--redis", redis_url, "-e", "-", stdin=path.read_bytes())
    assert piped.returncode == 0, piped.stderr
    sent = [line for line in lines if line]
    assert sorted(stream_lines(redis_url)) == sorted(sent * 3)
    # each contact's events stay in file order within its partition's stream
    got = [orjson.loads(x)["id"] for x in stream_lines(redis_url) if x.startswith(b'{"c')]
    assert [i for i in got if i.startswith("c-3-")][:5] == [
        "c-3-3",
        "c-3-10",
        "c-3-17",
        "c-3-24",
        "c-3-31",
    ]


def test_send_follows_the_existing_partition_count_and_refuses_another(
    redis_url: str, events: tuple[Path, list[bytes]]
) -> None:
    path, _ = events
    RedisStore(redis_url).ensure(4)
    assert cli("send", "--redis", redis_url, "-e", str(path)).returncode == 0
    assert len(stream_lines(redis_url, 4)) == 61
    done = cli("send", "--redis", redis_url, "-e", str(path), "--partitions", "8")
    assert done.returncode == 1
    assert "split into 4 partitions" in done.stderr and "Traceback" not in done.stderr


def test_send_shows_a_progress_bar_on_a_terminal(
    redis_url: str, events: tuple[Path, list[bytes]]
) -> None:
    path, _ = events
    done, seen = run_with_terminal_stderr(
        ["send", "--redis", redis_url, "-e", str(path)], timeout=60
    )
    assert done.returncode == 0
    assert b"sending" in seen and b"sending" not in done.stdout


def test_send_and_show_explain_bad_input_without_a_traceback(
    redis_url: str, tmp_path: Path
) -> None:
    missing = cli("send", "--redis", redis_url, "-e", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 1 and "events file not found" in missing.stderr
    url = cli("send", "--redis", "localhost:6379", "-e", "-", stdin=b"")
    assert url.returncode == 1 and "takes a Redis URL" in url.stderr
    empty = cli("show", "--redis", redis_url, "c-1")
    assert empty.returncode == 1 and "no ls:meta" in empty.stderr
    for done in (missing, url, empty):
        assert "Traceback" not in done.stderr


def test_run_source_drain_then_show(redis_url: str, events: tuple[Path, list[bytes]]) -> None:
    path, _ = events
    assert cli("send", "--redis", redis_url, "-e", str(path)).returncode == 0
    done = cli("run", "-r", str(RULES), "--source", redis_url, "--drain", "-w", "2")
    assert done.returncode == 0, done.stderr
    assert "60 events scored" in done.stderr and "1 dead letters" in done.stderr

    before = time.time()
    shown = cli("show", "--redis", redis_url, "c-3", "--json")
    after = time.time()
    assert shown.returncode == 0, shown.stderr
    stored = redis.Redis.from_url(redis_url).get(
        Keys("ls", 16).read_model(partition_of("c-3", 16), "c-3")
    )
    # The scores as of the read: between what view_at gives for just before and just after it.
    doc = orjson.loads(stored)
    view = orjson.loads(shown.stdout)
    early, late = view_at(doc, before), view_at(doc, after)
    assert early["as_of"] <= view["as_of"] <= late["as_of"]
    assert view["updated_at"] == doc["updated_at"] < view["as_of"]
    for group, score in view["scores"].items():
        assert late["scores"][group] <= score <= early["scores"][group]
    assert view["total"] < doc["total"]  # it has cooled since the flow wrote it
    table = cli("show", "--redis", redis_url, "c-3")
    assert table.returncode == 0
    assert doc["updated_at"] in table.stdout and "as of" in table.stdout
    unknown = cli("show", "--redis", redis_url, "c-99")
    assert unknown.returncode == 1
    assert "no score for contact 'c-99'" in unknown.stderr and unknown.stdout == ""


def test_run_source_refuses_file_options(redis_url: str, events: tuple[Path, list[bytes]]) -> None:
    path, _ = events
    both = cli("run", "-r", str(RULES), "--source", redis_url, "-e", str(path))
    assert both.returncode == 1 and "exclude each other" in both.stderr
    out = cli("run", "-r", str(RULES), "--source", redis_url, "-o", "x")
    assert out.returncode == 1 and "--out is for file runs" in out.stderr
    neither = cli("run", "-r", str(RULES))
    assert neither.returncode == 1 and "--source redis://" in neither.stderr
    bad = cli("run", "-r", str(RULES), "--source", "files")
    assert bad.returncode == 1 and "takes a Redis URL" in bad.stderr


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("leadscore_flow_") and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_run_source_live_serves_metrics_counts_duplicates_and_stops_on_sigterm(
    redis_url: str, events: tuple[Path, list[bytes]], tmp_path: Path
) -> None:
    path, lines = events
    port = free_port()
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        flow = subprocess.Popen(
            [
                *LEADSCORE,
                "run",
                "-r",
                str(RULES),
                "--source",
                redis_url,
                "--metrics-port",
                str(port),
                "--flush-ms",
                "5",
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        assert cli("send", "--redis", redis_url, "-e", str(path)).returncode == 0
        again = tmp_path / "again.jsonl"
        again.write_bytes(lines[0] + b"\n")  # the same event (same id) once more
        assert cli("send", "--redis", redis_url, "-e", str(again)).returncode == 0
        deadline = time.monotonic() + 60
        metrics: dict[str, float] = {}
        while (
            metrics.get("leadscore_flow_events_scored_total", 0)
            + metrics.get("leadscore_flow_duplicates_total", 0)
            < 61
        ):
            assert flow.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
            try:
                metrics = scrape(port)
            except OSError:
                continue  # not listening yet
        assert metrics["leadscore_flow_events_scored_total"] == 60
        assert metrics["leadscore_flow_duplicates_total"] == 1
        assert metrics['leadscore_flow_dead_letters_total{reason="invalid_json"}'] == 1
        flow.send_signal(signal.SIGTERM)
        assert flow.wait(60) == 0, log.read_text()
    finally:
        if flow.poll() is None:
            flow.kill()
    text = log.read_text()
    assert "SIGTERM: stopping" in text and "60 events scored, 1 duplicates dropped" in text
    store = RedisStore(redis_url)
    assert [store.pending(p) for p in range(16)] == [0] * 16


def test_compose_file_uses_only_options_that_exist() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    for name in ("flow", "service", "deliver"):
        command = compose["services"][name]["command"]
        helped = cli(command[0], "--help")
        assert helped.returncode == 0
        for arg in command[1:]:
            if arg.startswith("--"):
                assert arg in helped.stdout, f"{name}: {arg} is not an option of {command[0]}"
    flow = compose["services"]["flow"]["command"]
    assert flow[flow.index("--metrics-host") + 1] == "0.0.0.0"  # reachable through the port map


# --------------------------------------------------------------------------- Redis down


@pytest.mark.parametrize(
    "command",
    [
        ("send", "-e", "-"),
        ("show", "c-1"),
        ("run", "--rules", str(RULES), "--source"),
        ("run", "-p", "2", "--rules", str(RULES), "--source"),
        ("serve", "--port", str(free_port())),
    ],
    ids=lambda c: "-".join(c[:3]) if c[1] == "-p" else c[0],
)
def test_a_command_facing_a_closed_port_fails_fast_with_one_line(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    args = [*command, url] if command[0] == "run" else [*command, "--redis", url]
    env = {**os.environ, "LEADSCORE_WRITE_KEYS": "k"}
    done = subprocess.run(
        [*LEADSCORE, *args],
        input=ev("c-1", 1).decode() + "\n",
        capture_output=True,
        text=True,
        timeout=20,  # the bound: the old retry policy took ~30 s and printed ~20 warnings
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    masked = url.replace(":s3cret@", ":***@")
    assert masked in lines[0] and "s3cret" not in done.stderr
    assert "cannot reach Redis" in lines[0] and "check" in lines[0]
