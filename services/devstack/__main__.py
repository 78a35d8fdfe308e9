"""``python -m services.devstack up|down|run|status|provision|install``: the local stack's command line.

Flags override the ``PLG_STACK_*`` environment, which overrides the defaults (Kafka 127.0.0.1:9092,
registry :8081, PostgreSQL :5433, files under ``.plg/``).
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from services.devstack import chromium, gotools, monitoring, stripe_mock
from services.devstack import kafka as kafka_mod
from services.devstack import postgres as pg
from services.devstack.config import StackSettings
from services.devstack.processes import StartError
from services.devstack.stack import Stack, format_timings
from services.kernel.provision import provision_all
from services.kernel.settings import KafkaSettings, SchemaRegistrySettings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m services.devstack", description=__doc__)
    parser.add_argument(
        "command",
        choices=["up", "down", "run", "status", "provision", "install", "monitor"],
        help="up: start in the background; down: stop; run: foreground until Ctrl-C; status; "
        "provision: create topics and register schemas; "
        "monitor: start Prometheus and Alertmanager scraping the running stack; "
        "install: fetch Kafka jars, PostgreSQL, stripe-mock, Chromium, the Go tools (compose-go, helm, "
        "the tests' OIDC provider)",
    )
    parser.add_argument("--root", type=Path, help="data, logs and pid files (default .plg)")
    parser.add_argument("--kafka-port", type=int)
    parser.add_argument("--kafka-controller-port", type=int)
    parser.add_argument("--postgres-port", type=int)
    parser.add_argument("--registry-port", type=int)
    parser.add_argument("--stripe-mock-port", type=int)
    parser.add_argument("--stripe-mock-https-port", type=int)
    parser.add_argument("--stripe-emulator-port", type=int)
    parser.add_argument(
        "--service-port",
        action="append",
        default=[],
        metavar="NAME=PORT",
        help="port of an app service, e.g. --service-port ingest=18080",
    )
    parser.add_argument("--no-apps", action="store_true", help="only Kafka, PostgreSQL and the registry")
    parser.add_argument("--prefix", default="", help="topic prefix for `provision`")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> StackSettings:
    settings = StackSettings()
    update: dict[str, object] = {}
    for field in (
        "root",
        "kafka_port",
        "kafka_controller_port",
        "postgres_port",
        "registry_port",
        "stripe_mock_port",
        "stripe_mock_https_port",
        "stripe_emulator_port",
    ):
        value = getattr(args, field)
        if value is not None:
            update[field] = value.resolve() if isinstance(value, Path) else value
    if args.service_port:
        ports = dict(settings.service_ports)
        for item in args.service_port:
            name, _, port = item.partition("=")
            if not port.isdigit():
                raise SystemExit(f"--service-port wants NAME=PORT, not {item!r}")
            ports[name] = int(port)
        update["service_ports"] = ports
    if args.no_apps:
        update["with_apps"] = False
    return settings.model_copy(update=update)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_from(args)
    stack = Stack(settings)
    try:
        if args.command == "install":
            # The Go builds (stripe-mock, compose-go's loader, helm) are CPU and download bound and
            # independent of the JVM/apt steps: they run in the background while those go on.
            with ThreadPoolExecutor(max_workers=2) as pool:
                stripe = pool.submit(stripe_mock.ensure_installed, settings.bin_dir)
                tools = pool.submit(gotools.ensure_all, settings.bin_dir)
                took = kafka_mod.ensure_jars(settings.kafka_libs)
                print("Kafka jars: " + ("already current" if took is None else f"fetched in {took:.1f}s"))
                print(f"PostgreSQL: {pg.ensure_installed()}")
                print(f"Chromium (browser tests): {chromium.ensure_installed() or 'not installed'}")
                print(f"Prometheus, Alertmanager (monitoring): {monitoring.ensure_installed()}")
                took = stripe.result()
                print(
                    f"stripe-mock {stripe_mock.VERSION}: "
                    + ("present" if took is None else f"installed in {took:.1f}s")
                )
                for name, built in tools.result().items():
                    print(f"{name}: " + ("present" if built is None else f"built in {built:.1f}s"))
            return 0
        if args.command == "up":
            elapsed = stack.up()
            print(f"plg stack up in {elapsed:.1f}s ({format_timings(stack.timings)}):")
            print("\n".join(row.line() for row in stack.status()))
            print(f"logs in {settings.logs_dir}; stop with `make down`")
            return 0
        if args.command == "run":
            return stack.run()
        if args.command == "monitor":
            monitor = monitoring.Monitor(stack, monitoring.ports_of(settings))
            monitor.up()
            targets = monitor.wait_all_up(timeout=settings.start_timeout)
            print(
                f"Prometheus {monitor.prometheus_url} (alerts: {monitor.prometheus_url}/alerts), "
                f"Alertmanager {monitor.alertmanager_url}; every target up:"
            )
            for target in sorted(targets, key=lambda t: str(t["labels"]["job"])):
                print(f"  {target['labels']['job']:<20} {target['scrapeUrl']}")
            print("stop with `make down`")
            return 0
        if args.command == "down":
            started = time.monotonic()
            monitoring.Monitor(stack, monitoring.ports_of(settings)).down()
            stack.down()
            print(f"plg stack stopped in {time.monotonic() - started:.1f}s")
            return 0
        if args.command == "status":
            rows = stack.status()
            print("\n".join(row.line() for row in rows))
            return 0 if all(r.healthy for r in rows if r.pid is not None) else 1
        if args.command == "provision":
            created, ids = provision_all(
                KafkaSettings(bootstrap_servers=stack.kafka_bootstrap),
                SchemaRegistrySettings(url=stack.registry_url),
                prefix=args.prefix,
            )
            print(f"created topics: {', '.join(created) or 'none (all existed)'}")
            for subject, schema_id in ids.items():
                print(f"  {subject}: id {schema_id}")
            return 0
    except StartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
