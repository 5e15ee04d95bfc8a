"""The Python client (SPEC §9): typed results, PX errors as exceptions, best-effort mode,
where calls run (own pool, the caller's pool, the caller's connection) and the async twin.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import threading
from datetime import datetime
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

import pyxp
from pyxp import XP, AsyncXP, errors
from pyxp.results import (
    AuditFinding,
    Award,
    AwardRequest,
    AwardRow,
    Balance,
    ClientRegistration,
    LeaderboardRow,
    LedgerRow,
    Level,
)

VOTE = "MODERATION_VALIDATED_BY_MODERATOR"  # +2 (SPEC §2)
WALLET = "0xAbCdEf0123456789aBcDeF0123456789AbCdEf01"
WALLET_LOWER = WALLET.lower()


def ledger_count(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT count(*) FROM pyxp.xp_transactions").fetchone()
    assert row is not None
    return int(row[0])


# --------------------------------------------------------------------------- typed results


def test_award_returns_an_award_of_award_rows(xp: XP) -> None:
    result = xp.award(WALLET, VOTE, "typed-1")

    assert isinstance(result, Award)
    assert isinstance(result.rows, tuple) and len(result.rows) == 1
    row = result.rows[0]
    assert isinstance(row, AwardRow)
    assert (row.user_wallet, row.transaction_type, row.xp_amount, row.xp_requested) == (
        WALLET_LOWER, VOTE, 2, None)
    assert isinstance(row.transaction_id, int)
    assert (result.xp, result.total_xp, result.level_before, result.level_after) == (2, 2, 1, 1)
    assert result.xp_to_next_level == 98  # SPEC §3: a wallet at 2 XP has 98 to go
    assert result.leveled_up is False
    assert result.replayed is False
    assert result.transaction_types == [VOTE]


def test_award_reports_a_level_up(xp: XP) -> None:
    """SPEC §3: every award reports the level before and after, so callers can celebrate."""
    xp.award(WALLET, VOTE, "before-level-up")
    result = xp.award(WALLET, "B2C_MINT", "level-up")
    assert (result.xp, result.total_xp, result.level_before, result.level_after) == (1000, 1002, 1, 5)
    assert result.leveled_up is True


def test_repeated_award_is_marked_replayed_and_returns_the_original(
        xp: XP, db: psycopg.Connection[Any]) -> None:
    first = xp.award(WALLET, VOTE, "replay-key")
    again = xp.award(WALLET, VOTE, "replay-key")

    assert again.replayed is True
    assert again.rows == tuple(dataclasses.replace(row, replayed=True) for row in first.rows)
    assert ledger_count(db) == 1


def test_award_with_params_and_context(xp: XP, db: psycopg.Connection[Any]) -> None:
    """Formula inputs go in params; context lands in the row's metadata (SPEC §5 ``award``)."""
    result = xp.award(WALLET, "Completion_Submit_B2C_Paid", "paid-1", params={"PRICE_COMPLETION": 500},
                      context={"campaign_id": "camp-1", "subject": "completion-1", "note": "manual"})
    assert result.xp == 600  # SPEC §10: B2C paid 500 -> +600
    row = db.execute("SELECT campaign_id, subject, metadata ->> 'note' FROM pyxp.xp_transactions").fetchone()
    assert row == ("camp-1", "completion-1", "manual")


def test_reverse_returns_the_compensating_row(xp: XP) -> None:
    original = xp.award(WALLET, "CAMPAIGN_APPROVED", "to-reverse")
    reversal = xp.reverse(original.rows[0].transaction_id, "approved by mistake")
    assert reversal.transaction_types == ["REVERSAL"]
    assert (reversal.xp, reversal.total_xp, reversal.level_before, reversal.level_after) == (-100, 0, 2, 1)
    assert reversal.leveled_up is False


def test_award_many_returns_one_award_per_event_in_order(xp: XP, db: psycopg.Connection[Any]) -> None:
    """SPEC §9: batch variant for bulk ingestion; events as AwardRequest or plain mappings."""
    earlier = xp.award("0x_m", VOTE, "batch-earlier")
    results = xp.award_many([
        AwardRequest("0x_a", "CAMPAIGN_APPROVED", "batch-1"),
        {"wallet": "0x_b", "action": "Completion_Submit_B2C_Paid", "idempotency_key": "batch-2",
         "params": {"PRICE_COMPLETION": 300}},
        AwardRequest("0x_m", VOTE, "batch-earlier"),  # replays the single award above
        AwardRequest("0x_a", VOTE, "batch-3"),
    ])

    assert isinstance(results, list) and all(isinstance(result, Award) for result in results)
    summary = [(result.rows[0].user_wallet, result.xp, result.total_xp, result.replayed) for result in results]
    assert summary == [
        ("0x_a", 100, 100, False), ("0x_b", 400, 400, False), ("0x_m", 2, 2, True), ("0x_a", 2, 102, False)]
    assert all(isinstance(row, AwardRow) for result in results for row in result.rows)
    assert results[2].rows[0].transaction_id == earlier.rows[0].transaction_id
    assert results[0].leveled_up and results[0].level_after == 2
    assert ledger_count(db) == 4


def test_refused_batch_raises_naming_the_event_and_writes_nothing(xp: XP, unchanged: Any) -> None:
    with unchanged(), pytest.raises(errors.UnknownAction) as raised:
        xp.award_many([AwardRequest("0x_a", VOTE, "ok-event"),
                       AwardRequest("0x_a", "NO_SUCH_ACTION", "bad-event")])
    assert "event 1" in str(raised.value)


def test_flow_methods_return_typed_results(xp: XP) -> None:
    """SPEC §10: the creator's creation call takes it from level 1 to 6 (2500 XP, 1500 to go)."""
    created = xp.award_campaign_creation("0x_creator", "camp-typed", "B2C", winstory_creates_video=True,
                                         no_rewards=True)
    assert isinstance(created, Award)
    assert created.transaction_types == ["B2C_MINT", "OPTION_WINSTORY_VIDEO", "OPTION_NO_REWARDS"]
    assert (created.xp, created.total_xp, created.level_before, created.level_after,
            created.xp_to_next_level, created.leveled_up) == (2500, 2500, 1, 6, 1500, True)

    registration = xp.register_agency_client("0x_agency", " Client@Example.COM ", "camp-agency", "ACME")
    assert isinstance(registration, ClientRegistration)
    assert (registration.agency_wallet, registration.client_email, registration.campaign_id,
            registration.company_name, registration.xp_granted) == (
        "0x_agency", "client@example.com", "camp-agency", "ACME", False)

    onboarded = xp.onboard_agency_client("client@example.com", "0x_client")
    assert isinstance(onboarded, Award)
    assert (onboarded.rows[0].user_wallet, onboarded.xp, onboarded.level_after) == ("0x_client", 1000, 5)


# --------------------------------------------------------------------------- reads



def test_a_float_price_is_the_same_number_in_a_flow_and_in_params(xp: XP) -> None:
    """A hostile test (helper-76): psycopg sent a float as float8, which ::numeric rounded to 15 digits:
    a completion's price 1.4999999999999998 was stored 1.5 and paid 102, while the same float in a
    generic award's params (its repr) paid 101; a retry with the Decimal of the same digits was PX010."""
    price = 1.4999999999999998
    flow = xp.award_completion("0xf1", "c2", "cpF1", "B2C", is_paid=True, price_completion=price)
    generic = xp.award("0xf2", "Completion_Submit_B2C_Paid", "cpF2", {"PRICE_COMPLETION": price})
    assert flow.xp == generic.xp == 101
    assert xp.award_completion("0xf1", "c2", "cpF1", "B2C", is_paid=True,
                               price_completion=Decimal(repr(price))).replayed


@pytest.mark.parametrize("price, message", [("abc", "must be a number"), ("", "must be a number"),
                                            ("\uff11\uff12", "must be a number"), ("\u0661\u0662", "must be a number"),
                                            ("1_000", "must be a number"),
                                            (Decimal("1e200000"), "is beyond PostgreSQL's numeric"),
                                            ("1e-20000", "is beyond PostgreSQL's numeric"),
                                            ("0E-20000", "is beyond PostgreSQL's numeric")])
def test_a_price_that_is_no_postgresql_number_is_a_value_error(xp: XP, unchanged: Any, price: Any,
                                                               message: str) -> None:
    """A hostile test (helper-76): these failed with psycopg's InvalidTextRepresentation (22P02) or
    NumericValueOutOfRange (22003), not an error of pyxp's; now a ValueError naming the parameter,
    before anything is sent. A numeric string is its number, read as PostgreSQL reads one (full-width
    and Arabic-Indic digits and 1_000, which Python's Decimal reads, are not: a review)."""
    with unchanged(), pytest.raises(ValueError, match=f"price_completion {message}"):
        xp.award_completion("0xv1", "c3", "cpV1", "B2C", is_paid=True, price_completion=price)
    assert xp.award_completion("0xv1", "c3", "cpV2", "B2C", is_paid=True, price_completion=" 12.50 ").xp == 113

def test_balance_is_typed(xp: XP) -> None:
    xp.award(WALLET, VOTE, "bal-1")
    balance = xp.balance(WALLET)
    assert isinstance(balance, Balance)
    assert (balance.user_wallet, balance.total_xp, balance.current_level, balance.xp_to_next_level,
            balance.total_moderations) == (WALLET_LOWER, 2, 1, 98, 0)
    assert balance.created_at is not None and balance.updated_at is not None


def test_balance_of_an_unknown_wallet_is_zero_at_level_one(xp: XP) -> None:
    balance = xp.balance("0x_nobody")
    assert (balance.user_wallet, balance.total_xp, balance.current_level, balance.xp_to_next_level,
            balance.created_at) == ("0x_nobody", 0, 1, 100, None)


@pytest.mark.parametrize(("total_xp", "expected"), [
    (0, (1, 0, 100, 100)),
    (2, (1, 0, 100, 98)),
    (2500, (6, 2000, 4000, 1500)),
    (-50, (1, 0, 100, 150)),
])
def test_level_for_returns_ints(xp: XP, total_xp: int, expected: tuple[int, ...]) -> None:
    level = xp.level_for(total_xp)
    assert isinstance(level, Level)
    values = (level.level, level.level_start_xp, level.next_level_xp, level.xp_to_next_level)
    assert values == expected
    assert all(type(value) is int for value in values)


def test_level_for_the_largest_bigint_is_ints(xp: XP) -> None:
    """SPEC §3: every bigint total has a level; the next threshold may exceed bigint but stays an int."""
    level = xp.level_for(2**63 - 1)
    values = (level.level, level.level_start_xp, level.next_level_xp, level.xp_to_next_level)
    assert all(type(value) is int for value in values)
    assert level.level_start_xp <= 2**63 - 1 < level.next_level_xp
    assert level.next_level_xp - (2**63 - 1) == level.xp_to_next_level


def test_history_is_newest_first_and_pages_with_before_id(xp: XP) -> None:
    ids = [xp.award(WALLET, VOTE, f"hist-{n}").rows[0].transaction_id for n in range(5)]
    xp.award("0x_someone_else", VOTE, "hist-other")

    page = xp.history(WALLET, max_rows=3)
    assert all(isinstance(row, LedgerRow) for row in page)
    assert [row.transaction_id for row in page] == ids[::-1][:3]
    assert [row.balance_after for row in page] == [10, 8, 6]
    first = page[0]
    assert (first.user_wallet, first.transaction_type, first.xp_amount, first.idempotency_key,
            first.reverses) == (WALLET_LOWER, VOTE, 2, "hist-4", None)
    assert isinstance(first.metadata, dict) and isinstance(first.rule_id, int)

    rest = xp.history(WALLET, max_rows=3, before_id=page[-1].transaction_id)
    assert [row.transaction_id for row in rest] == ids[1::-1]


def test_leaderboard_ranks_by_total_then_wallet(xp: XP) -> None:
    xp.award("0x_b", "CAMPAIGN_APPROVED", "lb-1")
    xp.award("0x_a", "CAMPAIGN_APPROVED", "lb-2")
    xp.award("0x_c", "B2C_MINT", "lb-3")
    xp.award("0x_d", VOTE, "lb-4")

    board = xp.leaderboard()
    assert all(isinstance(row, LeaderboardRow) for row in board)
    assert [(row.rank, row.user_wallet, row.total_xp, row.current_level) for row in board] == [
        (1, "0x_c", 1000, 5), (2, "0x_a", 100, 2), (3, "0x_b", 100, 2), (4, "0x_d", 2, 1)]
    assert [row.rank for row in xp.leaderboard(max_rows=2, offset_rows=2)] == [3, 4]


def test_rank_is_an_int_or_none(xp: XP) -> None:
    xp.award("0x_a", "CAMPAIGN_APPROVED", "rank-1")
    xp.award("0x_b", VOTE, "rank-2")
    assert xp.rank("0x_b") == 2
    assert type(xp.rank("0x_a")) is int
    assert xp.rank("0x_unknown") is None


def test_audit_is_empty_when_healthy_and_lists_findings_otherwise(
        xp: XP, db: psycopg.Connection[Any]) -> None:
    xp.award(WALLET, VOTE, "audit-1")
    assert xp.audit() == []

    # A balance edited behind pyxp's back (xp_balances has no append-only trigger).
    db.execute("UPDATE pyxp.xp_balances SET total_xp = total_xp + 5")
    findings = xp.audit()
    assert findings and all(isinstance(finding, AuditFinding) for finding in findings)
    assert "balance_mismatch" in {finding.check_name for finding in findings}
    assert {finding.user_wallet for finding in findings} == {WALLET_LOWER}


def test_recalculate_levels_returns_the_number_of_rows_changed(xp: XP, db: psycopg.Connection[Any]) -> None:
    xp.award(WALLET, "CAMPAIGN_APPROVED", "recalc-1")
    db.execute("UPDATE pyxp.xp_balances SET current_level = 7")
    assert xp.recalculate_levels() == 1
    assert xp.recalculate_levels() == 0
    assert xp.balance(WALLET).current_level == 2


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("call", "error"), [
    (lambda xp: xp.award("   ", VOTE, "bad-wallet"), errors.InvalidWallet),
    (lambda xp: xp.award(WALLET, "NO_SUCH_ACTION", "bad-action"), errors.UnknownAction),
    (lambda xp: xp.award(WALLET, "Completion_Submit_B2C_Paid", "no-price"), errors.MissingInput),
    (lambda xp: xp.award(WALLET, VOTE, "bad-params", params={"TYPO": 1}), errors.InvalidParams),
    (lambda xp: xp.reverse(123456789, "no such row"), errors.UnknownTransaction),
    (lambda xp: xp.history(WALLET, max_rows=0), errors.InvalidArgument),
], ids=["PX001", "PX009", "PX018", "PX017", "PX015", "PX023"])
def test_px_codes_raise_their_xperror_subclass(xp: XP, unchanged: Any, call: Any,
                                                error: type[errors.XPError]) -> None:
    with unchanged(), pytest.raises(error) as raised:
        call(xp)
    exc = raised.value
    assert isinstance(exc, pyxp.XPError)
    assert exc.code == error.code and exc.code.startswith("PX")
    assert exc.hint  # SPEC §6: the hint says what is accepted
    assert isinstance(exc.__cause__, psycopg.Error)
    assert exc.__cause__.sqlstate == exc.code
    assert exc.code in str(exc)


def test_same_key_with_other_inputs_raises_idempotency_conflict(xp: XP, unchanged: Any) -> None:
    xp.award(WALLET, VOTE, "conflict-key")
    with unchanged(), pytest.raises(errors.IdempotencyConflict) as raised:
        xp.award("0x_another_wallet", VOTE, "conflict-key")
    assert raised.value.code == "PX010"
    assert raised.value.hint
    assert isinstance(raised.value.__cause__, psycopg.Error)
    assert raised.value.__cause__.sqlstate == "PX010"


def test_str_of_an_error_includes_the_detail_on_one_line(xp: XP) -> None:
    """SPEC §6: str() includes the detail, e.g. what the first call with the key asked for."""
    xp.award(WALLET, VOTE, "detail-key")
    with pytest.raises(errors.IdempotencyConflict) as raised:
        xp.award("0x_another_wallet", VOTE, "detail-key")
    exc = raised.value
    text = str(exc)
    assert exc.detail and "first call" in exc.detail and "this call" in exc.detail
    assert text.startswith(f"PX010: {exc.message}")
    assert exc.detail in text and "0x_another_wallet" in text and WALLET_LOWER in text
    assert text.endswith(f"({exc.hint})")
    assert "\n" not in text


def test_str_of_an_error_without_detail_or_hint() -> None:
    assert str(errors.InvalidWallet("invalid wallet: ''")) == "PX001: invalid wallet: ''"
    assert str(errors.InvalidWallet("m", hint="h")) == "PX001: m (h)"
    assert str(errors.InvalidWallet("m", detail="d\nmore", hint="h")) == "PX001: m; d more (h)"
    assert str(pyxp.DatabaseUnavailable("no server")) == "no server"


def test_error_from_sqlstate_maps_px_codes_for_any_driver() -> None:
    exc = errors.error_from_sqlstate("PX010", "key reused", hint="same inputs", detail="first call: {}")
    assert isinstance(exc, errors.IdempotencyConflict)
    assert (exc.code, exc.message, exc.hint, exc.detail) == (
        "PX010", "key reused", "same inputs", "first call: {}")
    assert errors.error_from_sqlstate("23505", "duplicate key") is None
    assert errors.error_from_sqlstate(None, "no code") is None
    newer = errors.error_from_sqlstate("PX999", "a refusal of a newer schema")
    assert type(newer) is pyxp.XPError and newer is not None and newer.code == "PX999"
    assert errors.error_from_sqlstate is pyxp.error_from_sqlstate


def test_error_from_database_takes_an_asyncpg_style_error() -> None:
    class FakeAsyncpgError(Exception):  # the attributes asyncpg.PostgresError carries
        sqlstate, message, hint, detail = "PX001", "invalid wallet: ''", "a wallet is ...", None

    exc = errors.error_from_database(FakeAsyncpgError())
    assert isinstance(exc, errors.InvalidWallet) and exc.hint == "a wallet is ..."


def test_error_from_sqlstate_on_a_real_asyncpg_error(conninfo: str) -> None:
    asyncpg = pytest.importorskip("asyncpg")
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(conninfo)

    async def refused() -> BaseException:
        conn = await asyncpg.connect(host=params.get("host"), port=int(params.get("port") or 5432),
                                     user=params.get("user"), database=params.get("dbname"),
                                     password=params.get("password"))
        try:
            await conn.fetch("SELECT * FROM pyxp.award(wallet => $1, action => $2, idempotency_key => 'k')",
                             "", VOTE)
        except asyncpg.PostgresError as exc:
            return exc
        finally:
            await conn.close()
        raise AssertionError("not refused")

    driver_error: Any = asyncio.run(refused())
    exc = errors.error_from_sqlstate(driver_error.sqlstate, driver_error.message,
                                     driver_error.hint, driver_error.detail)
    assert isinstance(exc, errors.InvalidWallet) and exc.hint
    assert isinstance(errors.error_from_database(driver_error), errors.InvalidWallet)


def test_every_px_code_has_its_own_exception_class() -> None:
    """SPEC §6: one code per kind of refusal, each mapped to a subclass of pyxp.XPError."""
    codes = [f"PX{n:03d}" for n in range(1, 25)]
    classes = [errors.ERRORS_BY_CODE[code] for code in codes]
    assert len(set(classes)) == len(codes)
    assert all(issubclass(cls, pyxp.XPError) and cls.code == code for cls, code in zip(classes, codes))
    assert all(getattr(pyxp, cls.__name__) is cls for cls in classes)


# --------------------------------------------------------------------------- best effort


def test_best_effort_failure_logs_and_returns_none(conninfo: str, unchanged: Any,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """SPEC §9: 'if XP fails, the main action goes on': log (PX code and call), return None."""
    with XP(conninfo, best_effort=True, max_connections=1) as client, unchanged():
        with caplog.at_level(logging.WARNING, logger="pyxp"):
            assert client.award(WALLET, "NO_SUCH_ACTION", "best-effort") is None
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "PX009" in message
    assert "award" in message


PERSON = "0x_person_who_must_not_be_logged"


def test_best_effort_logs_no_personal_data_at_warning(conninfo: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """The WARNING names the call and the code; not the wallet, email, key or parameters."""
    with XP(conninfo, best_effort=True, max_connections=1) as client:
        with caplog.at_level(logging.WARNING, logger="pyxp"):
            assert client.register_agency_client(PERSON, "Person.Private@example.com", "c1") is not None
            assert client.onboard_agency_client("person.private@example.com", PERSON) is None  # PX021
            params = {"PRICE_COMPLETION": 123456}
            assert client.award(PERSON, VOTE, "key-of-the-person", params=params) is None
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert "onboard_agency_client" in messages[0] and "PX021" in messages[0]
    assert "award" in messages[1] and "PX017" in messages[1]
    for leak in (PERSON, "person.private", "key-of-the-person", "123456"):
        assert leak not in caplog.text


def test_best_effort_logs_details_when_asked(conninfo: str, caplog: pytest.LogCaptureFixture) -> None:
    """``log_params=True``: the WARNING has the message and parameters; else they are at DEBUG."""
    with XP(conninfo, best_effort=True, max_connections=1, log_params=True) as client:
        with caplog.at_level(logging.WARNING, logger="pyxp"):
            assert client.award(PERSON, "NO_SUCH_ACTION", "asked-1") is None
    assert [record.levelno for record in caplog.records] == [logging.WARNING]
    assert "PX009" in caplog.text and PERSON in caplog.text and "asked-1" in caplog.text
    caplog.clear()
    with XP(conninfo, best_effort=True, max_connections=1) as client:
        with caplog.at_level(logging.DEBUG, logger="pyxp"):
            assert client.award(PERSON, "NO_SUCH_ACTION", "asked-2") is None
    warning, debug = (record for record in caplog.records if record.name == "pyxp")
    assert PERSON not in warning.getMessage()
    assert debug.levelno == logging.DEBUG and PERSON in debug.getMessage() and "asked-2" in debug.getMessage()


def test_best_effort_success_returns_the_result(conninfo: str) -> None:
    with XP(conninfo, best_effort=True, max_connections=1) as client:
        result = client.award(WALLET, VOTE, "best-effort-ok")
    assert isinstance(result, Award) and result.xp == 2


def test_default_mode_raises(xp: XP, unchanged: Any) -> None:
    with unchanged(), pytest.raises(errors.UnknownAction):
        xp.award(WALLET, "NO_SUCH_ACTION", "raises")


# --------------------------------------------------------------------------- where calls run


@pytest.fixture
def app_table(db: psycopg.Connection[Any]) -> str:
    """An application table standing for the caller's 'main action' (a vote, a campaign...)."""
    db.execute("CREATE TABLE public.app_votes (id serial PRIMARY KEY, note text)")
    return "public.app_votes"


def app_votes(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT count(*) FROM public.app_votes").fetchone()
    assert row is not None
    return int(row[0])


def test_award_on_callers_connection_rolls_back_with_the_main_action(
        conninfo: str, db: psycopg.Connection[Any], app_table: str) -> None:
    with psycopg.connect(conninfo) as conn:
        conn.execute("INSERT INTO public.app_votes (note) VALUES ('main action')")
        result = XP(conn).award(WALLET, VOTE, "in-tx-rollback")
        assert result.xp == 2
        conn.rollback()
    assert (app_votes(db), ledger_count(db)) == (0, 0)
    assert db.execute("SELECT count(*) FROM pyxp.idempotency_keys").fetchone() == (0,)


def test_award_on_callers_connection_commits_with_the_main_action(
        conninfo: str, db: psycopg.Connection[Any], app_table: str) -> None:
    with psycopg.connect(conninfo) as conn:
        conn.execute("INSERT INTO public.app_votes (note) VALUES ('main action')")
        XP(conn).award(WALLET, VOTE, "in-tx-commit")
        assert ledger_count(db) == 0  # not visible before the caller commits
        conn.commit()
    assert (app_votes(db), ledger_count(db)) == (1, 1)


def test_award_as_first_statement_on_callers_connection_is_undone_by_its_rollback(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """A non-autocommit connection: nothing is committed until the caller commits."""
    with psycopg.connect(conninfo) as conn:
        XP(conn).award(WALLET, VOTE, "first-statement")
        conn.rollback()
    assert ledger_count(db) == 0


def test_failed_award_on_callers_connection_leaves_its_transaction_usable(
        conninfo: str, db: psycopg.Connection[Any], app_table: str) -> None:
    """Best effort inside the caller's transaction: the failure does not abort the main action."""
    with psycopg.connect(conninfo) as conn:
        conn.execute("INSERT INTO public.app_votes (note) VALUES ('main action')")
        assert XP(conn, best_effort=True).award(WALLET, "NO_SUCH_ACTION", "fails") is None
        conn.execute("INSERT INTO public.app_votes (note) VALUES ('goes on')")
        conn.commit()
    assert (app_votes(db), ledger_count(db)) == (2, 0)


def test_award_on_an_autocommit_connection_is_its_own_transaction(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        XP(conn).award(WALLET, VOTE, "autocommit")
    assert ledger_count(db) == 1


@pytest.fixture
def user_pool(conninfo: str) -> Iterator[ConnectionPool]:
    pool = ConnectionPool(conninfo, min_size=1, max_size=2, open=False)
    pool.open(wait=True)
    try:
        yield pool
    finally:
        pool.close()


def test_client_on_a_users_pool_commits_each_call_and_leaves_the_pool_open(
        user_pool: ConnectionPool, db: psycopg.Connection[Any]) -> None:
    client = XP(user_pool)
    assert client.award(WALLET, VOTE, "pool-1").xp == 2
    assert ledger_count(db) == 1
    assert client.balance(WALLET).total_xp == 2
    client.close()
    assert not user_pool.closed
    with user_pool.connection() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_client_without_target_uses_pyxp_database_url(
        conninfo: str, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """SPEC §9: the database URL comes from PYXP_DATABASE_URL."""
    monkeypatch.setenv("PYXP_DATABASE_URL", conninfo)
    with XP(max_connections=1) as client:
        client.award(WALLET, VOTE, "from-env")
    assert ledger_count(db) == 1


# --------------------------------------------------------------------------- async twin


def test_async_client_returns_what_the_sync_client_returns(xp: XP, conninfo: str) -> None:
    async def scenario() -> tuple[Award, Award, Balance, list[LedgerRow], list[LeaderboardRow]]:
        async with await AsyncXP.connect(conninfo, max_connections=2) as client:
            first = await client.award(WALLET, "CAMPAIGN_APPROVED", "async-1")
            second = await client.award(WALLET, VOTE, "async-2")
            return (first, second, await client.balance(WALLET), await client.history(WALLET),
                    await client.leaderboard())

    first, second, balance, history, board = asyncio.run(scenario())

    assert isinstance(first, Award) and isinstance(second, Award)
    assert (second.xp, second.total_xp, second.level_before, second.level_after) == (2, 102, 2, 2)
    # The sync client replays the same keys: same rows, marked replayed.
    assert xp.award(WALLET, "CAMPAIGN_APPROVED", "async-1").rows == tuple(
        dataclasses.replace(row, replayed=True) for row in first.rows)
    assert xp.award(WALLET, VOTE, "async-2").rows == tuple(
        dataclasses.replace(row, replayed=True) for row in second.rows)
    assert balance == xp.balance(WALLET)
    assert history == xp.history(WALLET)
    assert board == xp.leaderboard()


def test_async_client_raises_the_same_errors(conninfo: str, unchanged: Any) -> None:
    async def scenario() -> None:
        async with await AsyncXP.connect(conninfo, max_connections=1) as client:
            await client.award(WALLET, "NO_SUCH_ACTION", "async-bad")

    with unchanged(), pytest.raises(errors.UnknownAction) as raised:
        asyncio.run(scenario())
    assert isinstance(raised.value.__cause__, psycopg.Error)


def test_async_client_best_effort_logs_and_returns_none(conninfo: str, unchanged: Any,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> Any:
        async with await AsyncXP.connect(conninfo, best_effort=True, max_connections=1) as client:
            return await client.award("", VOTE, "async-best-effort")

    with unchanged(), caplog.at_level(logging.WARNING, logger="pyxp"):
        assert asyncio.run(scenario()) is None
    assert any("PX001" in record.getMessage() and "award" in record.getMessage() for record in caplog.records)


def test_async_client_on_callers_connection_rolls_back_with_it(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    async def scenario() -> Award:
        async with await psycopg.AsyncConnection.connect(conninfo) as conn:
            await conn.execute("SELECT 1")  # the caller's transaction is open
            result = await AsyncXP(conn).award(WALLET, VOTE, "async-rollback")
            await conn.rollback()
            return result

    assert asyncio.run(scenario()).xp == 2
    assert ledger_count(db) == 0


def test_async_client_needs_a_pool_or_connection_not_a_conninfo(conninfo: str) -> None:
    with pytest.raises(TypeError, match="AsyncXP.connect"):
        AsyncXP(conninfo)  # type: ignore[arg-type]


def test_best_effort_client_on_a_database_that_is_down_logs_instead_of_raising(
        caplog: pytest.LogCaptureFixture) -> None:
    client = XP("host=127.0.0.1 port=1 connect_timeout=1", best_effort=True, max_connections=1)
    try:
        client._pool.timeout = 1  # type: ignore[union-attr]  # fail fast in the test
        with caplog.at_level(logging.WARNING, logger="pyxp"):
            assert client.award("0x_user", "CAMPAIGN_APPROVED", "down-1") is None
        assert "award" in caplog.text
    finally:
        client.close()


def test_level_for_takes_the_sql_parameter_name(xp: XP) -> None:
    assert xp.level_for(total_xp=2500).level == 6


# --------------------------------------------------------------------------- messy callers (0029)
# A hostile test of the client: each of these lost, misdirected or hid an award before 0029.


def test_threads_sharing_a_client_on_one_connection_each_get_their_own_award(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """XP(connection) takes one call at a time: interleaved, two threads' transaction blocks
    reported awards that never committed and left the autocommit connection in a transaction."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        xp = XP(conn)
        done: list[int] = []
        failed: list[BaseException] = []

        def awards(n: int) -> None:
            for i in range(20):
                try:
                    done.append(xp.award(f"0xthread{n}", VOTE, f"thread-{n}-{i}").rows[0].transaction_id)
                except BaseException as exc:  # noqa: BLE001 - every failure is the finding
                    failed.append(exc)

        threads = [threading.Thread(target=awards, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failed == [] and len(done) == 80
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert db.execute("SELECT count(*) FROM pyxp.xp_transactions WHERE id = ANY (%s)", (done,)).fetchone() == (80,)


def test_tasks_sharing_an_async_client_on_one_connection_each_get_their_own_award(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    async def run() -> list[Award]:
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
            xp = AsyncXP(conn)
            awards = await asyncio.gather(*[xp.award(f"0xtask{n}", VOTE, f"task-{n}") for n in range(20)])
            awards.append(await xp.award("0xtasklater", VOTE, "task-later"))
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            return awards

    awards = asyncio.run(run())
    ids = [a.rows[0].transaction_id for a in awards]
    assert db.execute("SELECT count(*) FROM pyxp.xp_transactions WHERE id = ANY (%s)", (ids,)).fetchone() == (21,)


class _Wallets(enum.Enum):
    ALICE = "0xalice"


@pytest.mark.parametrize(("call", "message"), [
    (lambda xp: xp.award(b"0xa1", VOTE, "t1"), "wallet must be str, not bytes"),
    (lambda xp: xp.award(bytearray(b"0xa1"), VOTE, "t1"), "wallet must be str, not bytearray"),
    (lambda xp: xp.award(_Wallets.ALICE, VOTE, "t1"), "wallet must be str, not _Wallets"),
    (lambda xp: xp.award_completion(b"0xa1", "c1", "k1", "B2C"), "completer_wallet must be str"),
    (lambda xp: xp.award("0xa1", VOTE, 7), "idempotency_key must be str, not int"),
    (lambda xp: xp.reverse(1.9, "x"), "transaction_id must be int, not float"),
    (lambda xp: xp.reverse(True, "x"), "transaction_id must be int, not bool"),
    (lambda xp: xp.history("0xa1", max_rows=2.7), "max_rows must be int, not float"),
    (lambda xp: xp.history("0xa1", before_id=1.5), "before_id must be int, not float"),
    (lambda xp: xp.level_for(True), "total_xp must be"),
    (lambda xp: xp.award_completion("0xa1", "c1", "k1", "B2C", is_paid=1), "is_paid must be bool, not int"),
    (lambda xp: xp.award_completion("0xa1", "c1", "k1", "B2C", price_completion=True), "price_completion must be"),
    (lambda xp: xp.period_xp("0xa1", "day", datetime(2026, 11, 27, 23)), "at must be an aware datetime"),
])
def test_a_python_value_psycopg_would_send_as_another_is_refused(xp: XP, unchanged: Any, call: Any,
                                                                  message: str) -> None:
    """bytes went as bytea (its hex text became a new wallet), an Enum member as its name, a
    float id rounded to another transaction (reverse(1.9) reversed transaction 2), a naive `at`
    was read in the session's TimeZone: a TypeError now, before anything is sent."""
    xp.award("0xa1", VOTE, "before")
    xp.award("0xa2", VOTE, "before-2")
    with unchanged(), pytest.raises(TypeError, match=message):
        call(xp)


@pytest.mark.parametrize("call, message", [
    (lambda xp: xp.changes(2 ** 63), "after_cursor must be between"),
    (lambda xp: xp.changes(0, 2 ** 31), "max_rows must be between"),
    (lambda xp: xp.leaderboard(10, 2 ** 31), "offset_rows must be between"),
    (lambda xp: xp.history("0xa1", 10, -(2 ** 63) - 1), "before_id must be between"),
    (lambda xp: next(iter(xp.watch(2 ** 63))), "after_cursor must be between"),
    (lambda xp: xp.reverse(2 ** 64, "k-big"), "must be between"),
])
def test_an_int_beyond_its_sql_type_is_refused_before_anything_is_sent(xp: XP, unchanged: Any, call: Any,
                                                                       message: str) -> None:
    """A Python int beyond its parameter's bigint or integer failed in the query's cast with psycopg's
    NumericValueOutOfRange (22003), where every other bad argument gets one of pyxp's errors or a
    TypeError (a hostile test, 0039): a ValueError now, naming the parameter and its range."""
    xp.award("0xa1", VOTE, "before")
    with unchanged(), pytest.raises(ValueError, match=message):
        call(xp)


def test_the_clients_own_pool_runs_read_committed_whatever_the_sessions_default(conninfo: str) -> None:
    """Behind a transaction pooler another client's SET default_transaction_isolation =
    serializable stays on the server connection: every award was refused (PX025)."""
    options = psycopg.conninfo.make_conninfo(conninfo, options="-c default_transaction_isolation=serializable")
    with XP(options) as xp:
        assert xp.award("0xiso", VOTE, "iso-1").total_xp == 2
        assert len(xp.award_many([AwardRequest("0xiso", VOTE, "iso-2")])) == 1



def test_a_callers_connection_pool_or_feed_with_client_side_cursors_still_awards(
        conninfo: str, db: psycopg.Connection[Any]) -> None:
    """Django's default cursor_factory is ClientCursor, which refuses binary results: on such a
    connection or pool every call failed with NotSupportedError, best effort dropped every award, and
    watch() raised (a hostile test, 0035). pyxp opens its own server-side cursors."""
    with psycopg.connect(conninfo, cursor_factory=psycopg.ClientCursor) as conn:
        with XP(conn) as client:
            assert client.award(WALLET, VOTE, "client-cursor-1").xp == 2
            assert client.balance(WALLET).total_xp == 2
        conn.commit()
        with XP(conn, best_effort=True) as client:
            assert client.award(WALLET, VOTE, "client-cursor-2") is not None
        conn.commit()
    pool = ConnectionPool(conninfo, min_size=1, max_size=1, kwargs={"cursor_factory": psycopg.ClientCursor},
                          open=True)
    try:
        with XP(pool) as client:
            assert client.award(WALLET, VOTE, "client-cursor-3").total_xp == 6
            changes = client.watch(after_cursor=0, wallet=WALLET)
            assert [next(changes).xp_amount for _ in range(3)] == [2, 2, 2]
            changes.close()
    finally:
        pool.close()
    assert ledger_count(db) == 3


def test_an_async_caller_connection_with_client_side_cursors_still_awards(conninfo: str,
                                                                          db: psycopg.Connection[Any]) -> None:
    async def scenario() -> None:
        conn = await psycopg.AsyncConnection.connect(conninfo, cursor_factory=psycopg.AsyncClientCursor)
        async with conn:
            async with AsyncXP(conn) as client:
                assert (await client.award(WALLET, VOTE, "async-client-cursor")).xp == 2
            await conn.commit()
            changes = AsyncXP(conn).watch(after_cursor=0)
            assert (await anext(changes)).xp_amount == 2
            await changes.aclose()

    asyncio.run(scenario())
    assert ledger_count(db) == 1
