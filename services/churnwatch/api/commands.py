"""
`churnwatch api`, `churnwatch at-risk`, `churnwatch overview` and `churnwatch feedback`:
`register(group)` adds them to the CLI group (cli.py calls it).

Settings come from the environment (`CHURNWATCH_API_*`, `CHURNWATCH_REDIS_*`,
`CHURNWATCH_KAFKA_PARTITIONS`, the core's `CHURNWATCH_RULES_FILE`; see churnwatch.api.settings).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from churnwatch.cli_settings import settings_from_env
from churnwatch.core.errors import ChurnwatchError

log = logging.getLogger(__name__)
T = TypeVar("T")


def _settings(overrides: dict[str, Any]) -> Any:
    from churnwatch.api.settings import ApiSettings

    return settings_from_env(ApiSettings, overrides, env="CHURNWATCH_API_*, CHURNWATCH_*")


def _with_views(settings: Any, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work(views)` against the store of `settings`; store and API errors as click errors."""
    from churnwatch.api.views import BadParameterError, NotFoundError, Views
    from churnwatch.store import RedisStore

    async def run() -> T:
        store = RedisStore(settings.redis)
        await store.start()
        try:
            views = Views(store, settings.to_policy(), partitions=settings.topic_partitions)
            return await work(views)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except (BadParameterError, NotFoundError) as exc:
        raise click.BadParameter(exc.message, param_hint=exc.parameter) from exc
    except ChurnwatchError as exc:
        raise click.ClickException(str(exc)) from exc


@click.command("api")
@click.option("--host", default=None, help="Default: CHURNWATCH_API_HOST (127.0.0.1).")
@click.option("--port", type=int, default=None, help="Default: CHURNWATCH_API_PORT (9467).")
def api(host: str | None, port: int | None) -> None:
    """Serve the at-risk API, the web page for CS teams and /metrics until SIGINT/SIGTERM."""
    import signal

    from churnwatch.api.app import serve_forever

    settings = _settings({"host": host, "port": port})
    settings.check_auth()  # before anything starts: a one-line error, exit code 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    def ready() -> None:
        # Said once it serves: before, an unreachable Redis would follow a URL that never works.
        guard = "no tokens (CHURNWATCH_API_AUTH=off)" if settings.auth == "off" else "tokens"
        click.echo(f"churnwatch api on http://{settings.host}:{settings.port}/ ({guard})", err=True)

    async def main() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            if task is not None:
                loop.add_signal_handler(sig, task.cancel)
        try:
            await serve_forever(settings, ready)
        except asyncio.CancelledError:
            log.info("api.stopped")

    try:
        asyncio.run(main())
    except ChurnwatchError as exc:
        raise click.ClickException(str(exc)) from exc


@click.command("at-risk")
@click.option("--segment", default=None, help="Only this segment of the rules file.")
@click.option("--sort", type=click.Choice(["score", "change"]), default="score", show_default=True)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--offset", default=0, show_default=True, type=click.IntRange(0))
@click.option("--json", "as_json", is_flag=True, help="The API's JSON instead of a table.")
@click.option(
    "--alerts",
    "show_alerts",
    is_flag=True,
    help="A column with the ids of each customer's open alerts (no verdict yet), for "
    "`churnwatch feedback ALERT_ID VERDICT`.",
)
@click.option(
    "--all",
    "everyone",
    is_flag=True,
    help="Every customer still at risk, not only those who need action.",
)
def at_risk(
    segment: str | None,
    sort: str,
    limit: int,
    offset: int,
    as_json: bool,
    show_alerts: bool,
    everyone: bool,
) -> None:
    """
    The customers who need action (an engagement score below their segment's threshold, or an
    alert without a verdict), riskiest first, as the API lists them (reads Redis); --all for
    everyone.
    """
    from churnwatch.api.views import parse_list_query

    settings = _settings({})

    async def work(views: Any) -> Any:
        query = parse_list_query(
            {
                "sort": sort,
                "segment": segment or "",
                "limit": str(limit),
                "offset": str(offset),
                "show": "all" if everyone else "action",
            },
            segments=views.segments,
            default_limit=limit,
            max_limit=10_000,
        )
        return await views.at_risk(query)

    page = _with_views(settings, work)
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(page, option=orjson.OPT_INDENT_2) + b"\n")
        return
    from rich.table import Table

    from churnwatch.console import terminal

    if page["show"] == "action":
        title = (
            f"need action: {page['total']} customers, by {sort} "
            f"({page['others']} others need no action; --all lists everyone)"
        )
    else:
        title = f"at risk: {page['total']} customers, by {sort}"
    click.echo(f"Listed: {page['definition']}.")
    table = Table(title=title)
    for column in ("customer", "segment", "risk", "score", "change", "top reason", "open"):
        table.add_column(column)
    if show_alerts:
        table.add_column("open alerts (rule: id)", overflow="fold")
    for item in page["items"]:
        change = item["change"]
        reasons = item["top_reasons"]
        row = [
            item["customer_id"],
            item["segment"],
            f"{item['churn_probability']:.2f}",
            f"{item['engagement_score']:.0f}",
            "" if change is None else f"{change:+.2f}",
            reasons[0]["text"] if reasons else "",
            str(len(item["open_alerts"])),
        ]
        if show_alerts:
            row.append("\n".join(f"{a['rule']}: {a['alert_id']}" for a in item["open_alerts"]))
        table.add_row(*row)
    terminal().print(table)


@click.command("overview")
@click.option(
    "--weeks",
    default=None,
    type=int,
    help="Weeks of trend and alerts, ending at the newest scoring (default 12, at most 104).",
)
@click.option("--json", "as_json", is_flag=True, help="The API's JSON instead of tables.")
def overview(weeks: int | None, as_json: bool) -> None:
    """
    The whole base as GET /api/v1/overview gives it (reads Redis): risk by segment, at risk
    by week, churned and saved with their revenue, alerts by week and rule with their
    verdicts, satisfaction and ticket resolution.
    """
    from churnwatch.api.overview import DEFAULT_WEEKS

    settings = _settings({})
    wanted = DEFAULT_WEEKS if weeks is None else weeks

    async def work(views: Any) -> Any:
        return await views.overview(wanted)

    data = _with_views(settings, work)
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
        return
    from churnwatch.console import render_overview, terminal

    render_overview(terminal(), data)


@click.command("feedback")
@click.argument("alert_id", required=False)
@click.argument("verdict", required=False)
@click.option("--by", default="", help="Who gives the verdict.")
@click.option("--note", default="", help="A note kept with the verdict.")
@click.option(
    "--export",
    "export",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    default=None,
    help="Instead: write every stored verdict as JSONL to this file ('-': standard output); "
    "`backtest --verdicts` reads it.",
)
@click.option(
    "--customer",
    default=None,
    help="Name the alert by its customer and --rule instead of its id: the customer's newest "
    "alert of that rule (`churnwatch feedback --customer C --rule R VERDICT`).",
)
@click.option("--rule", default=None, help="With --customer: the rule of the alert.")
def feedback(
    alert_id: str | None,
    verdict: str | None,
    by: str,
    note: str,
    export: Path | None,
    customer: str | None,
    rule: str | None,
) -> None:
    """
    Give a verdict on an alert: `churnwatch feedback ALERT_ID VERDICT`, VERDICT one of useful,
    false_alarm, saved, lost (one per alert: a new one replaces it, the same one is a no-op).
    The ids are in `churnwatch at-risk --alerts` and on the customer's page; or name the alert
    with `--customer C --rule R VERDICT`.
    """
    settings = _settings({})
    if export is not None:
        if alert_id is not None or customer is not None:
            msg = "--export takes no ALERT_ID, VERDICT or --customer"
            raise click.UsageError(msg)
        _export(settings, export)
        return
    if (customer is None) != (rule is None):
        msg = "--customer and --rule go together (the customer's newest alert of that rule)"
        raise click.UsageError(msg)
    if customer is not None:
        if verdict is not None:
            msg = "with --customer and --rule, give only the VERDICT"
            raise click.UsageError(msg)
        verdict, alert_id = alert_id, None
        if verdict is None:
            msg = "expected --customer C --rule R VERDICT"
            raise click.UsageError(msg)
    elif alert_id is None or verdict is None:
        msg = "expected ALERT_ID VERDICT, --customer C --rule R VERDICT, or --export FILE"
        raise click.UsageError(msg)

    async def work(views: Any) -> Any:
        chosen = alert_id
        if chosen is None:
            chosen = await views.latest_alert_id(customer, rule)
        return await views.give_verdict(chosen, verdict, by=by, note=note)

    result = _with_views(settings, work)
    if result["changed"]:
        before = "" if result["previous"] is None else f" (was {result['previous']})"
        click.echo(f"{result['alert_id']}: {result['verdict']}{before}")
    else:
        click.echo(f"{result['alert_id']}: {result['verdict']} (already given, stored once)")


def _export(settings: Any, out: Path) -> None:
    """Every stored verdict, one JSON line per alert, sorted by alert id."""

    async def work(views: Any) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = await views.store.all_verdicts()
        return found

    verdicts = _with_views(settings, work)
    lines = b"".join(
        orjson.dumps(verdicts[k], option=orjson.OPT_SORT_KEYS) + b"\n" for k in sorted(verdicts)
    )
    if str(out) == "-":
        sys.stdout.buffer.write(lines)
    else:
        out.write_bytes(lines)
        click.echo(f"{len(verdicts)} verdicts -> {out}", err=True)


class _PrefixInUse(Exception):
    pass


class _CannotAppend(Exception):
    pass


def _span(records: Sequence[bytes]) -> tuple[datetime, datetime] | None:
    """The first and last event time of the records that are valid events (None: none is)."""
    from churnwatch.core.errors import BadEventError
    from churnwatch.core.events import parse_event

    first: datetime | None = None
    last: datetime | None = None
    for raw in records:
        try:
            ts = parse_event(raw).ts
        except BadEventError:
            continue
        first = ts if first is None or ts < first else first
        last = ts if last is None or ts > last else last
    return None if first is None or last is None else (first, last)


@click.command("load")
@click.argument("events", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--replace",
    is_flag=True,
    help="Delete everything under the Redis prefix first (without it, a prefix that holds "
    "anything is refused: a second history would merge into the first).",
)
@click.option(
    "--append",
    "append",
    is_flag=True,
    help="Continue what an earlier load put under the prefix with events strictly after it: "
    "the prefix then holds what one load of both files would give.",
)
def load(events: Path, replace: bool, append: bool) -> None:
    """
    Fill Redis from a history (JSONL) without the broker: replay it through the core and
    write what the scoring workers would (states, at-risk orders, score and alert histories,
    model checkpoints), to try the API and the web page on it. Not for a prefix that live
    workers use: nothing is produced to Kafka and no offsets are written. The records loaded
    are kept under the prefix, so that --append can replay them with the new ones.
    """
    from churnwatch.api.load import load_history
    from churnwatch.replay.engine import read_records
    from churnwatch.store import RedisStore

    if replace and append:
        msg = "--replace and --append: one or the other"
        raise click.UsageError(msg)
    settings = _settings({})
    removed = 0
    kept = 0

    async def run() -> Any:
        nonlocal removed, kept
        store = RedisStore(settings.redis)
        await store.start()
        try:
            records = list(read_records(str(events)))
            if replace:
                removed = await store.clear()
            elif append and await store.holds_data():
                before = await store.load_log()
                if not before:
                    msg = (
                        f"the Redis prefix {settings.redis.prefix!r} holds data that no "
                        "`churnwatch load` wrote (live workers, or a load before loads were "
                        "kept): --append needs the history it was loaded from; use --replace"
                    )
                    raise _CannotAppend(msg)
                old, new = _span(before), _span(records)
                if old is not None and new is not None and new[0] <= old[1]:
                    msg = (
                        f"--append takes events strictly after what is stored: {events} "
                        f"starts at {new[0].isoformat()}, the stored history ends at "
                        f"{old[1].isoformat()}"
                    )
                    raise _CannotAppend(msg)
                kept = len(before)
                records = before + records
                removed = await store.clear()
            elif await store.holds_data():
                raise _PrefixInUse
            loaded = await load_history(
                store,
                iter(records),
                settings.to_policy(),
                partitions=settings.topic_partitions,
            )
            await store.save_load_log(records)
            return loaded
        finally:
            await store.close()

    try:
        loaded = asyncio.run(run())
    except ChurnwatchError as exc:
        raise click.ClickException(str(exc)) from exc
    except _CannotAppend as exc:
        raise click.ClickException(str(exc)) from None
    except _PrefixInUse:
        msg = (
            f"the Redis prefix {settings.redis.prefix!r} at {settings.redis.address} already "
            "holds data: loading another history would merge into it (customers' current "
            "states from one file, histories from the other). Use --replace to delete what is "
            "there first, or another prefix (CHURNWATCH_REDIS_PREFIX)."
        )
        raise click.ClickException(msg) from None
    if kept:
        click.echo(f"appended to the {kept:,} records loaded before", err=True)
    elif removed:
        click.echo(f"deleted {removed:,} keys under prefix {settings.redis.prefix!r}", err=True)
    counts = loaded.counts
    click.echo(
        f"loaded {loaded.customers:,} customers ({counts.processed:,} events processed, "
        f"{counts.dead_lettered:,} dead-lettered), {len(loaded.alerts):,} alerts, "
        f"{loaded.checkpoints} model checkpoints into {settings.redis.address} "
        f"(prefix {settings.redis.prefix!r}, {settings.topic_partitions} partitions)"
    )


def register(group: click.Group) -> None:
    """Adds `api`, `at-risk`, `overview`, `feedback` and `load` to the `churnwatch` group."""
    group.add_command(load)
    group.add_command(api)
    group.add_command(at_risk)
    group.add_command(overview)
    group.add_command(feedback)
