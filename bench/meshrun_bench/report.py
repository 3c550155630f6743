"""The figures of one benchmark run: dataclasses, the table printed at the end, the JSON file, the progress line.

Presentation only: nothing here measures anything.
"""
from __future__ import annotations

import dataclasses
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

# 2: `rounds` and `rounds_summary` added; with --rounds N the main figures are those of the median round, not the
# only one, and lost/doubled of the whole command are the summary's sums.
REPORT_VERSION = 2


@dataclass(frozen=True, slots=True)
class Latency:
    """Latency in milliseconds: from the order's start (send or due time) to its notification (or, accept-only, to
    the Order service's answer)."""

    p50: float
    p95: float
    p99: float
    max: float
    samples: int

    @classmethod
    def of(cls, seconds: list[float]) -> Latency | None:
        if not seconds:
            return None
        ordered = sorted(seconds)
        n = len(ordered)

        def pick(q: float) -> float:  # nearest rank, so p99 of 100 samples is the 99th
            return round(ordered[min(n - 1, max(0, math.ceil(q * n) - 1))] * 1000, 2)

        return cls(pick(0.50), pick(0.95), pick(0.99), round(ordered[-1] * 1000, 2), n)


@dataclass(frozen=True, slots=True)
class ProcessMemory:
    """Resident memory (VmRSS) of one process, idle after ready and after the run."""

    label: str
    pid: int
    idle_mb: float | None
    after_mb: float | None


@dataclass(slots=True)
class PipelineFigures:
    """What one pipeline (meshrun's, or the framework-free floor) did under the load.

    Accept-only (`accept_only`), nothing follows the orders past the Order service's answer: lost and doubled
    compare the orders accepted with the records the broker appended to order-events, and the end-to-end rate
    is None (not measured).
    """

    name: str
    mode: str                         # closed | open
    latency_from: str                 # send | due
    accept_only: bool = False
    latency_to: str = "notification"  # notification | answer (accept-only)
    sent: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)   # status (or "error") -> count
    notified: int = 0
    appended: int | None = None       # accept-only: records appended to order-events during the run, per the broker
    lost: int = 0
    doubled: int = 0
    doubled_in_records: int = 0       # this run's order ids listed more than once by GET /notifications
    doubled_from_stats: int = 0       # delta of orders_notified_more_than_once in GET /notifications/stats
    duplicates_absorbed: int = 0      # delta: redelivered notifications the User service recognised
    elapsed_seconds: float = 0.0
    accepted_per_second: float = 0.0
    notified_per_second: float | None = 0.0
    latency_ms: Latency | None = None
    generator_late_ms_max: float | None = None   # open loop: how late the generator itself sent an order
    ready_seconds: float | None = None
    memory: list[ProcessMemory] = field(default_factory=list)
    cpu: dict[str, float | None] = field(default_factory=dict)   # see probes.CpuMeter


@dataclass(frozen=True, slots=True)
class RoundFigures:
    """One round of `--rounds N`: the figures the rounds are compared by (ratios are meshrun/raw, as in Report)."""

    round: int
    notified_per_second: float | None
    pipeline_cpu_ms_per_order: float | None
    lost: int
    doubled: int
    raw_notified_per_second: float | None = None
    raw_pipeline_cpu_ms_per_order: float | None = None
    notified_ratio: float | None = None
    cpu_ratio: float | None = None


@dataclass(slots=True)
class Report:
    """One `meshrun bench` run: its environment, meshrun's figures, the probes and, with --compare-raw, the floor."""

    command: str
    transport: str
    config: str
    environment: dict[str, Any]
    mesh_log: dict[str, Any]
    meshrun: PipelineFigures
    token_endpoint_per_second: float | None = None
    token_verification_us: dict[str, float] | None = None
    machine_tokens_fetched: dict[str, int | None] | None = None
    raw: PipelineFigures | None = None
    notes: list[str] = field(default_factory=list)
    rounds: list[RoundFigures] = field(default_factory=list)   # every round, in order (one without --rounds)
    median_round: int | None = None                             # the round whose figures the report holds

    def ratios(self) -> dict[str, float] | None:
        """meshrun's figures divided by the floor's: above 1 is better for rates, worse for latencies and memory."""
        if self.raw is None:
            return None
        m, r = self.meshrun, self.raw
        out: dict[str, float] = {}

        def put(name: str, a: float | None, b: float | None) -> None:
            if a is not None and b:
                out[name] = round(a / b, 3)

        put("accepted_per_second", m.accepted_per_second, r.accepted_per_second)
        put("notified_per_second", m.notified_per_second, r.notified_per_second)
        if m.latency_ms and r.latency_ms:
            for q in ("p50", "p95", "p99", "max"):
                put(f"latency_{q}", getattr(m.latency_ms, q), getattr(r.latency_ms, q))
        put("ready_seconds", m.ready_seconds, r.ready_seconds)
        put("rss_after_mb", _total(m.memory, "after_mb"), _total(r.memory, "after_mb"))
        put("pipeline_cpu_ms_per_order", m.cpu.get("pipeline_ms_per_order"), r.cpu.get("pipeline_ms_per_order"))
        return out

    def round_figures(self, number: int) -> RoundFigures:
        """This report's figures as round `number` of several."""
        m, r, ratios = self.meshrun, self.raw, self.ratios() or {}
        return RoundFigures(
            round=number, notified_per_second=m.notified_per_second,
            pipeline_cpu_ms_per_order=m.cpu.get("pipeline_ms_per_order"), lost=m.lost, doubled=m.doubled,
            raw_notified_per_second=r.notified_per_second if r else None,
            raw_pipeline_cpu_ms_per_order=r.cpu.get("pipeline_ms_per_order") if r else None,
            notified_ratio=ratios.get("notified_per_second"), cpu_ratio=ratios.get("pipeline_cpu_ms_per_order"))

    def rounds_summary(self) -> dict[str, Any] | None:
        """Median and range over the rounds of what they are compared by, and lost and doubled summed."""
        if not self.rounds:
            return None
        keys = ("notified_ratio", "cpu_ratio") if self.raw else ("notified_per_second", "pipeline_cpu_ms_per_order")
        summary: dict[str, Any] = {"rounds": len(self.rounds), "median_round": self.median_round,
                                   "lost": sum(x.lost for x in self.rounds),
                                   "doubled": sum(x.doubled for x in self.rounds)}
        for key in keys:
            values = [v for v in (getattr(x, key) for x in self.rounds) if v is not None]
            summary[key] = ({"median": round(statistics.median(values), 3), "min": min(values), "max": max(values)}
                            if values else None)
        return summary

    def lost_and_doubled(self) -> tuple[int, int]:
        """Orders lost and doubled over every round (the command fails if either is not 0)."""
        if not self.rounds:
            return self.meshrun.lost, self.meshrun.doubled
        return sum(x.lost for x in self.rounds), sum(x.doubled for x in self.rounds)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["report_version"] = REPORT_VERSION
        data["ratio_to_raw"] = self.ratios()
        data["rounds_summary"] = self.rounds_summary()
        return data


def median_of_rounds(reports: list[Report]) -> Report:
    """The report of the median round, holding every round's figures.

    The median is by the end-to-end meshrun/raw ratio (both measured in the same round, so the machine's drift
    between rounds mostly cancels), or without the floor by meshrun's end-to-end rate. With an even number of
    rounds it is the lower of the two middle ones: the less flattering to meshrun.
    """
    rounds = [report.round_figures(number) for number, report in enumerate(reports, 1)]

    def key(x: RoundFigures) -> float:
        value = x.notified_ratio if reports[0].raw else x.notified_per_second
        return value if value is not None else 0.0

    median = sorted(rounds, key=key)[(len(rounds) - 1) // 2]
    report = reports[median.round - 1]
    report.rounds, report.median_round = rounds, median.round
    # A note of another round (a backlog, failed token requests) still concerns the figures of the summary.
    report.notes += [f"round {n}: {note}" for n, other in enumerate(reports, 1) if other is not report
                     for note in other.notes]
    return report


def _total(memory: list[ProcessMemory], attr: str) -> float | None:
    values = [getattr(m, attr) for m in memory]
    return round(sum(values), 1) if values and None not in values else None


def environment(repo: Path | None = None) -> dict[str, Any]:
    """The machine and the code: what a figure needs next to it to mean anything."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = None
    dirty = None
    try:
        where = str(repo or Path(__file__).resolve().parents[2])
        commit = subprocess.run(["git", "-C", where, "rev-parse", "--short", "HEAD"], check=False,
                                capture_output=True, text=True, timeout=5).stdout.strip() or None
        status = subprocess.run(["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
                                check=False, capture_output=True, text=True, timeout=5).stdout
        dirty = bool(status.strip()) if commit else None
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import uvloop  # noqa: F401

        loop = "uvloop" if os.environ.get("MESHRUN_UVLOOP", "1") != "0" else "asyncio"
    except ImportError:
        loop = "asyncio"
    return {"commit": commit, "dirty": dirty, "nproc": os.cpu_count(), "cpu": cpu,
            "python": platform.python_version(), "platform": platform.platform(), "event_loop": loop,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def _num(value: float | None, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{unit}"


def render_table(report: Report) -> str:
    """The plain aligned table printed at the end of a run."""
    m, r = report.meshrun, report.raw
    ratios = report.ratios() or {}
    head = ["figure", "meshrun"] + (["raw floor", "meshrun/raw"] if r else [])
    rows: list[list[str]] = []

    def row(label: str, mine: str, floor: str = "", ratio_key: str | None = None) -> None:
        cells = [label, mine]
        if r:
            cells += [floor, f"{ratios[ratio_key]:.2f}x" if ratio_key and ratio_key in ratios else ""]
        rows.append(cells)

    def both(fn: Any) -> tuple[str, str]:
        return fn(m), (fn(r) if r else "")

    row("launch to ready (s)", *both(lambda p: _num(p.ready_seconds, 3)), "ready_seconds")
    row("orders sent / accepted", *both(lambda p: f"{p.sent:,} / {p.accepted:,}"))
    row("rejected", *both(lambda p: ", ".join(f"{k}: {v}" for k, v in p.rejected.items()) or "0"))
    row("orders accepted per s", *both(lambda p: _num(p.accepted_per_second)), "accepted_per_second")
    row("orders notified end to end per s", *both(lambda p: _num(p.notified_per_second)), "notified_per_second")
    if m.appended is not None:
        row("records appended to order-events", f"{m.appended:,}")
    latency_span = f"from {m.latency_from}" + (" to answer" if m.latency_to == "answer" else "")
    for q in ("p50", "p95", "p99", "max"):
        row(f"latency {q} (ms, {latency_span})",
            *both(lambda p, q=q: _num(getattr(p.latency_ms, q), 2) if p.latency_ms else "-"), f"latency_{q}")
    if m.generator_late_ms_max is not None:
        row("generator late, max (ms)", *both(lambda p: _num(p.generator_late_ms_max, 2)))
    row("CPU per order, pipeline (ms)", *both(lambda p: _num(p.cpu.get("pipeline_ms_per_order"), 3)),
        "pipeline_cpu_ms_per_order")
    if m.cpu.get("broker_ms_per_order") is not None:
        row("CPU per order, Kafka broker (ms)", *both(lambda p: _num(p.cpu.get("broker_ms_per_order"), 3)))
    row("CPU per order, load generator (ms)", *both(lambda p: _num(p.cpu.get("load_generator_ms_per_order"), 3)))
    row("other processes meanwhile (cores)", *both(lambda p: _num(p.cpu.get("other_processes_cores"), 2)))
    row("events lost", *both(lambda p: str(p.lost)))
    row("events doubled", *both(lambda p: str(p.doubled)))
    row("redeliveries absorbed (idempotency)",
        *both(lambda p: "-" if p.accept_only else str(p.duplicates_absorbed)))
    for pm in m.memory:
        row(f"RSS {pm.label} idle / after (MB)", f"{_num(pm.idle_mb)} / {_num(pm.after_mb)}")
    if r:
        for pm in r.memory:
            row(f"RSS {pm.label} idle / after (MB)", "", f"{_num(pm.idle_mb)} / {_num(pm.after_mb)}")
    row("token endpoint (tokens/s)", _num(report.token_endpoint_per_second))
    tv = report.token_verification_us or {}
    row("token verification, amortised (us)", _num(tv.get("amortised_us"), 2))
    row("token verification, first (us)", _num(tv.get("first_us"), 1))
    mt = report.machine_tokens_fetched or {}
    row("machine tokens fetched (run / total)", f"{mt.get('during_run', '-')} / {mt.get('total', '-')}")
    env = report.environment
    title = (f"meshrun bench: {report.transport}, {m.mode} loop{', accept only' if m.accept_only else ''}, "
             f"commit {env.get('commit')}"
             f"{' (dirty)' if env.get('dirty') else ''}, {env.get('nproc')} cores, {env.get('cpu')}, "
             f"Python {env.get('python')}, {env.get('event_loop')}")
    if len(report.rounds) > 1:
        by = "end-to-end meshrun/raw ratio" if r else "meshrun end-to-end rate"
        title += f"\nfigures of round {report.median_round} of {len(report.rounds)}, the median by {by}"
    return "\n".join([title, *_aligned(head, rows), *_rounds_lines(report),
                      *(f"note: {n}" for n in report.notes)])


def _aligned(head: list[str], rows: list[list[str]]) -> list[str]:
    """Columns padded to their widest cell: the first to the left, the others to the right, a rule under `head`."""
    widths = [max(len(x[i]) for x in rows + [head]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
             for cells in [head] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _rounds_lines(report: Report) -> list[str]:
    """With several rounds: each round's rate and CPU per order (and the floor's, and the ratios), then the
    median and range of what the rounds are compared by, and lost/doubled over all of them."""
    summary = report.rounds_summary()
    if summary is None or len(report.rounds) < 2:
        return []
    compared = report.raw is not None
    head = ["round", "meshrun e2e/s", "CPU/order (ms)"]
    if compared:
        head += ["raw e2e/s", "raw CPU/order (ms)", "e2e ratio", "CPU ratio"]
    rows: list[list[str]] = []
    for x in report.rounds:
        cells = [f"{x.round}{' (median)' if x.round == report.median_round else ''}",
                 _num(x.notified_per_second), _num(x.pipeline_cpu_ms_per_order, 3)]
        if compared:
            cells += [_num(x.raw_notified_per_second), _num(x.raw_pipeline_cpu_ms_per_order, 3),
                      _ratio(x.notified_ratio), _ratio(x.cpu_ratio)]
        rows.append(cells)

    def spread(label: str, key: str, show: Any) -> str:
        s = summary[key]
        return f"{label}: median {show(s['median'])}, min-max {show(s['min'])} - {show(s['max'])}" if s else \
            f"{label}: -"

    if compared:
        spreads = [spread("end-to-end ratio", "notified_ratio", _ratio),
                   spread("CPU per order ratio", "cpu_ratio", _ratio)]
    else:
        spreads = [spread("meshrun end to end per s", "notified_per_second", _num),
                   spread("CPU per order (ms)", "pipeline_cpu_ms_per_order", lambda v: _num(v, 3))]
    return ["", *_aligned(head, rows), *spreads,
            f"events lost / doubled over the {summary['rounds']} rounds: {summary['lost']} / {summary['doubled']}"]


class Progress:
    """One `\\r` line on a terminal (nothing when the output is a file or a pipe)."""

    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.round = ""   # "round i/N " while --rounds repeats the measurement, so the line says which one runs
        self._shown = False

    def update(self, label: str, done: int, total: int, detail: str = "") -> None:
        if not self.enabled:
            return
        width = 30
        filled = int(width * done / total) if total else width
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(f"\r{self.round}{label:<10} [{bar}] {done:>7,}/{total:,} {detail}".ljust(110)[:140])
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            self.stream.write("\r" + " " * 140 + "\r")
            self.stream.flush()
            self._shown = False
