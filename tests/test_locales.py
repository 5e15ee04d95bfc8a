"""Databases and clients of other locales and encodings (a hostile test, 0034).

Every other test runs on the test server's C.UTF-8 databases. Deployments run en_US, de_DE, tr_TR
and ICU collations, LATIN1 databases, and clients whose PGCLIENTENCODING is LATIN1: a Turkish
database paid one client's onboarding to another person, a batch deadlocked with a caller that
sorted its wallets with Python, and a LATIN1 database stopped its install half way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from alembic.util import CommandError
from conftest import install_variant, waited_for
from psycopg.conninfo import make_conninfo

from pyxp import XP, schema

TURKISH = "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'tr-TR' LOCALE 'C.UTF-8'"
# ICU with punctuation ignorable (as glibc's en_US and de_DE sort): 0xa… before 0x_b….
PUNCTUATION_IGNORED = "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US-u-ka-shifted' LOCALE 'C.UTF-8'"
ONBOARD = "SELECT xp_amount, replayed FROM pyxp.onboard_agency_client(%s, %s)"


def balances(db: psycopg.Connection[Any], *wallets: str) -> list[tuple[str, int]]:
    return db.execute("SELECT w, coalesce((SELECT b.total_xp FROM pyxp.xp_balances b WHERE b.user_wallet = w), 0) "
                      "FROM unnest(%s::text[]) w ORDER BY w COLLATE \"C\"", (list(wallets),)).fetchall()


def test_a_turkish_database_onboards_each_client_as_its_own(fresh_database: Callable[..., str]) -> None:
    """Under tr-TR, lower('I') is 'ı'. The flows also looked an email up as lower() read it before
    0028: B, never registered, signing in as Istanbul@… (istanbul@… since 0028) was paid A's
    registration of ıstanbul@…, and A got nothing; a registration of ISTANBUL@… by another agency
    was stored as ıstanbul@…, granted already, and its client D got nothing. That reading is kept
    only for registrations made before 0034, in databases that had them (test_migrations' 0028 test)."""
    target = fresh_database(TURKISH)
    schema.upgrade(target)
    with psycopg.connect(target, autocommit=True) as db:
        assert db.execute("SELECT pyxp.emails_lowered_until()").fetchone() == (None,)
        for agency, campaign in (("0x_agency", "camp_a"), ("0x_other_agency", "camp_b")):
            db.execute("SELECT * FROM pyxp.award_campaign_creation(%s, %s, 'AGENCY_B2C')", (agency, campaign))
        db.execute("SELECT * FROM pyxp.register_agency_client('0x_agency', 'ıstanbul@ornek.com', 'camp_a')")
        assert db.execute(ONBOARD, ("Istanbul@ornek.com", "0x_b")).fetchall() == []  # not registered
        assert db.execute(ONBOARD, ("ıstanbul@ornek.com", "0x_a")).fetchall() == [(1000, False)]
        assert balances(db, "0x_a", "0x_b") == [("0x_a", 1000), ("0x_b", 0)]

        db.execute("SELECT * FROM pyxp.register_agency_client('0x_agency', 'ıstanbul@kurum.com', 'camp_a')")
        assert db.execute(ONBOARD, ("ıstanbul@kurum.com", "0x_c")).fetchall() == [(1000, False)]
        registered = db.execute("SELECT client_email, xp_granted FROM pyxp.register_agency_client("
                                "'0x_other_agency', 'ISTANBUL@KURUM.COM', 'camp_b')").fetchall()
        assert registered == [("istanbul@kurum.com", False)]
        assert db.execute(ONBOARD, ("istanbul@kurum.com", "0x_d")).fetchall() == [(1000, False)]
        assert balances(db, "0x_c", "0x_d") == [("0x_c", 1000), ("0x_d", 1000)]
        assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


@pytest.mark.parametrize("installed_at", ["0033", "0034, downgraded to 0033"])
def test_a_turkish_database_upgraded_from_0028_on_reads_emails_only_as_since(fresh_database: Callable[..., str],
                                                                             installed_at: str) -> None:
    """0034 first kept the old reading for every registration a Turkish database held when it ran:
    one upgraded from 0033 (or downgraded to it and upgraded again) still paid ıstanbul@…'s
    registration to a person signing in as ISTANBUL@… (a re-test). Its registrations were stored
    as read since 0028: the old reading is kept only where the upgrade began below 0028."""
    target = fresh_database(TURKISH)
    if installed_at == "0033":
        schema.upgrade(target, "0033")
    else:
        schema.upgrade(target)
        schema.downgrade(target, "0033")
    with psycopg.connect(target, autocommit=True) as db:
        db.execute("SELECT * FROM pyxp.award_campaign_creation('0x_agency', 'camp_a', 'AGENCY_B2C')")
        db.execute("SELECT * FROM pyxp.register_agency_client('0x_agency', 'ıstanbul@ornek.com', 'camp_a')")
    schema.upgrade(target)
    with psycopg.connect(target, autocommit=True) as db:
        assert db.execute("SELECT pyxp.emails_lowered_until()").fetchone() == (None,)
        assert db.execute(ONBOARD, ("ISTANBUL@ORNEK.COM", "0x_b")).fetchall() == []
        assert db.execute(ONBOARD, ("ıstanbul@ornek.com", "0x_a")).fetchall() == [(1000, False)]
        assert balances(db, "0x_a", "0x_b") == [("0x_a", 1000), ("0x_b", 0)]
        assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_a_batch_locks_wallets_in_the_order_pythons_sorted_gives(fresh_database: Callable[..., str]) -> None:
    """README: award several wallets in one transaction in sorted order, and no batch deadlocks with
    you. A batch sorted its wallets in the database's collation, where 0xa… comes before 0x_b… once
    punctuation is ignored (glibc en_US, de_DE): a caller holding 0x_b… (first in Python's order)
    and then awarding 0xa… deadlocked with a batch holding 0xa… and waiting for 0x_b… (40P01)."""
    target = fresh_database(PUNCTUATION_IGNORED)
    schema.upgrade(target)
    wallets = sorted(["0xa1", "0x_b1"])
    assert wallets == ["0x_b1", "0xa1"]
    with psycopg.connect(target, autocommit=True) as db:
        assert db.execute("SELECT '0xa1' < '0x_b1'").fetchone() == (True,)  # the database's collation
    failures: list[BaseException] = []

    def batch() -> None:
        try:
            with XP(target, max_connections=1) as client:
                client.award_many([{"wallet": w, "action": "CAMPAIGN_APPROVED", "idempotency_key": f"batch-{w}"}
                                   for w in reversed(wallets)])
        except BaseException as exc:  # noqa: BLE001 (reported below)
            failures.append(exc)

    with psycopg.connect(target) as caller, psycopg.connect(target, autocommit=True) as control:
        caller.execute("SELECT * FROM pyxp.award(%s, 'CAMPAIGN_APPROVED', 'caller-1')", (wallets[0],))
        thread = threading.Thread(target=batch)
        thread.start()
        assert waited_for(lambda: control.execute(  # until the batch waits for a wallet the caller holds
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'").fetchone() == (1,)), "the batch never waited"
        caller.execute("SELECT * FROM pyxp.award(%s, 'CAMPAIGN_APPROVED', 'caller-2')", (wallets[1],))
        caller.commit()
        thread.join(60)
    assert failures == []
    with psycopg.connect(target, autocommit=True) as db:
        assert balances(db, *wallets) == [("0x_b1", 200), ("0xa1", 200)]


def test_a_simulation_lists_wallets_in_the_databases_order_and_groups_them_whatever_it(
        fresh_database: Callable[..., str]) -> None:
    """0043 sorts the ledger's rows by the wallet's hash and the wallet, not by the database's
    collation, to cut the caps and sum per wallet. Wallets that collation orders otherwise than
    code points (0xa… before 0x_b…; a before B) and that differ only by case each keep their own
    total, and simulate_rules lists them in the database's order. (A sort in COLLATE "C" inside an
    inlined SQL function leaked its order to a caller's ORDER BY on such a database.)"""
    target = fresh_database(PUNCTUATION_IGNORED)
    schema.upgrade(target)
    wallets = ["0x_b1", "0xa1", "B", "a", "A", "b"]
    with psycopg.connect(target, autocommit=True) as db:
        for wallet in wallets:
            for n in range(3):
                db.execute("SELECT * FROM pyxp.award(%s, 'CAMPAIGN_APPROVED', %s)", (wallet, f"{wallet}:{n}"))
        (constant,), = db.execute("SELECT r.xp_constant FROM pyxp.rules r JOIN pyxp.rulesets s USING (ruleset_id)"
                                  " WHERE s.is_active AND r.action = 'CAMPAIGN_APPROVED'").fetchall()
        install_variant(db, "capped-icu", caps={"CAMPAIGN_APPROVED": (int(constant) + 1, "day", None)})
        (capped,), = db.execute("SELECT ruleset_id FROM pyxp.rulesets WHERE is_active").fetchall()
        install_variant(db, "uncapped-icu")
        listed = db.execute("SELECT user_wallet, total_xp_now, total_xp_then FROM pyxp.simulate_rules(%s)",
                            (capped,)).fetchall()
        in_order = [w for (w,) in db.execute("SELECT user_wallet FROM pyxp.xp_balances ORDER BY user_wallet")]
    assert in_order.index("0xa1") < in_order.index("0x_b1") and in_order != sorted(in_order)  # not code points
    assert listed == [(w, 3 * constant, constant + 1) for w in in_order]


def test_an_upgrade_of_a_database_that_is_not_utf8_is_refused_before_any_revision(
        fresh_database: Callable[..., str]) -> None:
    """A LATIN1 (WIN1252, SQL_ASCII, EUC_JP) database stopped at 0027, half installed, saying an
    argument was not UTF-8 text."""
    target = fresh_database("TEMPLATE template0 ENCODING 'LATIN1' LOCALE 'C'")
    with pytest.raises(CommandError, match="pyxp needs a UTF8 database: this one's encoding is LATIN1"):
        schema.upgrade(target)
    with psycopg.connect(target) as db:
        assert db.execute("SELECT to_regnamespace('pyxp')").fetchone() == (None,)


@pytest.mark.parametrize("name", ["localtime", "Factory"])
def test_a_ruleset_zone_that_names_the_hosts_setting_is_refused(db: psycopg.Connection[Any], unchanged: Any,
                                                                name: str) -> None:
    """localtime is the server host's /etc/localtime: a restore or a failover to another host moves
    every period; Factory is a placeholder. Both are in pg_timezone_names (and Python's zoneinfo:
    tests/test_ruleset_config.py)."""
    with unchanged(), pytest.raises(psycopg.Error, match=f"timezone \"{name}\" names the server host's setting"):
        install_variant(db, "zoned", timezone=name)


def test_a_client_whose_environment_says_latin1_reads_every_wallet(conninfo: str, monkeypatch: Any) -> None:
    """PGCLIENTENCODING=LATIN1 (a WIN1252 desktop, an old service): a feed page or a board holding a
    wallet outside Latin-1 failed with 22P05, and a feed consumer stayed on that row for good.
    pyxp's own connections speak UTF8 unless the URL names an encoding."""
    monkeypatch.setenv("PGCLIENTENCODING", "LATIN1")
    with XP(conninfo, max_connections=1) as client:
        client.award("0x漢字", "CAMPAIGN_APPROVED", "latin1-1")
        # (the feed itself: its page waits for another worker's older transactions; its rows are
        # decoded by the same connection settings)
        assert [r.user_wallet for r in client.leaderboard()] == ["0x漢字"]
        assert [r.user_wallet for r in client.history("0x漢字")] == ["0x漢字"]
    with XP(make_conninfo(conninfo, client_encoding="LATIN1"), max_connections=1) as client, \
            pytest.raises(psycopg.Error):  # as the URL asks
        client.leaderboard()
