"""The `scheduler` command: serve, migrate, organizer create, demo."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from scheduler.settings import Settings, SettingsError, load_settings


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
        help="a process this organizer may change (repeat for several)",
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
    if not args.name.strip():
        print("scheduler: --name must not be empty", file=sys.stderr)
        return 2
    return asyncio.run(_create_organizer(settings, args.name, args.process))


def _serve(settings: Settings, host: str | None, port: int | None) -> int:
    import uvicorn

    from scheduler.app import create_app

    settings = settings.replace(host=host or settings.host, port=port or settings.port)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
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


async def _demo(settings: Settings) -> int:
    from scheduler.cycle_templates import load_templates
    from scheduler.database import open_database
    from scheduler.demo import load_demo

    db = open_database(settings)
    try:
        async with db.writer.begin() as session:
            process = await load_demo(session, load_templates(settings.templates_dir))
    finally:
        await db.dispose()
    if process is None:
        print("demo cycle already loaded")
    else:
        print(f"demo cycle loaded: process {process.id} ({process.slug})")
    return 0


async def _create_organizer(settings: Settings, name: str, slugs: list[str]) -> int:
    from scheduler.database import open_database
    from scheduler.errors import NotFound
    from scheduler.organizers import create_organizer

    db = open_database(settings)
    try:
        async with db.writer.begin() as session:
            organizer, token = await create_organizer(session, name, slugs)
    except NotFound as exc:
        print(f"scheduler: {exc}", file=sys.stderr)
        return 2
    finally:
        await db.dispose()
    print(f"organizer {organizer.id} ({organizer.name}) created; its token (shown once):")
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
