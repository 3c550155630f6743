"""The transport's own cost: CPU per published record of several consumer groups in one process, at a fixed rate.

No HTTP, no services, no logging: one publisher and N groups of batch handlers that only count, as the pipeline's
stages read `order-events`. It measures what `[transport.kafka]` options change (fetch waits, batches, commits) far
below the noise of the end-to-end benchmark: each round runs the default options and then `--compare` ones.
Every run creates a topic `bench-consumers-<random>` of 3 partitions and leaves it (and its groups) behind: point
it at a throw-away broker (`scripts/kafka start --fresh`).

    python -m meshrun_bench.consumers --groups 5 --rate 2500 --seconds 6 --rounds 3 \\
        --compare fetch_min_bytes=65536,fetch_max_wait_ms=10
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from dataclasses import dataclass
from typing import Any, Sequence

from meshrun.config import KafkaTransportConfig, RetryConfig, TopicConfig
from meshrun.logs import configure_logging
from meshrun.transport.base import Record
from meshrun.transport.kafka import KafkaTransport

VALUE = b"x" * 500  # about the size of an order event
TICK = 0.002  # seconds between the publisher's bursts (it publishes what became due meanwhile)


@dataclass(frozen=True)
class RoundResult:
    options: str
    cpu_us_per_record: float  # process CPU per published record, every group's consumption included
    cores: float
    published: int
    handled: int  # records handled by all groups during the measured window (groups * published when caught up)


def parse_options(text: str) -> dict[str, Any]:
    """`key=value,key=value` -> options (integers where they parse as integers)."""
    options: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"expected key=value, got {part!r}")
        options[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else value.strip()
    return options


async def measure(bootstrap: str, options: dict[str, Any], *, groups: int, rate: float, seconds: float,
                  warmup: float, max_batch: int) -> RoundResult:
    """Publish at `rate` for `warmup + seconds`, consumed by `groups` groups; CPU counted after the warm-up."""
    transport = KafkaTransport(KafkaTransportConfig(bootstrap, options))
    await transport.start()
    try:
        topic = f"bench-consumers-{uuid.uuid4().hex[:8]}"
        await transport.ensure_topics([TopicConfig(topic, 3)])
        handled = [0]

        async def count(records: Sequence[Record]) -> None:
            handled[0] += len(records)

        subs = [await transport.subscribe(topic, f"{topic}-g{g}", count, retry=RetryConfig(), max_batch=max_batch)
                for g in range(groups)]
        for sub in subs:
            await sub.wait_joined(60)
        sent = 0
        started = time.monotonic()
        pending: list[asyncio.Future[Any]] = []

        async def publish_until(deadline: float) -> None:
            nonlocal sent
            while (now := time.monotonic()) < deadline:
                for _ in range(int((now - started) * rate) - sent):
                    pending.append(await transport.send(topic, VALUE, key=str(sent).encode()))
                    sent += 1
                if len(pending) > 1000:
                    await asyncio.gather(*pending)
                    pending.clear()
                await asyncio.sleep(TICK)

        await publish_until(started + warmup)
        cpu_start, handled_start, published_start, at = os.times(), handled[0], sent, time.monotonic()
        await publish_until(started + warmup + seconds)
        cpu_end, handled_end, at_end = os.times(), handled[0], time.monotonic()
        await asyncio.gather(*pending)
        for sub in subs:
            await sub.stop(5)
    finally:
        await transport.stop()
    cpu = (cpu_end.user + cpu_end.system) - (cpu_start.user + cpu_start.system)
    count_published = max(1, sent - published_start)
    shown = ",".join(f"{k}={v}" for k, v in options.items()) or "defaults"
    return RoundResult(shown, 1e6 * cpu / count_published, cpu / (at_end - at), count_published,
                       handled_end - handled_start)


async def run(args: argparse.Namespace) -> list[RoundResult]:
    option_sets = [{}] + ([args.compare] if args.compare is not None else [])
    results = []
    for round_no in range(1, args.rounds + 1):
        for options in option_sets:  # alternated, so a drift of the machine falls on both
            result = await measure(args.bootstrap, options, groups=args.groups, rate=args.rate,
                                   seconds=args.seconds, warmup=args.warmup, max_batch=args.max_batch)
            results.append(result)
            print(f"round {round_no}: {result.options:45s} {result.cpu_us_per_record:7.1f} us CPU per published "
                  f"record, {result.cores:.2f} cores, {result.published} published, {result.handled} handled",
                  flush=True)
    for shown in dict.fromkeys(r.options for r in results):
        figures = [r.cpu_us_per_record for r in results if r.options == shown]
        print(f"median of {len(figures)}: {shown:40s} {statistics.median(figures):7.1f} us "
              f"({min(figures):.1f}-{max(figures):.1f})")
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default=os.environ.get("MESHRUN_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    parser.add_argument("--groups", type=int, default=5, help="consumer groups reading the topic (default 5)")
    parser.add_argument("--rate", type=float, default=2500, help="records published per second (default 2500)")
    parser.add_argument("--seconds", type=float, default=6, help="measured seconds per run (default 6)")
    parser.add_argument("--warmup", type=float, default=2, help="seconds before measuring (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each option set, alternated (default 3)")
    parser.add_argument("--max-batch", type=int, default=100, help="records per handler call at most (default 100)")
    parser.add_argument("--compare", type=parse_options, default=None, metavar="KEY=VALUE,...",
                        help="[transport.kafka] options to measure against the defaults in every round")
    args = parser.parse_args(argv)
    configure_logging("console", "warning")
    try:
        import uvloop
    except ImportError:  # the stock loop: figures not comparable with uvloop's
        asyncio.run(run(args))
    else:
        uvloop.run(run(args))


if __name__ == "__main__":
    main()
