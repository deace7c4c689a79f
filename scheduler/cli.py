"""The `scheduler` command: serve, migrate, organizer create, demo, feeds sync, audit export,
copy-database. Changes made by a command are the CLI's in the audit trail."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from scheduler.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from scheduler.permissions import Role

_EMAIL = re.compile(r"[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;]+")  # where reminders go


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scheduler", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the app (host and port from settings)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    commands.add_parser("migrate", help="apply database migrations")
    commands.add_parser("demo", help="load the demo cycle into the database (idempotent)")
    organizer = commands.add_parser("organizer", help="manage organizers")
    organizer_commands = organizer.add_subparsers(dest="organizer_command", required=True)
    create = organizer_commands.add_parser(
        "create", help="create an organizer; prints its token alone on the last line"
    )
    create.add_argument("--name", required=True)
    create.add_argument(
        "--process",
        action="append",
        default=[],
        metavar="SLUG",
        help="a process this organizer belongs to (repeat for several)",
    )
    create.add_argument(
        "--role",
        choices=("viewer", "organizer", "owner"),
        default="organizer",
        help="their role in each --process: viewer (reads), organizer (also changes), "
        "owner (also manages members); default organizer",
    )
    create.add_argument(
        "--email",
        default="",
        help="where this organizer's reminders go (without it, none are sent)",
    )
    feeds = commands.add_parser("feeds", help="pledge feeds")
    feeds_commands = feeds.add_subparsers(dest="feeds_command", required=True)
    sync = feeds_commands.add_parser(
        "sync", help="sync a feed now, whatever its schedule, with a progress line"
    )
    sync.add_argument("name", nargs="?", help="the feed's name (default: every enabled feed)")
    trail = commands.add_parser("audit", help="the audit trail")
    trail_commands = trail.add_subparsers(dest="audit_command", required=True)
    export = trail_commands.add_parser(
        "export", help="write the audit trail to standard output, newest first"
    )
    export.add_argument(
        "--process", metavar="SLUG", help="only this process's entries (default: every entry)"
    )
    export.add_argument("--format", choices=("csv", "ndjson"), default="csv")
    copy = commands.add_parser(
        "copy-database",
        help="copy every row of the configured database into an empty one (SQLite to PostgreSQL)",
    )
    copy.add_argument(
        "--to", required=True, metavar="URL", help="postgresql+asyncpg://user@host:5432/forum"
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"scheduler: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return _serve(settings, args.host, args.port)
    if args.command == "migrate":
        asyncio.run(_migrate(settings))
        print("migrations applied")
        return 0
    if args.command == "demo":
        return asyncio.run(_demo(settings))
    if args.command == "feeds":
        return asyncio.run(_sync_feeds(settings, args.name))
    if args.command == "audit":
        return asyncio.run(_export_audit(settings, args.process, args.format, sys.stdout))
    if args.command == "copy-database":
        return asyncio.run(_copy_database(settings, args.to))
    if not args.name.strip():
        print("scheduler: --name must not be empty", file=sys.stderr)
        return 2
    email = args.email.strip()
    if email and not _EMAIL.fullmatch(email):
        print(f"scheduler: --email {email!r} is not an email address", file=sys.stderr)
        return 2
    if args.role != "organizer" and not args.process:
        print("scheduler: --role needs at least one --process", file=sys.stderr)
        return 2
    return asyncio.run(_create_organizer(settings, args.name, args.process, email, args.role))


def _serve(settings: Settings, host: str | None, port: int | None) -> int:
    import uvicorn

    from scheduler.app import create_app
    from scheduler.logs import uvicorn_config

    settings = settings.replace(host=host or settings.host, port=port or settings.port)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=uvicorn_config(settings.log_level, settings.log_format),
        access_log=False,
        loop="auto",
        http="auto",
    )
    return 0


async def _migrate(settings: Settings) -> None:
    from scheduler.database import open_database
    from scheduler.schema import migrate

    db = open_database(settings)
    try:
        await migrate(db.writer_engine)
    finally:
        await db.dispose()


async def _copy_database(settings: Settings, to: str) -> int:
    """Migrate the target, then copy every table into it; 2 if it is not empty."""
    from scheduler.copy_database import CopyError, copy_database
    from scheduler.database import open_database
    from scheduler.schema import migrate

    try:
        target_settings = settings.replace(database_url=to)
    except SettingsError as exc:
        print(f"scheduler: --to: {exc}", file=sys.stderr)
        return 2
    if target_settings.database_url == settings.database_url:
        print("scheduler: --to names the configured database itself", file=sys.stderr)
        return 2
    source, target = open_database(settings), open_database(target_settings)
    try:
        await migrate(target.writer_engine)
        report = await copy_database(
            source.reader_engine,
            target.writer_engine,
            on_table=lambda name, count: print(f"  {name}: {count:,} rows"),
        )
    except CopyError as exc:
        print(f"scheduler: {exc}", file=sys.stderr)
        return 2
    finally:
        await source.dispose()
        await target.dispose()
    print(f"copied {report.total:,} rows in {len(report.rows)} tables")
    return 0


async def _demo(settings: Settings) -> int:
    from scheduler import audit
    from scheduler.cycle_templates import load_templates
    from scheduler.database import open_database
    from scheduler.demo import load_demo

    db = open_database(settings)
    try:
        async with db.writer.begin() as session:
            audit.act_as(session, audit.CLI)
            process = await load_demo(session, load_templates(settings.templates_dir))
    finally:
        await db.dispose()
    if process is None:
        print("demo cycle already loaded")
    else:
        print(f"demo cycle loaded: process {process.id} ({process.slug})")
    return 0


async def _create_organizer(
    settings: Settings, name: str, slugs: list[str], email: str, role: Role
) -> int:
    from scheduler import audit
    from scheduler.database import open_database
    from scheduler.errors import NotFound
    from scheduler.organizers import create_organizer

    db = open_database(settings)
    try:
        async with db.writer.begin() as session:
            audit.act_as(session, audit.CLI)
            organizer, token = await create_organizer(session, name, slugs, email=email, role=role)
    except NotFound as exc:
        print(f"scheduler: {exc}", file=sys.stderr)
        return 2
    finally:
        await db.dispose()
    where = f", {role} of {', '.join(slugs)}" if slugs else ""
    print(f"organizer {organizer.id} ({organizer.name}{where}) created; its token (shown once):")
    print(token)
    return 0


async def _sync_feeds(settings: Settings, name: str | None) -> int:
    """Run feeds by hand; 1 if any run failed. Digest mails wait in the outbox for the server."""
    from sqlalchemy import select

    from scheduler import audit
    from scheduler.database import open_database
    from scheduler.feeds import Busy
    from scheduler.models import Feed
    from scheduler.pledge_feed import FeedRunner

    db = open_database(settings)
    try:
        async with db.reader() as session:
            query = select(Feed.id, Feed.name).order_by(Feed.id)
            if name is not None:
                query = query.where(Feed.name == name)
            else:
                query = query.where(Feed.enabled.is_(True))
            chosen = [(int(i), str(n)) for i, n in (await session.execute(query)).all()]
        if name is not None and not chosen:
            print(f"scheduler: no feed named {name!r}", file=sys.stderr)
            return 2
        if not chosen:
            print("no enabled feeds")
            return 0
        runner = FeedRunner(db, settings)
        failed = 0
        for feed_id, feed_name in chosen:
            line = _ProgressLine(sys.stderr)
            try:
                with audit.acting(audit.CLI):
                    run = await runner.run(feed_id, manual=True, on_progress=line.show)
            except Busy:
                line.clear()
                print(f"feed {feed_name}: being synced elsewhere right now; skipped")
                failed += 1
                continue
            line.clear()
            assert run is not None
            seconds = (run.duration_ms or 0) / 1000
            if run.outcome == "failed":
                failed += 1
                print(f"feed {feed_name}: failed after {seconds:.1f} s: {run.error}")
            elif run.outcome == "not_modified":
                print(f"feed {feed_name}: not modified (304) in {seconds:.2f} s")
            else:
                print(
                    f"feed {feed_name}: success in {seconds:.1f} s: {run.new:,} new, "
                    f"{run.updated:,} updated, {run.unchanged:,} unchanged, "
                    f"{run.withdrawn:,} withdrawn, {run.quarantined:,} quarantined"
                    + (f" ({run.error})" if run.error else "")
                )
        return 1 if failed else 0
    finally:
        await db.dispose()


async def _export_audit(settings: Settings, slug: str | None, fmt: str, out: TextIO) -> int:
    """Every entry (or one process's), newest first; 2 for an unknown process."""
    from sqlalchemy import select

    from scheduler import audit
    from scheduler.api_audit import export_chunks
    from scheduler.database import open_database
    from scheduler.models import Process

    db = open_database(settings)
    try:
        selection = audit.Selection()
        if slug is not None:
            async with db.reader() as session:
                process_id = await session.scalar(select(Process.id).where(Process.slug == slug))
            if process_id is None:
                print(f"scheduler: no process with slug {slug!r}", file=sys.stderr)
                return 2
            selection = audit.Selection(process_ids=frozenset({process_id}))
        async for chunk in export_chunks(db, selection, "ndjson" if fmt == "ndjson" else "csv"):
            out.buffer.write(chunk)
        out.flush()
        return 0
    finally:
        await db.dispose()


class _ProgressLine:
    """One line rewritten in place on a terminal; elsewhere a line every few seconds."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.shown = False
        self.last = 0.0

    def show(self, p: Any) -> None:
        now = time.monotonic()
        if not self.tty and now - self.last < 2.0 and p.phase == "fetch":
            return
        self.last = now
        rate = p.records / p.seconds if p.seconds > 0 else 0.0
        text = (
            f"feed {p.feed}: page {p.pages + (p.phase == 'fetch')}, {p.records:,} records"
            f" ({p.quarantined:,} set aside), {p.bytes / 1e6:.1f} MB, {rate:,.0f} records/s"
        )
        if p.phase == "apply":
            text = f"feed {p.feed}: writing {p.records:,} records to the database"
        if self.tty:
            self.stream.write(f"\r\x1b[K{text}")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.tty and self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


if __name__ == "__main__":
    sys.exit(main())
