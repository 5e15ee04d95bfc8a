"""An application's own triggers on pyxp's tables (a hostile test of pyxp inside applications, 0035).

A trigger on the ledger fires while the call that inserted the row has not updated its balance:
an award made there read the balance stale, and the first call then wrote over it (a +2 in the
ledger, missing from the balance; two rows at one wallet_seq). It is refused (PX034) before it
writes anything. A trigger on the balances fires after the update, and may award.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from conftest import install_variant

from pyxp import XP, NestedWrite

BONUS = "MODERATION_VALIDATED_BY_MODERATOR"  # +2

def app_trigger(db: psycopg.Connection[Any], name: str, table: str, event: str, body: str) -> None:
    """An application's AFTER ``event`` row trigger ``name`` on ``pyxp.<table>``, running ``body``."""
    db.execute(f"""
        CREATE FUNCTION public.{name}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            {body}
            RETURN NULL;
        END $$;
        CREATE TRIGGER {name} AFTER {event} ON pyxp.{table} FOR EACH ROW EXECUTE FUNCTION public.{name}();
    """)


@pytest.fixture
def ledger_bonus(db: psycopg.Connection[Any]) -> None:
    """A bonus for every approval, awarded by a trigger on the ledger (what the hostile test wrote)."""
    app_trigger(db, "approval_bonus", "xp_transactions", "INSERT",
                f"IF NEW.transaction_type = 'CAMPAIGN_APPROVED' THEN "
                f"PERFORM pyxp.award(NEW.user_wallet, '{BONUS}', 'bonus:' || NEW.id); END IF;")


def approve(db: psycopg.Connection[Any], wallet: str, key: str) -> Any:
    return db.execute("SELECT * FROM pyxp.award(%s, 'CAMPAIGN_APPROVED', %s)", (wallet, key)).fetchall()


def test_an_award_from_a_ledger_trigger_is_refused_and_nothing_is_written(
        db: psycopg.Connection[Any], ledger_bonus: None, unchanged: Any) -> None:
    with unchanged(), db.transaction(), pytest.raises(psycopg.Error) as refused:
        approve(db, "0xself", "k1")
    assert refused.value.sqlstate == "PX034"
    assert "trigger" in str(refused.value) and refused.value.diag.message_hint is not None
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


@pytest.mark.parametrize("call", [
    "PERFORM pyxp.award(NEW.user_wallet, '" + BONUS + "', 'bonus:' || NEW.id)",
    "PERFORM pyxp.award_moderation_vote(NEW.user_wallet, 'camp-' || NEW.id, 'VALID', 'B2C')",
    "PERFORM pyxp.award_many(jsonb_build_array(jsonb_build_object('wallet', '0xother', 'action', '"
    + BONUS + "', 'idempotency_key', 'bonus:' || NEW.id)))",
    "PERFORM pyxp.reverse_transaction(NEW.id, 'undone by a trigger')",
])
def test_every_writer_called_from_a_ledger_trigger_that_catches_the_refusal_leaves_a_sound_ledger(
        db: psycopg.Connection[Any], call: str) -> None:
    """The trigger catches PX034 (a subtransaction): the award that fired it goes through alone, its
    balance is its ledger's, and the audit is clean. Before 0035 the nested call wrote its rows and
    the outer call's balance update erased it from the balance."""
    db.execute("CREATE TABLE public.refused_bonus (transaction_id bigint)")
    db.execute("GRANT ALL ON public.refused_bonus TO PUBLIC")  # (the trigger runs as pyxp's owner)
    app_trigger(db, "tolerant_bonus", "xp_transactions", "INSERT",
                f"IF NEW.transaction_type = 'CAMPAIGN_APPROVED' THEN BEGIN {call}; "
                "EXCEPTION WHEN SQLSTATE 'PX034' THEN INSERT INTO public.refused_bonus VALUES (NEW.id); END; END IF;")
    rows = approve(db, "0xself", "k1")
    assert [r[3] for r in rows] == [100]
    assert db.execute("SELECT count(*) FROM public.refused_bonus").fetchone() == (1,)
    assert db.execute("SELECT count(*), sum(xp_amount) FROM pyxp.xp_transactions").fetchone() == (1, 100)
    assert db.execute("SELECT total_xp, last_wallet_seq FROM pyxp.xp_balances WHERE user_wallet = '0xself'"
                      ).fetchone() == (100, 1)
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_a_batch_whose_ledger_trigger_awards_another_wallet_of_the_batch_is_refused(
        db: psycopg.Connection[Any], unchanged: Any) -> None:
    """The hostile test's second case: the nested award hit another wallet the batch held (its
    balance 104 against a ledger of 106)."""
    events = [{"wallet": "0xr", "action": BONUS, "idempotency_key": "r1"},
              {"wallet": "0xs", "action": "CAMPAIGN_APPROVED", "idempotency_key": "s1"}]
    app_trigger(db, "cross_bonus", "xp_transactions", "INSERT",
                f"IF NEW.transaction_type = 'CAMPAIGN_APPROVED' THEN "
                f"PERFORM pyxp.award('0xr', '{BONUS}', 'cross:' || NEW.id); END IF;")
    with unchanged(), db.transaction(), pytest.raises(NestedWrite):
        XP(db).award_many(events)


def test_an_award_from_a_trigger_on_the_balances_is_accepted(db: psycopg.Connection[Any]) -> None:
    """The balances' triggers fire after the writer's update: a level-up bonus awarded there sees the
    balance as updated, and both awards are in the balance and the audit is clean (the control)."""
    app_trigger(db, "level_up_bonus", "xp_balances", "UPDATE",
                f"IF NEW.current_level > OLD.current_level THEN "
                f"PERFORM pyxp.award(NEW.user_wallet, '{BONUS}', 'level:' || NEW.current_level); END IF;")
    approve(db, "0xlevel", "k1")  # 0 -> 100: level 1 -> 2, a +2 bonus
    assert db.execute("SELECT total_xp, last_wallet_seq FROM pyxp.xp_balances WHERE user_wallet = '0xlevel'"
                      ).fetchone() == (102, 2)
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_a_balances_trigger_awarding_after_a_reversal_sees_the_allowance_freed(db: psycopg.Connection[Any]) -> None:
    """A reversal freed its capped gain's allowance after its balance update, whose triggers had
    already run: an award from a trigger on the balances was cut as if the allowance were still used
    (+0 of its +2, the audit clean; a hostile test, 0036). The reversal frees it first now."""
    install_variant(db, "capped-votes", caps={BONUS: (4, "day", None)})  # two +2 votes a day
    app_trigger(db, "comeback_bonus", "xp_balances", "UPDATE",
                f"IF NEW.total_xp < OLD.total_xp THEN "
                f"PERFORM pyxp.award(NEW.user_wallet, '{BONUS}', 'comeback:' || NEW.last_wallet_seq); END IF;")
    first = db.execute(f"SELECT transaction_id FROM pyxp.award('0xcap', '{BONUS}', 'v1')").fetchone()[0]
    db.execute(f"SELECT * FROM pyxp.award('0xcap', '{BONUS}', 'v2')")  # the allowance used up: 4 of 4
    db.execute("SELECT * FROM pyxp.reverse_transaction(%s, 'undone')", (first,))  # frees 2; the bonus takes them
    rows = db.execute("SELECT idempotency_key, xp_amount, xp_requested FROM pyxp.xp_transactions "
                      "WHERE user_wallet = '0xcap' AND idempotency_key LIKE 'comeback:%'").fetchall()
    assert rows == [("comeback:3", 2, None)]
    assert db.execute("SELECT total_xp FROM pyxp.xp_balances WHERE user_wallet = '0xcap'").fetchone() == (4,)
    assert db.execute("SELECT sum(used_xp) FROM pyxp.xp_cap_usage WHERE user_wallet = '0xcap'").fetchone() == (4,)
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_the_nested_write_mark_is_not_a_setting_a_session_can_leave_on(conninfo: str) -> None:
    """The mark was the text 'on': a session's SET pyxp.appending_rows = 'on', left on a server
    connection by one client behind a transaction-mode pooler, refused every other client's award
    there with PX034 (a hostile test, 0036). It is the writing transaction's id now: no session-level
    value matches another transaction."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for value in ("on", "1", "true"):
            conn.execute(f"SET pyxp.appending_rows = '{value}'")
            rows = conn.execute(f"SELECT * FROM pyxp.award('0xleft-on', '{BONUS}', 'left:{value}')").fetchall()
            assert len(rows) == 1
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []



def test_a_mark_set_ahead_with_the_next_transactions_id_refuses_nothing(conninfo: str) -> None:
    """0047 (a hostile test, helper-74): on a quiet server the next transaction id is predictable; a
    session-level SET of pyxp.appending_rows to it, left on a pooled server connection, refused the
    next client's valid award there (PX034) once its transaction had an id (a flow always has one by
    then; a generic award after the app's own write). Here the value is the transaction's own id,
    SET at session level in it, which is what such a guess gives."""
    with psycopg.connect(conninfo) as conn:
        conn.execute("CREATE TEMP TABLE app_orders (x int)")
        conn.execute("INSERT INTO app_orders VALUES (1)")  # the app's write: the transaction has its id
        xid = conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0]  # type: ignore[index]
        conn.execute(f"SET pyxp.appending_rows = '{xid}'")
        assert len(conn.execute(f"SELECT * FROM pyxp.award('0xahead', '{BONUS}', 'ahead:1')").fetchall()) == 1
        assert len(conn.execute("SELECT * FROM pyxp.award_campaign_creation('0xahead', 'camp_ahead', 'B2C')"
                                ).fetchall()) == 1
        conn.commit()
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []

def test_a_ledger_trigger_reads_the_rows_balance_after(db: psycopg.Connection[Any]) -> None:
    """What README tells a trigger on the ledger: NEW.balance_after is the balance after the row; the
    balances table still holds the one before the call (updated in the same call, after the rows)."""
    db.execute("CREATE TABLE public.seen (wallet text, balance_after bigint, balance_then bigint)")
    db.execute("GRANT ALL ON public.seen TO PUBLIC")  # (the trigger runs as pyxp's owner)
    app_trigger(db, "copy_balance", "xp_transactions", "INSERT",
                "INSERT INTO public.seen SELECT NEW.user_wallet, NEW.balance_after, "
                "(SELECT b.total_xp FROM pyxp.xp_balances b WHERE b.user_wallet = NEW.user_wallet);")
    approve(db, "0xcopy", "k1")
    approve(db, "0xcopy", "k2")
    seen = db.execute("SELECT balance_after, balance_then FROM public.seen ORDER BY balance_after").fetchall()
    assert seen == [(100, 0), (200, 100)]
