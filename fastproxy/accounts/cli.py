"""`fastproxy migrate`, `fastproxy users ...` and `fastproxy keys ...`: operators' commands on the store
named by the same settings the proxy reads (FASTPROXY_DATABASE_URL, FASTPROXY_REDIS_URL, ...)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import redis.asyncio as aioredis

from fastproxy.accounts import provisioning
from fastproxy.accounts.invalidation import Invalidator, channel_name
from fastproxy.accounts.stored_providers import SECRET_KEYS_SETTING, SecretBox, rotate_all
from fastproxy.core.providers import ConfigError
from fastproxy.core.schemas import Limits
from fastproxy.core.settings import Settings, load_settings
from fastproxy.selfservice.passwords import Passwords
from fastproxy.store import ApiKey, Store, StoreError, open_store


class CommandError(Exception):
    """Printed as one line and exit status 1."""


def _run(job: Callable[[Store, Settings], Awaitable[None]]) -> None:
    settings = load_settings()
    if not settings.database_url:
        raise CommandError("no database configured (FASTPROXY_DATABASE_URL)")

    async def main() -> None:
        store = await open_store(settings.database_url, pool_size=2)
        try:
            await job(store, settings)
        finally:
            await store.close()

    try:
        asyncio.run(main())
    except StoreError as exc:
        raise CommandError(str(exc)) from exc


def _limits(args: argparse.Namespace) -> Limits | None:
    values = {name: getattr(args, name) for name in Limits.__struct_fields__ if getattr(args, name) is not None}
    return Limits(**values) if values else None


def _when(ts: int | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _status(key: ApiKey) -> str:
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= time.time():
        return "expired"
    return "active"


def cmd_migrate(args: argparse.Namespace) -> None:
    async def job(store: Store, settings: Settings) -> None:
        applied = await store.migrate()
        print("applied: " + ", ".join(applied) if applied else "database is up to date")

    _run(job)


def cmd_users_create(args: argparse.Namespace) -> None:
    async def job(store: Store, settings: Settings) -> None:
        await store.migrate()
        user = await provisioning.create_user(store, args.name, args.email, _limits(args), args.upstream_key)
        print(user.id)

    _run(job)


def cmd_users_list(args: argparse.Namespace) -> None:
    async def job(store: Store, settings: Settings) -> None:
        after = None
        while page := await store.list_users(100, after):
            for u in page:
                state = "disabled" if u.disabled else "active"
                print(f"{u.id}  {u.name}  {u.email or '-'}  {state}  created {_when(u.created_at)}")
            after = page[-1].id

    _run(job)


def _read_password() -> str:
    """From the terminal (asked twice, not echoed) or one line of standard input; never from argv,
    where any user of the machine could read it in the process list."""
    if sys.stdin.isatty():
        first = getpass.getpass("New password: ")
        if getpass.getpass("Again: ") != first:
            raise CommandError("the passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def cmd_users_set_password(args: argparse.Namespace) -> None:
    password = _read_password()
    passwords = Passwords()
    problem = passwords.problem(password)
    if problem is not None:
        raise CommandError(problem)

    async def job(store: Store, settings: Settings) -> None:
        await store.migrate()
        if not await store.set_password(args.id, passwords.hash(password)):
            raise CommandError(f"no user with id {args.id}")
        print(f"password set for {args.id}")

    _run(job)


def cmd_users_set_models(args: argparse.Namespace) -> None:
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None

    async def job(store: Store, settings: Settings) -> None:
        await store.migrate()
        if not await store.set_user_models(args.id, models):
            raise CommandError(f"no user with id {args.id}")
        print(f"{args.id}: self-service keys limited to {', '.join(models) if models else 'every model'}")

    _run(job)


def cmd_keys_create(args: argparse.Namespace) -> None:
    async def job(store: Store, settings: Settings) -> None:
        await store.migrate()
        if args.user is not None and await store.get_user(args.user) is None:
            raise CommandError(f"no user with id {args.user}")
        expires = int(time.time() + args.expires_in_days * 86400) if args.expires_in_days else None
        models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
        created = await provisioning.create_key(
            store, args.name, args.user, models, expires, _limits(args), upstream_key=args.upstream_key
        )
        print(f"id:  {created.id}")
        print(f"key: {created.key}")
        print("Store the key now: it is shown only this once.")

    _run(job)


def cmd_keys_list(args: argparse.Namespace) -> None:
    async def job(store: Store, settings: Settings) -> None:
        after = None
        while page := await store.list_keys(100, after, args.user):
            for k in page:
                shown = f"{k.key_prefix}...{k.key_hint}"
                print(
                    f"{k.id}  {shown}  {k.name}  user={k.user_id or '-'}  {_status(k)}"
                    f"  last used {_when(k.last_used_at)}"
                )
            after = page[-1].id

    _run(job)


def cmd_keys_revoke(args: argparse.Namespace) -> None:
    async def job(store: Store, settings: Settings) -> None:
        key = await store.revoke_key(args.id, int(time.time()))
        if key is None:
            raise CommandError(f"no API key with id {args.id}")
        if settings.redis_url:
            client = aioredis.from_url(settings.redis_url)
            try:
                await Invalidator(None, client, channel_name(settings.redis_prefix)).key_changed(key.id)
            finally:
                await client.aclose()
        print(f"revoked {key.id} ({key.key_prefix}...{key.key_hint})")

    _run(job)


def cmd_secrets_rotate(args: argparse.Namespace) -> None:
    async def job(store: Store, settings: Settings) -> None:
        box = SecretBox(settings.secret_keys)
        if not box.enabled:
            raise CommandError(f"{SECRET_KEYS_SETTING} is not set: nothing to re-encrypt with")
        await store.migrate()
        try:
            count = await rotate_all(store, box, int(time.time()))
        except ConfigError as exc:
            raise CommandError(str(exc)) from exc
        print(f"re-encrypted the keys of {count} stored providers with the first secret key")

    _run(job)


_PIN_HELP = "serve requests only with the provider key of this id (its `id` in a provider's api_keys)"


def _limit_flags(parser: argparse.ArgumentParser) -> None:
    for name in ("rpm", "tpm", "rpd", "tpd", "max_tokens_total"):
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=int)
    parser.add_argument("--max-budget-usd", dest="max_budget_usd", type=float)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    migrate = sub.add_parser("migrate", help="apply pending database migrations")
    migrate.set_defaults(func=cmd_migrate)

    users = sub.add_parser("users", help="manage users").add_subparsers(dest="action", required=True)
    create = users.add_parser("create", help="create a user and print its id")
    create.add_argument("--name", required=True)
    create.add_argument("--email")
    create.add_argument("--upstream-key", dest="upstream_key", help=_PIN_HELP)
    _limit_flags(create)
    create.set_defaults(func=cmd_users_create)
    users.add_parser("list", help="list users").set_defaults(func=cmd_users_list)
    setpw = users.add_parser(
        "set-password", help="set a user's password for /api/auth/login (read from the terminal or stdin)"
    )
    setpw.add_argument("id", help="user id")
    setpw.set_defaults(func=cmd_users_set_password)
    setmodels = users.add_parser("set-models", help="the models a user's self-service keys may be limited to")
    setmodels.add_argument("id", help="user id")
    setmodels.add_argument("--models", help="comma-separated model names (omit: every model)")
    setmodels.set_defaults(func=cmd_users_set_models)

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="action", required=True)
    kcreate = keys.add_parser("create", help="create an API key and print it (once)")
    kcreate.add_argument("--name", required=True)
    kcreate.add_argument("--user", help="user id the key belongs to")
    kcreate.add_argument("--models", help="comma-separated models the key may use (default: all)")
    kcreate.add_argument("--expires-in-days", dest="expires_in_days", type=float)
    kcreate.add_argument("--upstream-key", dest="upstream_key", help=_PIN_HELP)
    _limit_flags(kcreate)
    kcreate.set_defaults(func=cmd_keys_create)
    klist = keys.add_parser("list", help="list API keys (never the keys themselves)")
    klist.add_argument("--user", help="only this user's keys")
    klist.set_defaults(func=cmd_keys_list)
    revoke = keys.add_parser("revoke", help="revoke an API key")
    revoke.add_argument("id")
    revoke.set_defaults(func=cmd_keys_revoke)

    secrets = sub.add_parser("secrets", help="manage the encryption of stored upstream keys")
    actions = secrets.add_subparsers(dest="action", required=True)
    rotate = actions.add_parser(
        "rotate", help=f"re-encrypt every stored upstream key with the first key of {SECRET_KEYS_SETTING}"
    )
    rotate.set_defaults(func=cmd_secrets_rotate)


async def demo_key(settings: Settings) -> str:
    """Create (or reuse) the demo user and a fresh key for it on the configured store; return the key."""
    store = await open_store(settings.database_url, pool_size=1)
    try:
        await store.migrate()
        user = next((u for u in await store.list_users(100, None) if u.name == "demo" and not u.disabled), None)
        if user is None:
            user = await provisioning.create_user(store, "demo")
        return (await provisioning.create_key(store, "demo", user.id)).key
    finally:
        await store.close()
