"""Never wrong where it is deployed (issue 9; SPEC 1, 4, 6, 7).

Each case was reproduced on the landed engine before 0002, and is a test here:
identities split by invisible characters, natural keys that collided, a
completion's outcome paid to another wallet, writes under REPEATABLE READ,
an advisory lock anyone could take, huge inputs reaching internal errors, and
a deadlock between a caller awarding in wallet order and a batch.
(PgBouncer in transaction mode: tests/test_pooler.py.)
"""

from __future__ import annotations

import sys
import threading
import unicodedata
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

import pyxp
from pyxp import XP, schema

# --------------------------------------------------------------------------- identities (SPEC 1)

# Every code point of categories Cc and Cf Python's Unicode database knows (NUL cannot be in a
# PostgreSQL text), and the Default_Ignorable_Code_Point ones that render as nothing.
INVISIBLE = sorted(
    {c for c in range(1, sys.maxunicode + 1) if unicodedata.category(chr(c)) in ("Cc", "Cf")}
    | {0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180B, 0x180C, 0x180D, 0x180F, 0x3164, 0xFFA0}
    | {0x2800}  # Braille pattern blank: renders as a space
    | set(range(0xFE00, 0xFE10)) | {0xE0000, 0xE0100, 0xE01EF}
)
# Unicode's White_Space property (Zs, Zl, Zp, and tab to carriage return, U+0085): trimmed at both ends.
SPACES = [c for c in range(sys.maxunicode + 1)
          if unicodedata.category(chr(c)) in ("Zs", "Zl", "Zp") or chr(c) in "\t\n\v\f\r\x85"]


def checked(db: psycopg.Connection[Any], function: str, value: str) -> str | None:
    """pyxp.<function>(value), or the SQLSTATE it raised."""
    try:
        row = db.execute(sql.SQL("SELECT pyxp.{}(%s)").format(sql.Identifier(function)), (value,)).fetchone()
    except psycopg.Error as exc:
        return exc.sqlstate
    assert row is not None
    return row[0]


def test_every_invisible_or_control_character_is_refused_in_a_wallet(db: psycopg.Connection[Any]) -> None:
    """SPEC 1: Cc and Cf anywhere (start, middle, end): PX001, whatever the character."""
    assert len(INVISIBLE) > 250
    values = [f"0x{chr(c)}abc" for c in INVISIBLE] + [f"{chr(c)}0xabc" for c in INVISIBLE[::7]] \
        + [f"0xabc{chr(c)}" for c in INVISIBLE[::7]]
    accepted = []
    for value in values:
        result = checked(db, "checked_wallet", value)
        if result != "PX001":
            accepted.append((f"U+{ord([ch for ch in value if ord(ch) in INVISIBLE][0]):04X}", result))
    assert accepted == []


def test_every_invisible_character_is_refused_in_an_email(db: psycopg.Connection[Any]) -> None:
    accepted = [f"U+{c:04X}" for c in INVISIBLE
                if checked(db, "checked_email", f"client{chr(c)}@example.com") != "PX002"]
    assert accepted == []


def test_every_invisible_character_is_refused_in_an_id(db: psycopg.Connection[Any]) -> None:
    """Campaign and completion ids, keys and reasons too: an id that looks like another is refused."""
    accepted = [f"U+{c:04X}" for c in INVISIBLE if _id_result(db, f"camp{chr(c)}1") != "PX016"]
    assert accepted == []


def _id_result(db: psycopg.Connection[Any], value: str) -> str | None:
    try:
        row = db.execute("SELECT pyxp.checked_identifier('campaign id', %s)", (value,)).fetchone()
    except psycopg.Error as exc:
        return exc.sqlstate
    return None if row is None else row[0]


def test_any_unicode_whitespace_is_trimmed_and_compatibility_forms_are_one_wallet(
        db: psycopg.Connection[Any]) -> None:
    """NFKC and Unicode whitespace: what looks identical is one wallet."""
    plain = "0x_alice"
    for c in SPACES:
        assert checked(db, "checked_wallet", f"{chr(c)}{plain}{chr(c)}") == plain, f"U+{c:04X}"
    assert checked(db, "checked_wallet", "\uff10\uff58_alice") == plain  # full-width 0x
    assert checked(db, "checked_wallet", "0x_ali\u0063\u0327e") == "0x_ali\u00e7e"  # composed
    address = "0xAbCdEf0123456789aBcDeF0123456789AbCdEf01"
    assert checked(db, "checked_wallet", "\u00a0" + address.replace("A", "\uff21") + "\u3000") == address.lower()


def test_one_person_with_invisible_variants_stays_one_user(xp: XP, db: psycopg.Connection[Any],
                                                           unchanged: Any) -> None:
    """Issue 9 item 3: one person became 11 'users' that look identical on the leaderboard."""
    xp.award("0x_alice", "CAMPAIGN_APPROVED", "key-0")
    for n, variant in enumerate(["0x_alice\u200b", "\u2060 0x_alice", "0x_al\u00adice", "\ufeff0x_alice",
                                 "0x_\u202ealice", "0x_alice\u200d", "0x\u034f_alice"], start=1):
        with unchanged(), pytest.raises(pyxp.InvalidWallet):
            xp.award(variant, "CAMPAIGN_APPROVED", f"key-{n}")
    for n, variant in enumerate(["\u00a00x_alice", "0x_alice\u3000", "\uff10\uff58_alice", "0x_alice\u2009"],
                                start=20):
        assert xp.award(variant, "CAMPAIGN_APPROVED", f"key-{n}").rows[0].user_wallet == "0x_alice"
    assert [row.user_wallet for row in xp.leaderboard()] == ["0x_alice"]


def test_one_email_with_invisible_variants_is_onboarded_once(xp: XP, db: psycopg.Connection[Any],
                                                             unchanged: Any) -> None:
    """Issue 9 item 3: one client wallet collected 6 onboardings (6,000 XP) for what reads as one email."""
    xp.award_campaign_creation("0x_agency", "camp_a", "AGENCY_B2C")
    xp.register_agency_client("0x_agency", "client@example.com", "camp_a")
    for variant in ["client\u200b@example.com", "cli\u00adent@example.com", "client@exam\u2060ple.com",
                    "\ufeffclient@example.com", "client@example.com\u200e"]:
        with unchanged(), pytest.raises(pyxp.InvalidEmail):
            xp.register_agency_client("0x_agency", variant, "camp_a")
        with unchanged(), pytest.raises(pyxp.InvalidEmail):
            xp.onboard_agency_client(variant, "0x_client")
    # What NFKC folds and what is trimmed is the same email: registered once, onboarded once.
    for variant in ["\u00a0CLIENT@example.com", "\uff43lient@example.com\u3000"]:
        assert xp.register_agency_client("0x_agency", variant, "camp_a").client_email == "client@example.com"
    assert xp.onboard_agency_client("\uff43lient@example.com", "0x_client").xp == 1000
    assert xp.onboard_agency_client("client@example.com\u00a0", "0x_client").replayed
    assert xp.balance("0x_client").total_xp == 1000
    assert db.execute("SELECT count(*) FROM pyxp.agency_b2c_clients").fetchone() == (1,)


def test_an_email_with_a_combining_mark_is_one_client_in_any_case(xp: XP, db: psycopg.Connection[Any]) -> None:
    """0045 (a hostile test, helper-76): J̌ has no precomposed capital, so J̌AN@… lower-cased to j + U+030C,
    while ǰan@… typed in lower case is NFKC's composed ǰ: two clients, each onboarded (2,000 XP), and the
    stored form did not read as itself (the audit reported it after a plain registration)."""
    xp.award_campaign_creation("0x_agency", "camp_a", "AGENCY_B2C")
    xp.award_campaign_creation("0x_agency", "camp_b", "AGENCY_B2C")
    assert xp.register_agency_client("0x_agency", "J\u030cAN@EXAMPLE.COM", "camp_a").client_email == "\u01f0an@example.com"
    assert xp.onboard_agency_client("\u01f0an@example.com", "0x_jan").xp == 1000
    assert xp.onboard_agency_client("j\u030can@example.com", "0x_jan").replayed
    assert xp.onboard_agency_client("J\u030cAN@EXAMPLE.COM", "0x_jan").replayed
    # Registered again in the other spelling: the same client, granted at once, nothing more paid.
    assert xp.register_agency_client("0x_agency", "\u01f0an@example.com", "camp_b").xp_granted
    assert xp.balance("0x_jan").total_xp == 1000
    assert db.execute("SELECT count(DISTINCT client_email) FROM pyxp.agency_b2c_clients").fetchone() == (1,)
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_a_final_sigma_is_a_sigma(xp: XP) -> None:
    """0045 (helper-76): ΟΔΟΣ@… read οδοσ@…, and οδος@…, as a person types it in lower case, another client."""
    xp.award_campaign_creation("0x_agency", "camp_a", "AGENCY_B2C")
    assert xp.register_agency_client("0x_agency", "ΟΔΟΣ@ΧΑΡΤΗΣ.GR", "camp_a").client_email == "οδοσ@χαρτησ.gr"
    assert xp.onboard_agency_client("οδος@χαρτης.gr", "0x_odos").xp == 1000
    assert xp.onboard_agency_client("ΟΔΟΣ@ΧΑΡΤΗΣ.GR", "0x_odos").replayed


def test_every_email_reads_as_itself(db: psycopg.Connection[Any]) -> None:
    """0045: checked_email of what checked_email gave is the same text, for every letter Python
    lower-cases (pyxp.lower_cased agrees on all but U+0130), alone and followed by each of the
    combining marks that compose with letters most (up to 0044, hundreds of these did not)."""
    letters = [chr(c) for c in range(65, sys.maxunicode + 1)
               if not 0xD800 <= c <= 0xDFFF and chr(c).lower() != chr(c) and len(chr(c).lower()) == 1]
    marks = [""] + [chr(m) for m in [*range(0x300, 0x30D), 0x323, 0x327, 0x328, 0x331, 0x342, 0x345]]
    unstable = db.execute("""
        SELECT e, f FROM (SELECT e, pyxp.checked_email(e) AS f
                            FROM (SELECT 'x' || l || m || 'y@example.com' AS e
                                    FROM unnest(%s::text[]) l CROSS JOIN unnest(%s::text[]) m) x OFFSET 0) x
         WHERE f <> pyxp.checked_email(f)""", (letters, marks)).fetchall()
    assert len(letters) > 1300 and unstable == []


# Databases whose default collation folds case otherwise than C.UTF-8 (a hostile test, 2026-11-27).
LOCALES = {
    "c": "TEMPLATE template0 LOCALE 'C'",
    "icu-tr": "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'tr-TR' LOCALE 'C.UTF-8'",
}


@pytest.mark.parametrize("locale", LOCALES)
def test_case_is_folded_alike_whatever_the_databases_locale(fresh_database: Callable[..., str], locale: str) -> None:
    """lower() and upper() follow the database's collation: in a C-locale database ÉLODIE@… kept its
    É (two clients, each onboarded: +1000 twice), under ICU tr-TR ALICE@… became alıce@… and
    'individual', 'valid' and every formula input name were refused. 0028 folds as C.UTF-8 does."""
    target = fresh_database(LOCALES[locale])
    schema.upgrade(target)
    with XP(target, max_connections=1) as client, psycopg.connect(target, autocommit=True) as db:
        for email, folded in [("ÉLODIE@Example.com", "élodie@example.com"), ("ALICE@EXAMPLE.COM", "alice@example.com"),
                              ("ΣΟΦΙΑ@X.GR", "σοφια@x.gr"), ("İPEK@X.ORG", "ipek@x.org")]:
            assert checked(db, "checked_email", email) == folded
        assert [checked(db, "checked_campaign_type", t) for t in ("individual", "for_b2c")] == ["INDIVIDUAL", "B2C"]
        assert checked(db, "checked_vote", "valid") == "VALID"
        client.award_campaign_creation("0x_agency", "camp_a", "AGENCY_B2C")
        client.register_agency_client("0x_agency", "ÉLODIE@example.com", "camp_a")
        client.register_agency_client("0x_agency", "élodie@example.com", "camp_a")  # the same registration
        assert client.onboard_agency_client("Élodie@EXAMPLE.com", "0x_elodie").xp == 1000
        assert client.onboard_agency_client("élodie@example.com", "0x_elodie").replayed
        paid = client.award_completion("0x_completer", "camp_i", "done-1", campaign_type="individual",
                                       mint_value_winc=Decimal(40))
        assert paid.xp == 40
        assert client.award_moderation_vote("0x_moderator", "camp_a", "valid").xp == 2
        assert client.balance("0x_elodie").total_xp == 1000
        assert db.execute("SELECT count(*) FROM pyxp.agency_b2c_clients").fetchone() == (1,)
        assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_lower_cased_folds_every_letter_as_c_utf8_and_python_do(db: psycopg.Connection[Any]) -> None:
    """pyxp.lower_cased's table: every letter Python lower-cases, one for one, as Python does (U+0130,
    İ, to i as glibc does: Python gives i + U+0307), and as lower() in C.UTF-8 where the server has
    that collation; what is no upper-case letter stays as it is."""
    letters = [chr(c) for c in range(1, sys.maxunicode + 1)
               if not 0xD800 <= c < 0xE000 and chr(c).lower() != chr(c)]
    expected = ["i" if ch == "\u0130" else ch.lower() for ch in letters]
    others = "0123456789 abcdefghijklmnopqrstuvwxyz @._+-ßéœøσςἀ中文👍\u0301"
    rows = db.execute("""
        SELECT pyxp.lower_cased(l), CASE WHEN EXISTS (SELECT FROM pg_collation WHERE collname = 'C.utf8')
                                         THEN lower(l COLLATE "C.utf8")::text COLLATE "C" END
          FROM unnest(%s::text[]) l
    """, (letters,)).fetchall()
    assert [folded for folded, _ in rows] == expected
    assert all(c_utf8 in (None, folded) for folded, c_utf8 in rows)
    assert db.execute("SELECT pyxp.lower_cased(%s)", (others,)).fetchone() == (others,)


# --------------------------------------------------------------------------- injective keys (SPEC 4)

SEPARATORS = [":", "%", "%3A", "%25", "::", ":%", "/", "|", ".", "#", "@", "-", "_", " "]


@pytest.mark.parametrize("separator", SEPARATORS)
def test_campaign_votes_never_share_a_key(xp: XP, db: psycopg.Connection[Any], separator: str) -> None:
    """Issue 9 item 4: ('b<sep>0xmod', 'a') and ('0xmod', 'a<sep>b') are two votes, whatever the separator."""
    first = xp.award_moderation_vote(f"b{separator}0xmod", "a", "VALID", campaign_type="B2C")
    second = xp.award_moderation_vote("0xmod", f"a{separator}b", "REFUSE", campaign_type="B2C")
    third = xp.award_moderation_vote(f"0xmod{separator}b", "a", "VALID")
    assert [a.replayed for a in (first, second, third)] == [False, False, False]
    keys = [row[0] for row in db.execute("SELECT idempotency_key FROM pyxp.xp_transactions ORDER BY id")]
    assert len(set(keys)) == 3


@pytest.mark.parametrize("separator", SEPARATORS)
def test_completion_votes_never_share_a_key(xp: XP, db: psycopg.Connection[Any], separator: str) -> None:
    first = xp.award_completion_moderation(f"b{separator}0xmod", "camp", "a", "VALID", campaign_type="B2C")
    second = xp.award_completion_moderation("0xmod", "camp", f"a{separator}b", "REFUSE")
    assert (first.xp, first.replayed, second.xp, second.replayed) == (2, False, -1, False)
    assert db.execute("SELECT sum(total_moderations) FROM pyxp.xp_balances").fetchone() == (2,)


def test_keys_stored_before_0002_replay_after_the_upgrade(fresh_database: Callable[[], str]) -> None:
    """A retry that spans the migration never awards twice, separators in ids included."""
    target = fresh_database()
    schema.upgrade(target, "0001")
    calls: list[Callable[[XP], pyxp.Award]] = [
        lambda xp: xp.award_moderation_vote("0xmod", "camp:1", "VALID", campaign_type="B2C"),
        lambda xp: xp.award_moderation_vote("0xmod", "camp%2", "REFUSE", campaign_type="B2C"),
        lambda xp: xp.award_moderation_vote("0xmod", "plain", "VALID", campaign_type="B2C"),
        lambda xp: xp.award_completion_moderation("0xmod", "camp:1", "comp:1", "VALID", campaign_type="B2C"),
        lambda xp: xp.award_completion("0xcompleter", "camp:1", "comp:1", campaign_type="B2C"),
        lambda xp: xp.award_completion("0xcompleter", "camp:1", "comp:1", campaign_type="B2C", is_validated=True),
        lambda xp: xp.award_campaign_creation("0xcreator", "camp:9", "B2C"),
        lambda xp: xp.award("0xabc", "CAMPAIGN_APPROVED", "my:key"),
    ]
    with psycopg.connect(target, autocommit=True) as conn:
        old_xp = XP(conn)
        originals = [call(old_xp) for call in calls]
        before = conn.execute("SELECT count(*), sum(xp_amount) FROM pyxp.xp_transactions").fetchone()
    schema.upgrade(target)
    assert schema.current_revision(target) == schema.head_revision()
    with psycopg.connect(target, autocommit=True) as conn:
        new_xp = XP(conn)
        retries = [call(new_xp) for call in calls]
        after = conn.execute("SELECT count(*), sum(xp_amount) FROM pyxp.xp_transactions").fetchone()
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []
    assert all(r.replayed for r in retries)
    assert [r.rows for r in retries] == [
        tuple(row.__class__(**{**row.__dict__, "replayed": True}) for row in o.rows) for o in originals]
    assert before == after


# --------------------------------------------------------------------------- completion ownership (SPEC 4)


def test_an_outcome_for_another_wallet_or_campaign_is_refused(xp: XP, unchanged: Any) -> None:
    """Issue 9 item 5: submitted by 0xsubmitter on camp_s (B2C), then 'validated' by another wallet
    on another campaign and type: +100 went to the other wallet."""
    xp.award_completion("0xsubmitter", "camp_s", "comp_s", campaign_type="B2C")
    refused = [
        dict(completer_wallet="0xother", campaign_id="camp_other", campaign_type="INDIVIDUAL", is_validated=True),
        dict(completer_wallet="0xother", campaign_id="camp_s", is_validated=True),
        dict(completer_wallet="0xsubmitter", campaign_id="camp_other", campaign_type="B2C", is_validated=True),
        dict(completer_wallet="0xother", campaign_id="camp_s", is_refused=True),
    ]
    for kwargs in refused:
        with unchanged(), pytest.raises(pyxp.CampaignMismatch) as caught:
            xp.award_completion(completion_id="comp_s", **kwargs)
        assert "0xsubmitter" in str(caught.value.message) or "camp_s" in str(caught.value.message)
    with unchanged(), pytest.raises(pyxp.CampaignMismatch):
        xp.award_completion_moderation("0xmod", "camp_other", "comp_s", "VALID", campaign_type="B2C")
    assert xp.award_completion("0xsubmitter", "camp_s", "comp_s", is_validated=True).xp == 100
    assert xp.award_completion_moderation("0xmod", "camp_s", "comp_s", "VALID").xp == 2


def test_an_outcome_recorded_first_fixes_the_owner_of_the_submission(xp: XP, unchanged: Any) -> None:
    xp.award_completion("0xfirst", "camp_s", "comp_s", campaign_type="B2C", is_refused=True)
    with unchanged(), pytest.raises(pyxp.CampaignMismatch):
        xp.award_completion("0xsecond", "camp_s", "comp_s")
    assert xp.award_completion("0xfirst", "camp_s", "comp_s").xp == 100


# --------------------------------------------------------------------------- isolation (SPEC 4)

WRITES: dict[str, Callable[[XP], Any]] = {
    "award": lambda xp: xp.award("0xiso", "CAMPAIGN_APPROVED", "iso-key"),
    "award_many": lambda xp: xp.award_many([{"wallet": "0xiso", "action": "CAMPAIGN_APPROVED",
                                             "idempotency_key": "iso-batch"}]),
    "reverse_transaction": lambda xp: xp.reverse(1, "iso"),
    "award_campaign_creation": lambda xp: xp.award_campaign_creation("0xiso", "camp_iso", "B2C"),
    "award_campaign_approval": lambda xp: xp.award_campaign_approval("camp_seed"),
    "award_moderation_vote": lambda xp: xp.award_moderation_vote("0xiso", "camp_seed", "VALID"),
    "award_moderation_vote_unknown": lambda xp: xp.award_moderation_vote("0xiso", "camp_new", "VALID",
                                                                         campaign_type="B2C"),
    "award_completion": lambda xp: xp.award_completion("0xiso", "camp_seed", "comp_iso"),
    "award_completion_moderation": lambda xp: xp.award_completion_moderation("0xiso", "camp_seed",
                                                                             "comp_iso", "VALID"),
    "register_agency_client": lambda xp: xp.register_agency_client("0xagency", "iso@example.com", "camp_ag"),
    "onboard_agency_client": lambda xp: xp.onboard_agency_client("seed@example.com", "0xclient"),
}


@pytest.fixture
def seeded_for_isolation(xp: XP) -> None:
    xp.award_campaign_creation("0xcreator", "camp_seed", "B2C")
    xp.award_campaign_creation("0xagency", "camp_ag", "AGENCY_B2C")
    xp.register_agency_client("0xagency", "seed@example.com", "camp_ag")


@pytest.mark.parametrize("level", ["REPEATABLE READ", "SERIALIZABLE"])
@pytest.mark.parametrize("function", sorted(WRITES))
def test_every_writer_refuses_repeatable_read_and_serializable(
        conninfo: str, db: psycopg.Connection[Any], seeded_for_isolation: None, unchanged: Any,
        level: str, function: str) -> None:
    """SPEC 4: PX025 in a REPEATABLE READ / SERIALIZABLE transaction, nothing written; XP(connection)
    on such a connection gets pyxp.IsolationRefused."""
    with unchanged(), psycopg.connect(conninfo) as conn:
        conn.isolation_level = psycopg.IsolationLevel[level.replace(" ", "_")]
        conn.execute("SELECT 1")  # the caller's transaction is open, its snapshot taken
        with pytest.raises(pyxp.IsolationRefused):
            WRITES[function](XP(conn))
        conn.rollback()


@pytest.mark.parametrize("function", sorted(WRITES))
def test_every_writer_in_a_read_only_transaction_gets_25006_and_writes_nothing(
        conninfo: str, db: psycopg.Connection[Any], seeded_for_isolation: None, unchanged: Any,
        function: str) -> None:
    """A transaction set read-only on the primary (psycopg's read_only=True) is refused as a standby's
    writes are: PostgreSQL's 25006, kept rather than a PX code because drivers and failover tooling
    watch for it (README "Scaling reads"; an application-transaction hostile test)."""
    with unchanged(), psycopg.connect(conninfo) as conn:
        conn.read_only = True
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            WRITES[function](XP(conn))
        conn.rollback()


@pytest.mark.parametrize("function", sorted(WRITES))
def test_every_writer_runs_in_read_uncommitted(conninfo: str, db: psycopg.Connection[Any],
                                              seeded_for_isolation: None, function: str) -> None:
    """READ UNCOMMITTED is READ COMMITTED in PostgreSQL: it was refused with PX025 (0028)."""
    with psycopg.connect(conninfo) as conn:
        conn.isolation_level = psycopg.IsolationLevel.READ_UNCOMMITTED
        try:
            WRITES[function](XP(conn))
        except pyxp.XPError as exc:  # refusals a write may meet here, never its isolation
            assert not isinstance(exc, pyxp.IsolationRefused), exc
        conn.commit()


def test_standard_conforming_strings_off_changes_no_check(conninfo: str, db: psycopg.Connection[Any],
                                                         unchanged: Any) -> None:
    """A session with standard_conforming_strings off read the checks' '\\.' as '.': client@nodot
    was registered (then refused for good to every other session), a key accepted elsewhere was
    refused on retry (PX016), and the partitions' bounds read as NULL (0028, a hostile test)."""
    xp = XP(conninfo, max_connections=1)
    try:
        made = xp.award("0xscs", "CAMPAIGN_APPROVED", "campaign_created:42")
        xp.award_campaign_creation("0xagency", "camp_scs", "AGENCY_B2C")
    finally:
        xp.close()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SET standard_conforming_strings = off")
        with XP(conn) as legacy:
            with unchanged(), pytest.raises(pyxp.InvalidEmail):
                legacy.register_agency_client("0xagency", "client@nodot", "camp_scs")
            again = legacy.award("0xscs", "CAMPAIGN_APPROVED", "campaign_created:42")
            assert again.replayed and again.rows[0].transaction_id == made.rows[0].transaction_id
            with unchanged(), pytest.raises(pyxp.InvalidIdentifier):
                legacy.award("0xscs", "CAMPAIGN_APPROVED", "campaign.created:42")  # a flow's namespace
        bounds = conn.execute("SELECT count(*) FILTER (WHERE range_end IS NULL AND NOT is_default) "
                              "FROM pyxp.ledger_partitions()").fetchone()
        assert bounds == (0,)


def test_a_ruleset_switch_cannot_slip_under_a_repeatable_read_award(
        conninfo: str, db: psycopg.Connection[Any], unchanged: Any) -> None:
    """Issue 9 item 2: an RR caller's snapshot predated a ruleset switch; the award was written under
    the deactivated version. Now it is refused, and READ COMMITTED callers see the new version."""
    with psycopg.connect(conninfo) as caller:
        caller.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        caller.execute("SELECT count(*) FROM pyxp.xp_balances")  # snapshot before the switch
        schema.apply_ruleset(conninfo, "winstory-flows")
        with unchanged(), pytest.raises(pyxp.IsolationRefused):
            XP(caller).award_completion("0xc", "camp", "comp", campaign_type="B2C")
        caller.rollback()
    with XP(conninfo) as xp:
        assert xp.award_completion("0xc", "camp", "comp", campaign_type="B2C").xp == 10  # winstory-flows
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def test_registrations_racing_onboardings_are_never_left_pending(conninfo: str, db: psycopg.Connection[Any],
                                                                xp: XP) -> None:
    """Issue 9 item 2: 16 connections racing register vs onboard (269 of 400 left pending under RR).
    Half the callers ask for REPEATABLE READ: refused; the others: no registration left pending."""
    xp.award_campaign_creation("0xagency", "camp_ag", "AGENCY_B2C")
    emails = [f"c{n}@example.com" for n in range(25)]
    barrier = threading.Barrier(16)
    outcomes: list[str] = []

    def worker(index: int) -> None:
        level = psycopg.IsolationLevel.REPEATABLE_READ if index % 2 else psycopg.IsolationLevel.READ_COMMITTED
        with psycopg.connect(conninfo) as conn:
            conn.isolation_level = level
            client = XP(conn)
            barrier.wait(timeout=30)
            for n, email in enumerate(emails):
                try:
                    if (n + index) % 2:
                        client.register_agency_client("0xagency", email, "camp_ag")
                    else:
                        client.onboard_agency_client(email, f"0xclient{n}")
                    conn.commit()
                    outcomes.append("ok")
                except pyxp.XPError as exc:
                    conn.rollback()
                    outcomes.append(exc.code or "?")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert set(outcomes) == {"ok", "PX025"}
    for email in emails:  # every email registered after its onboarding: granted at once
        xp.onboard_agency_client(email, f"0xclient{emails.index(email)}")
    pending = db.execute("""SELECT count(*) FROM pyxp.agency_b2c_clients a WHERE NOT a.xp_granted""").fetchone()
    assert pending == (0,)
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


# --------------------------------------------------------------------------- locks (SPEC 7)


@pytest.fixture
def outsider(login_role: Callable[..., str], connect_as: Callable[[str], psycopg.Connection[Any]]
             ) -> psycopg.Connection[Any]:
    """A connection as a login role with no pyxp privilege at all."""
    return connect_as(login_role())


def test_an_outsider_cannot_block_onboarding(conninfo: str, xp: XP, outsider: psycopg.Connection[Any]) -> None:
    """Issue 9 item 6: a role without pyxp privileges took pg_advisory_lock on the predictable key of an
    email (hashtextextended('pyxp.client_email:' || email, 0)) and registration/onboarding hung."""
    email = "blocked@example.com"
    outsider.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", ("pyxp.client_email:" + email,))
    for key in range(3):  # and any other advisory lock it can think of
        outsider.execute("SELECT pg_advisory_lock(%s)", (key,))
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        outsider.execute("SELECT 1 FROM pyxp.subject_locks FOR UPDATE")
    xp.award_campaign_creation("0xagency", "camp_ag", "AGENCY_B2C")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SET statement_timeout = '10s'")
        client = XP(conn)
        assert client.register_agency_client("0xagency", email, "camp_ag").client_email == email
        assert client.onboard_agency_client(email, "0xclient").xp == 1000


def test_no_pyxp_function_waits_for_an_advisory_lock(db: psycopg.Connection[Any]) -> None:
    """Only the writer's lease of its rank counts' slot (0035) uses one, and never waits for it."""
    found = db.execute(r"""SELECT p.proname, regexp_matches(p.prosrc, 'pg_\w*advisory\w*', 'g')
                            FROM pg_proc p WHERE p.pronamespace = 'pyxp'::regnamespace""").fetchall()
    assert found == [("append_rows", ["pg_try_advisory_xact_lock"])]


def test_an_outsider_holding_the_slot_lease_of_a_writer_blocks_nothing(
        conninfo: str, db: psycopg.Connection[Any], outsider: psycopg.Connection[Any]) -> None:
    """Any role can take any advisory lock: one holding the lease key of a writer's pid moves that
    writer's rank counts to another slot (pid + 2^22), it does not make it wait (0035)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        pid = conn.info.backend_pid
        outsider.execute("SELECT pg_advisory_lock(1887007857, %s)", (pid,))
        conn.execute("SET lock_timeout = '3s'")
        XP(conn).award("0xleased", "CAMPAIGN_APPROVED", "leased-1")
    assert db.execute("SELECT array_agg(DISTINCT slot) FROM pyxp.xp_rank_counts WHERE slot <> 0").fetchone() == (
        [pid + 4194304],)
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


# --------------------------------------------------------------------------- sizes before work (SPEC 6)

MB = 1024 * 1024


def test_a_300_mb_wallet_is_refused_by_its_size(xp: XP, unchanged: Any) -> None:
    """Issue 9 item 8: a 283 MB wallet reached XX000 'invalid memory alloc request size'."""
    huge = "a" * (300 * MB)
    with unchanged(), pytest.raises(pyxp.InvalidWallet, match="bytes"):
        xp.award(huge, "CAMPAIGN_APPROVED", "huge-wallet")
    del huge  # ids and every other parameter: test_every_public_parameter_is_size_checked_first


def test_a_150_mb_batch_is_refused_by_its_size(xp: XP, unchanged: Any) -> None:
    """Issue 9 item 8: a 154 MB award_many was accepted (25-29 s, 1.4 GB of backend memory)."""
    note = "x" * 15_000
    events = [{"wallet": f"0x{n}", "action": "CAMPAIGN_APPROVED", "idempotency_key": f"big-{n}",
               "context": {"note": note}} for n in range(10_000)]
    with unchanged(), pytest.raises(pyxp.InvalidArgument, match="16 MiB"):
        xp.award_many(events)


BIG = "b" * (8 * MB)
# Every text parameter of every public function, 8 MB: a PX refusal, never an internal error.
SIZE_CALLS: dict[str, tuple[str, dict[str, Any]]] = {
    "award.wallet": ("award", dict(wallet=BIG, action="A", idempotency_key="k")),
    "award.action": ("award", dict(wallet="w", action=BIG, idempotency_key="k")),
    "award.idempotency_key": ("award", dict(wallet="w", action="A", idempotency_key=BIG)),
    "award.params": ("award", dict(wallet="w", action="A", idempotency_key="k", params=Jsonb({"P": BIG}))),
    "award.context": ("award", dict(wallet="w", action="A", idempotency_key="k", context=Jsonb({"c": BIG}))),
    "reverse_transaction.reason": ("reverse_transaction", dict(transaction_id=1, reason=BIG)),
    "award_campaign_creation.creator_wallet": ("award_campaign_creation",
                                               dict(creator_wallet=BIG, campaign_id="c", campaign_type="B2C")),
    "award_campaign_creation.campaign_id": ("award_campaign_creation",
                                            dict(creator_wallet="w", campaign_id=BIG, campaign_type="B2C")),
    "award_campaign_creation.campaign_type": ("award_campaign_creation",
                                              dict(creator_wallet="w", campaign_id="c", campaign_type=BIG)),
    "award_campaign_approval.campaign_id": ("award_campaign_approval", dict(campaign_id=BIG)),
    "award_campaign_approval.creator_wallet": ("award_campaign_approval", dict(campaign_id="c", creator_wallet=BIG)),
    "award_moderation_vote.moderator_wallet": ("award_moderation_vote",
                                               dict(moderator_wallet=BIG, campaign_id="c", vote_decision="VALID")),
    "award_moderation_vote.vote_decision": ("award_moderation_vote",
                                            dict(moderator_wallet="w", campaign_id="c", vote_decision=BIG)),
    "award_moderation_vote.campaign_type": ("award_moderation_vote",
                                            dict(moderator_wallet="w", campaign_id="c", vote_decision="VALID",
                                                 campaign_type=BIG)),
    "award_completion.completion_id": ("award_completion",
                                       dict(completer_wallet="w", campaign_id="c", completion_id=BIG)),
    "award_completion_moderation.completion_id": ("award_completion_moderation",
                                                  dict(moderator_wallet="w", campaign_id="c", completion_id=BIG,
                                                       vote_decision="VALID")),
    "register_agency_client.client_email": ("register_agency_client",
                                            dict(agency_wallet="w", client_email=BIG, campaign_id="c")),
    "register_agency_client.company_name": ("register_agency_client",
                                            dict(agency_wallet="w", client_email="a@b.co", campaign_id="c",
                                                 company_name=BIG)),
    "onboard_agency_client.client_wallet": ("onboard_agency_client", dict(client_email="a@b.co", client_wallet=BIG)),
    "balance.wallet": ("balance", dict(wallet=BIG)),
    "history.wallet": ("history", dict(wallet=BIG)),
    "wallet_rank.wallet": ("wallet_rank", dict(wallet=BIG)),
    "level_for.total_xp": ("level_for", dict(total_xp=Decimal("9" * 1000))),
}


@pytest.mark.parametrize("case", sorted(SIZE_CALLS))
def test_every_public_parameter_is_size_checked_first(db: psycopg.Connection[Any], unchanged: Any,
                                                      case: str) -> None:
    function, kwargs = SIZE_CALLS[case]
    call = sql.SQL("SELECT * FROM pyxp.{}({})").format(
        sql.Identifier(function),
        sql.SQL(", ").join(sql.SQL("{} => %({})s").format(sql.Identifier(k), sql.SQL(k)) for k in kwargs))
    with unchanged(), pytest.raises(psycopg.Error) as caught:
        db.execute(call, kwargs).fetchall()
    assert caught.value.sqlstate is not None and caught.value.sqlstate.startswith("PX"), caught.value


# --------------------------------------------------------------------------- deadlocks (issue 9 item 9)


def test_callers_awarding_in_wallet_order_never_deadlock_with_batches(conninfo: str,
                                                                     db: psycopg.Connection[Any]) -> None:
    """The README's advice: award wallets in sorted order. A batch used to create every missing balance
    row first and lock the existing ones in a second pass: when a caller took an existing wallet between
    the two passes, the batch waited for it while holding a new wallet's row the caller wanted next
    (40P01: 3 deadlocks in 150 rounds on 0001). Now a batch creates or locks each row in wallet order,
    in one statement. Two callers (one transaction, two awards, sorted) and two batches race per round."""
    rounds = 300
    with XP(conninfo) as setup:
        setup.award_many([{"wallet": f"0xa{r:03}", "action": "CAMPAIGN_APPROVED", "idempotency_key": f"seed-{r}"}
                          for r in range(rounds)])
    barrier = threading.Barrier(4)
    errors: list[str] = []

    def caller(tid: int) -> None:
        with psycopg.connect(conninfo) as conn:
            client = XP(conn)
            for r in range(rounds):
                barrier.wait(timeout=30)
                try:
                    client.award(f"0xa{r:03}", "CAMPAIGN_APPROVED", f"caller{tid}-1-{r}")
                    client.award(f"0xb{r:03}", "CAMPAIGN_APPROVED", f"caller{tid}-2-{r}")  # new this round
                    conn.commit()
                except (psycopg.Error, pyxp.XPError) as exc:
                    conn.rollback()
                    errors.append(type(exc).__name__)

    def batch(tid: int) -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            client = XP(conn)
            for r in range(rounds):
                barrier.wait(timeout=30)
                try:
                    client.award_many([
                        {"wallet": f"0xa{r:03}", "action": "CAMPAIGN_APPROVED", "idempotency_key": f"b{tid}-1-{r}"},
                        {"wallet": f"0xb{r:03}", "action": "CAMPAIGN_APPROVED", "idempotency_key": f"b{tid}-2-{r}"}])
                except (psycopg.Error, pyxp.XPError) as exc:
                    errors.append(type(exc).__name__)

    threads = [threading.Thread(target=f, args=(i,)) for i, f in enumerate((caller, caller, batch, batch))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == []
    assert db.execute("SELECT count(*) FROM pyxp.xp_transactions").fetchone() == (rounds * 9,)
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


# --------------------------------------------------------------------------- races found in review


def _in_open_transaction(conninfo: str, call: Callable[[XP], Any]) -> psycopg.Connection[Any]:
    """A connection whose transaction made ``call`` and stays open (the caller commits or rolls back)."""
    conn = psycopg.connect(conninfo)
    call(XP(conn))
    return conn


def _blocked_then(conninfo: str, call: Callable[[XP], Any], release: Callable[[], None]) -> BaseException | Any:
    """Runs ``call`` on another connection; checks it waits while the other transaction is open,
    then ``release()``s it; returns what the call returned or raised."""
    outcome: list[Any] = []

    def run() -> None:
        with XP(conninfo, max_connections=1) as client:
            try:
                outcome.append(call(client))
            except BaseException as exc:  # noqa: BLE001 - returned to the test
                outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(1.5)
    assert thread.is_alive(), f"the second call did not wait: {outcome}"
    release()
    thread.join(30)
    assert outcome
    return outcome[0]


def test_a_submission_and_an_outcome_for_two_wallets_at_once_cannot_both_pass(
        conninfo: str, xp: XP, db: psycopg.Connection[Any]) -> None:
    """Review: the outcome's ownership check read the submission without a lock, so a submission by 0xA
    still open and an outcome by 0xB both went through (+100 each). Now they serialise per completion."""
    xp.award_campaign_creation("0xcreator", "camp_r", "B2C")
    first = _in_open_transaction(conninfo, lambda c: c.award_completion("0xA", "camp_r", "comp_r"))
    try:
        result = _blocked_then(conninfo, lambda c: c.award_completion("0xB", "camp_r", "comp_r", is_validated=True),
                               first.commit)
    finally:
        first.close()
    assert isinstance(result, pyxp.CampaignMismatch), result
    assert db.execute("SELECT DISTINCT user_wallet FROM pyxp.xp_transactions WHERE subject = 'comp_r'"
                      ).fetchall() == [("0xA",)]


def test_a_campaign_type_recorded_by_a_vote_and_a_creation_at_once_cannot_disagree(
        conninfo: str, xp: XP, db: psycopg.Connection[Any]) -> None:
    """Review: a vote recording camp_t as B2C, still open, and a creation as AGENCY_B2C both went
    through; the registry then said B2C, the ledger AGENCY_B2C. Now the creation waits and refuses."""
    vote = _in_open_transaction(conninfo, lambda c: c.award_moderation_vote("0xmod", "camp_t", "VALID",
                                                                            campaign_type="B2C"))
    try:
        result = _blocked_then(conninfo, lambda c: c.award_campaign_creation("0xag", "camp_t", "AGENCY_B2C"),
                               vote.commit)
    finally:
        vote.close()
    assert isinstance(result, pyxp.CampaignMismatch), result
    assert db.execute("SELECT campaign_type, creator_wallet FROM pyxp.campaigns").fetchall() == [("B2C", None)]
    assert db.execute("SELECT count(*) FROM pyxp.xp_transactions WHERE transaction_type LIKE '%MINT'"
                      ).fetchone() == (0,)


def test_a_vote_whose_new_key_text_a_0001_key_of_another_vote_holds_is_still_a_vote(
        fresh_database: Callable[[], str]) -> None:
    """Review: 0001 stored ('0xmod', 'a:b') as campaign.vote:a:b:0xmod, the text 0002 builds for
    ('b:0xmod', 'a'): that distinct vote was refused (PX010) for good. It takes a /2 key now."""
    target = fresh_database()
    schema.upgrade(target, "0001")
    with psycopg.connect(target, autocommit=True) as conn:
        XP(conn).award_moderation_vote("0xmod", "a:b", "VALID", campaign_type="B2C")
    schema.upgrade(target)
    with psycopg.connect(target, autocommit=True) as conn:
        client = XP(conn)
        other = client.award_moderation_vote("b:0xmod", "a", "VALID", campaign_type="B2C")
        retry = client.award_moderation_vote("b:0xmod", "a", "VALID")
        old = client.award_moderation_vote("0xmod", "a:b", "VALID", campaign_type="B2C")
        assert (other.xp, other.replayed, retry.replayed, old.replayed) == (2, False, True, True)
        keys = [k for (k,) in conn.execute(
            "SELECT idempotency_key FROM pyxp.idempotency_keys WHERE claimed_in = 'xp_requests' ORDER BY 1")]
        assert keys == ["campaign.vote/2:a:b:0xmod", "campaign.vote:a:b:0xmod"]
        assert conn.execute("SELECT * FROM pyxp.audit()").fetchall() == []
        with pytest.raises(pyxp.InvalidIdentifier):
            client.award("0xabc", "CAMPAIGN_APPROVED", "campaign.vote/2:x:y")  # pyxp's namespace


def test_a_downgrade_that_would_let_a_retry_award_twice_is_refused(fresh_database: Callable[[], str]) -> None:
    """Review: a vote keyed by 0002 (campaign id with ':') retried after a downgrade to 0001 was
    awarded again. The downgrade refuses while such keys, or campaigns known by type only, exist."""
    target = fresh_database()
    schema.upgrade(target)
    with psycopg.connect(target, autocommit=True) as conn:
        XP(conn).award_moderation_vote("0xm2", "x:y", "VALID", campaign_type="B2C")
    with pytest.raises(Exception, match="cannot downgrade below 0002"):
        schema.downgrade(target, "0001")
    assert schema.current_revision(target) == "0002"  # the later revisions came off; 0002 (which keys them) stays


def test_audit_lists_identities_stored_before_0002_that_read_otherwise_today(
        fresh_database: Callable[[], str]) -> None:
    """Review: 0002 does not rewrite stored identities (the ledger is append-only): a full-width or
    invisible-character wallet of 0001 is a second user after the upgrade. audit() names each."""
    target = fresh_database()
    schema.upgrade(target, "0001")
    with psycopg.connect(target, autocommit=True) as conn:
        old = XP(conn)
        # 0x + 40 lower-case hex digits, and such a wallet with a zero-width space inside: the
        # audit skips the first without the PL/pgSQL checks (0012), not the second.
        for n, wallet in enumerate(["\uff10xfull", "nb\u00a0sp", "a\u200bb", "0x_plain", "0x" + "cd" * 20,
                                    "0x" + "cd" * 10 + "\u200b" + "cd" * 10]):
            old.award(wallet, "CAMPAIGN_APPROVED", f"legacy-{n}")
        old.award_campaign_creation("0xagency", "camp_ag", "AGENCY_B2C")
        old.register_agency_client("0xagency", "c\u200blient@example.com", "camp_ag")
    schema.upgrade(target)
    with psycopg.connect(target, autocommit=True) as conn:
        findings = conn.execute("SELECT check_name, user_wallet, detail FROM pyxp.audit()").fetchall()
    assert sorted((name, wallet or "") for name, wallet, _ in findings) == [
        ("identity_not_normalised", ""), ("identity_not_normalised", "0x" + "cd" * 10 + "\u200b" + "cd" * 10),
        ("identity_not_normalised", "a\u200bb"), ("identity_not_normalised", "nb\u00a0sp"),
        ("identity_not_normalised", "\uff10xfull")]
    details = " ".join(detail for *_, detail in findings)
    assert "U+200B" in details and "'0xfull'" in details and "'nb sp'" in details


@pytest.mark.parametrize(("character", "shown"), [("\u200b", "U+200B"), ("\x07", "U+0007"),
                                                  ("\U000e0041", "U+E0041"), ("\U000e007f", "U+E007F")])
def test_a_refused_character_is_named_by_its_whole_code_point(
        db: psycopg.Connection[Any], unchanged: Any, character: str, shown: str) -> None:
    """PX001 names the invisible character it refuses; one beyond the Basic Multilingual Plane
    (a tag character) was named by its first four hex digits (U+E004 for U+E0041) before 0023."""
    with unchanged(), pytest.raises(psycopg.Error) as refused:
        db.execute("SELECT * FROM pyxp.award(%s, 'CAMPAIGN_APPROVED', 'cp')", (f"abc{character}def",))
    assert refused.value.sqlstate == "PX001"
    assert f"contains {shown}," in str(refused.value)
