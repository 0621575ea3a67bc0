"""``kgents metering reconcile|dead-letters|replay``, on SQLite and PostgreSQL.

The data is made with the platform's own stores (no server): a finished turn stores its
``llm.tokens`` event in the outbox, and ``meter_outbox`` does what the relay and the metering
processor do, so a test can leave events in flight, lose them, or park them.
"""

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from kgents.cli.main import app
from kgents.clock import utc_now
from kgents.config import Settings
from kgents.metering import events as usage_events
from kgents.platform import Platform, open_platform
from tests.support.postgres import create_database, drop_database
from tests.support.turns import running_turn, store_running_turn

runner = CliRunner()
ONE_DEAD_LETTER = re.compile(r"\b1 dead letter\b(?!s)")


@dataclass
class Env:
    settings: Settings

    def invoke(self, *args: str) -> Result:
        env = {"KGENTS_DATABASE_URL": self.settings.database_url or "", "COLUMNS": "200"}
        data_dir = ["--data-dir", str(self.settings.data_dir)]
        return runner.invoke(app, [*args, *data_dir], env=env, catch_exceptions=False)

    def run(self, coroutine: Any) -> Any:
        return asyncio.run(coroutine)


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    """A data dir and a fresh database (a SQLite file, or a new PostgreSQL database)."""
    if request.param == "sqlite":
        yield Env(Settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path}/k.db"))
        return
    server_url: str = request.getfixturevalue("postgres_server_url")
    url = asyncio.run(create_database(server_url))
    try:
        yield Env(Settings(data_dir=tmp_path / "data", database_url=url))
    finally:
        asyncio.run(drop_database(server_url, url))


async def new_tenant(platform: Platform, name: str = "acme") -> str:
    tenant = await platform.tenancy.create_tenant(name=name, plan="pro")
    return tenant.id


async def finished_turn(platform: Platform, tenant_id: str, tokens_in: int, tokens_out: int) -> str:
    """A session with one complete turn; its usage events wait in the outbox."""
    session = await platform.sessions.create_session(
        tenant_id=tenant_id, title=None, agent_type="kgent", mode="reflect"
    )
    now = utc_now()
    turn, question = running_turn(session.id, tenant_id, started_at=now, tokens_in=tokens_in)
    store = platform.session_store
    await store_running_turn(store, turn, question, lease_until=now)
    final = replace(turn, status="complete", tokens_out=tokens_out, finished_at=utc_now())
    bill = usage_events.llm_tokens(
        tenant_id=tenant_id,
        session_id=session.id,
        turn_id=turn.id,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        model="demo",
        estimated=False,
        at=now,
    )
    await store.finish_turn(final, assistant_message=None, events=[bill])
    return turn.id


async def meter_outbox(platform: Platform, *, ingest: bool = True) -> int:
    """Relay the outbox and meter what was relayed (or, ``ingest=False``, lose it)."""
    pending = await platform.outbox.pending(limit=1000)
    if ingest:
        await platform.meters.ingest(pending)
    await platform.outbox.mark_sent([(e.source, e.id) for e in pending], at=utc_now())
    return len(pending)


def test_reconcile_passes_when_every_turn_is_metered(env: Env) -> None:
    async def setup() -> str:
        async with open_platform(env.settings) as platform:
            tenant_id = await new_tenant(platform)
            await finished_turn(platform, tenant_id, 12, 34)
            await finished_turn(platform, tenant_id, 5, 6)
            await meter_outbox(platform)
            return tenant_id

    tenant_id = env.run(setup())
    result = env.invoke("metering", "reconcile")

    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if tenant_id in line)
    assert re.findall(r"\d+", row.replace(tenant_id, "")) == ["17", "40", "17", "40"]
    assert "none" in row and "No difference" in result.output
    assert "outbox" not in result.output


def test_reconcile_empty_database(env: Env) -> None:
    result = env.invoke("metering", "reconcile")
    assert result.exit_code == 0, result.output
    assert "No turns and no metered tokens yet" in result.output


def test_reconcile_reports_each_difference(env: Env) -> None:
    async def setup() -> tuple[str, str]:
        async with open_platform(env.settings) as platform:
            acme = await new_tenant(platform, "acme")
            globex = await new_tenant(platform, "globex")
            await finished_turn(platform, acme, 10, 20)
            await meter_outbox(platform)
            await finished_turn(platform, acme, 1, 2)  # its event is still in the outbox
            return acme, globex

    acme, globex = env.run(setup())
    result = env.invoke("metering", "reconcile")

    assert result.exit_code == 1
    row = next(line for line in result.output.splitlines() if acme in line)
    assert "in -1, out -2" in row
    assert "not yet relayed" in result.output and "may just be in flight" in result.output
    assert "1 of 1 tenants differ" in result.output and "Traceback" not in result.output

    async def lose_the_event_and_bill_a_tenant_without_turns() -> None:
        async with open_platform(env.settings) as platform:
            assert await meter_outbox(platform, ingest=False) > 0
            extra = usage_events.llm_tokens(
                tenant_id=globex,
                session_id="ses_none",
                turn_id="turn_none",
                tokens_in=7,
                tokens_out=0,
                model="demo",
                estimated=False,
                at=utc_now(),
            )
            await platform.meters.ingest([extra])

    env.run(lose_the_event_and_bill_a_tenant_without_turns())
    result = env.invoke("metering", "reconcile")

    assert result.exit_code == 1
    assert "not yet relayed" not in result.output
    assert "in -1, out -2" in next(line for line in result.output.splitlines() if acme in line)
    assert "in +7, out 0" in next(line for line in result.output.splitlines() if globex in line)
    assert "2 of 2 tenants differ" in result.output


def tokens_event(subject: str, tokens_in: int, event_id: str) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "kgents-api",
        "type": "llm.tokens",
        "subject": subject,
        "time": "2026-03-02T10:00:00Z",
        "data": {"tokens_in": tokens_in, "tokens_out": 1, "model": "demo"},
    }


async def park(platform: Platform, event: dict[str, Any], error: str) -> int:
    return await platform.meters.park_dead_letter(
        event=event, error=error, attempts=9, at=utc_now()
    )


def test_dead_letters_are_listed_and_replayed_once(env: Env) -> None:
    async def setup() -> list[int]:
        async with open_platform(env.settings) as platform:
            await platform.meters.sync_meters()  # as the server does when it starts
            event = tokens_event("ten_replay", 40, "ev-1")
            return [
                await park(platform, event, "storing failed: database was down"),
                await park(platform, event, "storing failed: database was down (again)"),
                await park(platform, {**event, "id": "ev-2", "time": "yesterday"}, "bad time"),
            ]

    first, second, invalid = env.run(setup())

    listing = env.invoke("metering", "dead-letters")
    assert listing.exit_code == 0, listing.output
    assert "3 dead letters" in listing.output
    for dead_letter_id in (first, second, invalid):
        assert re.search(rf"^\W*{dead_letter_id}\b", listing.output, flags=re.MULTILINE)
    assert "ten_replay" in listing.output and "llm.tokens" in listing.output
    assert "database was down" in listing.output and "bad time" in listing.output
    assert "(oldest 1)" in env.invoke("metering", "dead-letters", "--limit", "1").output

    result = env.invoke("metering", "replay", "--all")

    assert result.exit_code == 1
    assert "1 counted, 1 already counted (duplicates), 1 still parked" in result.output
    assert "must be an RFC 3339 date-time" in result.output
    assert "1 event still parked" in result.output

    async def totals() -> tuple[dict[str, float], int]:
        async with open_platform(env.settings) as platform:
            counted = await platform.meters.totals_by_subject("llm_tokens_in")
            return counted, await platform.meters.dead_letter_count()

    assert env.run(totals()) == ({"ten_replay": 40.0}, 1)

    again = env.invoke("metering", "replay", "--all")
    assert again.exit_code == 1
    assert "0 counted, 0 already counted (duplicates), 1 still parked" in again.output
    assert env.run(totals()) == ({"ten_replay": 40.0}, 1)
    listing = env.invoke("metering", "dead-letters")
    assert ONE_DEAD_LETTER.search(listing.output) and "database was down" not in listing.output


def test_replaying_an_event_already_counted_counts_nothing_more(env: Env) -> None:
    async def setup() -> int:
        async with open_platform(env.settings) as platform:
            await platform.meters.sync_meters()
            tenant_id = await new_tenant(platform)
            await finished_turn(platform, tenant_id, 3, 4)
            (billed,) = [
                e for e in await platform.outbox.pending(limit=10) if e.type == "llm.tokens"
            ]
            await meter_outbox(platform)
            # As when OpenMeter refused the event: counted here, parked as not forwarded.
            return await platform.meters.park_dead_letter(
                event=billed, error="not forwarded to OpenMeter", attempts=1, at=utc_now()
            )

    dead_letter_id = env.run(setup())
    result = env.invoke("metering", "replay", "--id", str(dead_letter_id))

    assert result.exit_code == 0, result.output
    assert "0 counted, 1 already counted (duplicates), 0 still parked" in result.output
    assert env.invoke("metering", "reconcile").exit_code == 0
    assert "No dead letters to replay" in env.invoke("metering", "replay", "--all").output


def test_replay_refuses_unknown_ids_and_changes_nothing(env: Env) -> None:
    async def setup() -> int:
        async with open_platform(env.settings) as platform:
            await platform.meters.sync_meters()
            return await park(platform, tokens_event("ten_x", 5, "ev-x"), "down")

    parked = env.run(setup())
    result = env.invoke("metering", "replay", "--id", str(parked), "--id", "999999")

    assert result.exit_code == 1
    assert "no dead letter with id 999999" in result.output and "Traceback" not in result.output
    assert ONE_DEAD_LETTER.search(env.invoke("metering", "dead-letters").output)

    assert env.invoke("metering", "replay").exit_code == 2  # neither --id nor --all
    assert env.invoke("metering", "replay", "--all", "--id", "1").exit_code == 2


def test_replay_refuses_meters_the_store_was_not_built_with(env: Env) -> None:
    async def setup() -> None:
        async with open_platform(env.settings) as platform:  # no sync_meters: never served
            await park(platform, tokens_event("ten_x", 5, "ev-x"), "down")

    env.run(setup())
    result = env.invoke("metering", "replay", "--all")

    assert result.exit_code == 1
    assert "configured meters differ" in result.output


def test_db_upgrade_lists_the_revisions_it_applies(env: Env) -> None:
    first = env.invoke("db", "upgrade")
    assert first.exit_code == 0, first.output
    assert "applied 0001: initial schema" in first.output and "up to date" in first.output
    second = env.invoke("db", "upgrade")
    assert second.exit_code == 0 and "applied" not in second.output
    assert "up to date" in second.output
