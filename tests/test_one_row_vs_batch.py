"""Differential test: the writer's one-row statements (pyxp.award, 0036) against its batch path
(pyxp.award_many).

Two databases get the same ruleset and the same seeded random sequence of operations. Database A
makes every award as a single call (pyxp.award; a group of several awards inside one transaction);
database B makes each group as one pyxp.award_many batch. Reversals, flow calls and trigger
bonuses are single calls on both sides (the one-row form, with caps' lookups or without). After
every step: each call's result rows and SQLSTATE; at the end (and at checkpoints) every ledger
row, balances, cap usage, period XP, ranks and audit().

Also checked: replays through the other path (a single award's key replayed by a batch of one
and back), REPEATABLE READ and SERIALIZABLE callers (PX025 on both, nothing written), invalid
inputs (same SQLSTATE for a group of one), ruleset switches (other caps, periods, zones: seeded
allowances), fractional formula inputs, the balance floor, 0-XP rows, penalties in capped groups,
reversals of capped gains, and per wallet: wallet_seq without gaps, feed groups never going back.

Written by a hostile tester (helper-55, 0037), who found no divergence; a mutation of the one-row
capped statement (an allowance left of 1 instead of 0) is caught by every seed within 20 steps.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

from pyxp.ruleset_config import load_ruleset

WALLETS = ["0xa", "0xb", "0xc", "0x" + "d" * 40]  # the last is lower-cased by pyxp.checked_wallet


def definition(floor: int | None, caps: bool, variant: int = 0) -> dict[str, Any]:
    d = load_ruleset("winstory").definition()
    d["name"] = f"diff-{'caps' if caps else 'nocaps'}-{'none' if floor is None else floor}".replace("--", "-m")
    d["balance_floor"] = floor
    d["timezone"] = "UTC"
    if variant:  # another version: other caps, periods and zone (a switch seeds the allowances)
        d["name"] += f"-v{variant}"
        d["timezone"] = ["UTC", "Europe/Paris", "Pacific/Kiritimati", "America/Los_Angeles"][variant]

    def rule(action: str, constant: str, coefficients: dict[str, str] | None = None,
             cap: tuple[int, str] | None = None, group: str | None = None) -> dict[str, Any]:
        r: dict[str, Any] = {"action": action, "event": f"diff.{action.lower()}", "campaign_types": None,
                             "condition": None, "formula": constant, "constant": constant,
                             "coefficients": coefficients or {}, "description": f"diff {action}"}
        if caps and cap is not None:
            r["cap"] = {"max_xp": cap[0], "per": cap[1]}
            if group is not None:
                r["group"] = group
        return r

    if caps:
        for r in d["rules"]:
            if r["action"] in ("MODERATION_VALIDATED_BY_MODERATOR", "MODERATION_REFUSED_BY_MODERATOR",
                               "Completion_Moderation_Validated"):
                r["cap"], r["group"] = {"max_xp": 6 + variant, "per": "day"}, "votes"
    d["rules"] += [
        rule("G_A", "40", cap=(100 + 30 * variant, "day" if variant % 2 == 0 else "week"), group="g"),
        rule("G_B", "70", cap=(100 + 30 * variant, "day" if variant % 2 == 0 else "week"), group="g"),
        # a penalty in a capped group: never cut
        rule("G_PEN", "-25", cap=(100 + 30 * variant, "day" if variant % 2 == 0 else "week"), group="g"),
        rule("C_W", "30", cap=(50, "week")),
        rule("C_ZERO", "0", cap=(10, "day")),                   # 0-XP rows
        rule("C_F", "0", {"N": "1"}, cap=(120, "day")),         # a formula, capped
        rule("F_NEG", "0", {"N": "-1"}),                        # formula: a penalty of N
        rule("BIG", "0", {"N": "1"}),                           # formula: up to 10^15
        rule("PEN", "-60"),
        rule("ZERO", "0"),
        rule("BONUS", "5", cap=(15, "day")),                    # the trigger's bonus
    ]
    return d


@dataclass(frozen=True)
class Server:
    """Where the two databases are made: the test server, cloning the suite's migrated template."""

    conninfo: str
    template: str

    def fresh(self, name: str) -> str:
        with psycopg.connect(make_conninfo(self.conninfo, dbname="postgres"), autocommit=True) as c:
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
            c.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name),
                                                                       sql.Identifier(self.template)))
        return make_conninfo(self.conninfo, dbname=name)

    def drop(self, name: str) -> None:
        with psycopg.connect(make_conninfo(self.conninfo, dbname="postgres"), autocommit=True) as c:
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


TRIGGER = """
CREATE FUNCTION public.level_bonus() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.current_level > OLD.current_level THEN
        FOR l IN OLD.current_level + 1 .. NEW.current_level LOOP
            PERFORM pyxp.award(NEW.user_wallet, 'BONUS', 'lvl:' || NEW.user_wallet || ':' || l);
        END LOOP;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER level_bonus AFTER UPDATE ON pyxp.xp_balances FOR EACH ROW EXECUTE FUNCTION public.level_bonus();
"""


def setup(conninfo: str, floor: int | None, caps: bool, trigger: bool) -> psycopg.Connection[Any]:
    conn = psycopg.connect(conninfo, autocommit=True)
    d = definition(floor, caps)
    conn.execute("SELECT * FROM pyxp.install_ruleset(%s, %s)", (Jsonb(d), "# differential"))
    if trigger:
        conn.execute(TRIGGER)
    return conn


# ---------------------------------------------------------------- the operations

def gen_event(rng: random.Random, keys: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """One award event (JSON of award_many), sometimes a replay, a conflict or an invalid input."""
    roll = rng.random()
    if keys and roll < 0.10:  # replay with the same inputs (another context, params' names in other case)
        e = dict(rng.choice(keys))
        if rng.random() < 0.3:
            e["context"] = {"subject": f"s{n}"}
        if "params" in e and rng.random() < 0.3:
            e["params"] = {k.lower(): v for k, v in e["params"].items()}
        if rng.random() < 0.5 and len(e["wallet"]) == 42:
            e["wallet"] = e["wallet"].upper()  # the same wallet, as pyxp.checked_wallet folds it
        return e
    if keys and roll < 0.13:  # same key, other inputs (PX010)
        e = dict(rng.choice(keys))
        e["wallet"] = rng.choice([w for w in WALLETS if w != e["wallet"]])
        return e
    if roll < 0.16:  # invalid inputs
        kind = rng.choice(["unknown_action", "missing_param", "unknown_param", "bad_wallet", "empty_key",
                           "out_of_range", "neg_param"])
        e = {"wallet": rng.choice(WALLETS), "action": "G_A", "idempotency_key": f"bad{n}"}
        if kind == "unknown_action":
            e["action"] = "NOPE"
        elif kind == "missing_param":
            e["action"] = "C_F"
        elif kind == "unknown_param":
            e["params"] = {"N": 3}
        elif kind == "bad_wallet":
            e["wallet"] = ""
        elif kind == "empty_key":
            e["idempotency_key"] = ""
        elif kind == "out_of_range":
            e["action"], e["params"] = "BIG", {"N": 10**16}
        elif kind == "neg_param":
            e["action"], e["params"] = "C_F", {"N": -5}
        return e
    action = rng.choice(["G_A", "G_A", "G_B", "G_PEN", "C_W", "C_W", "C_ZERO", "C_F", "F_NEG", "PEN", "ZERO",
                         "CAMPAIGN_APPROVED", "Completion_Refused_Individual", "MODERATION_VALIDATED_BY_MODERATOR"]
                        + (["BIG"] if rng.random() < 0.3 else []))
    wallet = rng.choice(WALLETS)
    e: dict[str, Any] = {"wallet": wallet.upper() if len(wallet) == 42 and rng.random() < 0.3 else wallet,
                         "action": action, "idempotency_key": f"k{n}"}
    if action in ("C_F", "F_NEG"):
        e["params"] = {"N": rng.choice([0, 1, 7, 33, 80, 150, 0.5, 7.5, 2.4999, 119.5])}
    if action == "Completion_Refused_Individual":
        e["params"] = {"MINT_VALUE_$WINC": rng.choice([1, 3, 51, 0.2])}
    if action == "BIG":
        e["params"] = {"N": rng.choice([1, 999, 10**15])}
    if rng.random() < 0.2:
        e["context"] = {"campaign_id": f"c{rng.randint(1, 3)}", "note": n}
    return e


def gen_ops(rng: random.Random, count: int, same_wallet_ok: bool) -> list[tuple[str, Any]]:
    ops: list[tuple[str, Any]] = []
    keys: list[dict[str, Any]] = []
    n = 0
    while len(ops) < count:
        r = rng.random()
        if r < 0.65:
            size = rng.choice([1, 1, 1, 2, 3, 5])
            group: list[dict[str, Any]] = []
            for _ in range(size):
                e = gen_event(rng, keys, n)
                n += 1
                if not same_wallet_ok and any(g["wallet"].lower() == e["wallet"].lower() for g in group):
                    continue
                group.append(e)
                if e["idempotency_key"].startswith("k") and e not in keys:
                    keys.append(e)
            if group:
                ops.append(("group", group))
        elif r < 0.70 and keys:
            ops.append(("cross", dict(rng.choice(keys))))  # a replay through the other path
        elif r < 0.73:
            ops.append(("iso", (rng.choice(["REPEATABLE READ", "SERIALIZABLE"]), gen_event(rng, keys, n))))
            n += 1
        elif r < 0.80:
            # reverse the row of an earlier group's event (by position), sometimes twice / other reason
            ops.append(("reverse", (rng.randint(0, 10**6), rng.choice(["oops", "oops", "other"]))))
        elif r < 0.90:
            ops.append(("vote", (rng.choice(WALLETS), f"camp{rng.randint(0, 30)}", rng.choice(["VALID", "REFUSE"]))))
        elif r < 0.97:
            ops.append(("reverse_bad", rng.choice([-1, 0, 10**12])))
        else:
            ops.append(("switch", rng.randint(0, 3)))
    return ops


RESULT_COLS = ("user_wallet, transaction_type, xp_amount, xp_requested, total_xp, current_level, "
               "xp_to_next_level, previous_level, replayed")


class Side:
    def __init__(self, conn: psycopg.Connection[Any], batch: bool) -> None:
        self.conn = conn
        self.batch = batch
        self.written: list[tuple[str, int]] = []  # (wallet, wallet_seq) of the rows the groups wrote

    def seq_of(self, tid: int) -> tuple[str, int]:
        row = self.conn.execute("SELECT user_wallet, wallet_seq FROM pyxp.xp_transactions WHERE id = %s",
                                (tid,)).fetchone()
        return (row[0], row[1])

    def tid_of(self, ref: tuple[str, int]) -> int | None:
        row = self.conn.execute("SELECT id FROM pyxp.xp_transactions WHERE user_wallet = %s AND wallet_seq = %s",
                                ref).fetchone()
        return row[0] if row else None

    def group(self, events: list[dict[str, Any]]) -> tuple[str | None, list[tuple[Any, ...]]]:
        rows: list[tuple[Any, ...]] = []
        try:
            if self.batch:
                got = self.conn.execute(f"SELECT event_index, transaction_id, {RESULT_COLS} "
                                        "FROM pyxp.award_many(%s)", (Jsonb(events),)).fetchall()
                for r in got:
                    rows.append((r[0],) + tuple(r[2:]))
                    if not r[-1]:
                        self.written.append(self.seq_of(r[1]))
            elif len(events) == 1:
                rows, new = self._singles(events)
                self.written += new
            else:
                with self.conn.transaction():
                    rows, new = self._singles(events)
                self.written += new
        except psycopg.Error as exc:
            return exc.sqlstate, []
        return None, rows

    def cross(self, e: dict[str, Any]) -> tuple[str | None, list[tuple[Any, ...]]]:
        """A replay of e through the other path: award_many on the singles' side, award on the batches'."""
        other = Side(self.conn, not self.batch)
        got = other.group([e])
        return got

    def iso(self, level: str, e: dict[str, Any]) -> tuple[str | None, list[tuple[Any, ...]]]:
        before = self.conn.execute("SELECT count(*), coalesce(max(id), 0) FROM pyxp.xp_transactions").fetchone()
        self.conn.autocommit = False
        try:
            self.conn.execute(f"SET TRANSACTION ISOLATION LEVEL {level}")
            self.conn.execute("SELECT 1")  # the snapshot first, as an application's transaction
            got = self.group([e])
        finally:
            self.conn.rollback()
            self.conn.autocommit = True
        after = self.conn.execute("SELECT count(*), coalesce(max(id), 0) FROM pyxp.xp_transactions").fetchone()
        assert before == after
        return got

    def _singles(self, events: list[dict[str, Any]]) -> tuple[list[tuple[Any, ...]], list[tuple[str, int]]]:
        rows = []
        new = []
        for i, e in enumerate(events):
            got = self.conn.execute(f"SELECT transaction_id, {RESULT_COLS} FROM pyxp.award(%s, %s, %s, %s, %s)",
                                    (e.get("wallet"), e.get("action"), e.get("idempotency_key"),
                                     Jsonb(e["params"]) if "params" in e else Jsonb({}),
                                     Jsonb(e["context"]) if "context" in e else Jsonb({}))).fetchall()
            for r in got:
                rows.append((i,) + tuple(r[1:]))
                if not r[-1]:
                    new.append(self.seq_of(r[0]))
        return rows, new

    def call(self, sql: str, args: tuple[Any, ...]) -> tuple[str | None, list[tuple[Any, ...]]]:
        try:
            return None, [tuple(r) for r in self.conn.execute(sql, args).fetchall()]
        except psycopg.Error as exc:
            return exc.sqlstate, []

    def state(self) -> dict[str, Any]:
        c = self.conn
        ledger = c.execute(
            "SELECT t.user_wallet, t.wallet_seq, t.transaction_type, t.xp_amount, t.xp_requested, t.balance_after, "
            "       ru.action, t.campaign_id, t.subject, t.metadata, "
            "       CASE WHEN t.reverses IS NULL THEN t.idempotency_key "
            "            ELSE (t.idempotency_key = 'reverse:' || t.reverses)::text END, "
            "       o.user_wallet, o.wallet_seq, t.request_digest, "
            "       t.created_at::date "
            "  FROM pyxp.xp_transactions t LEFT JOIN pyxp.rules ru ON ru.rule_id = t.rule_id "
            "  LEFT JOIN pyxp.xp_transactions o ON o.id = t.reverses "
            " ORDER BY t.user_wallet, t.wallet_seq").fetchall()
        balances = c.execute(
            "SELECT user_wallet, total_xp, current_level, xp_to_next_level, total_moderations, last_wallet_seq, "
            "       day_start, day_xp, week_start, week_xp, month_start, month_xp, year_start, year_xp "
            "  FROM pyxp.xp_balances ORDER BY user_wallet").fetchall()
        usage = c.execute("SELECT user_wallet, allowance, period_start, used_xp, seeded_xp FROM pyxp.xp_cap_usage "
                          "WHERE used_xp <> 0 OR seeded_xp <> 0 ORDER BY 1, 2, 3").fetchall()
        periods = c.execute(
            "SELECT w, p, pyxp.period_xp(w, p), pyxp.wallet_rank(w, p) FROM unnest(%s::text[]) w "
            "CROSS JOIN unnest('{day,week,month,year}'::text[]) p ORDER BY 1, 2", (WALLETS,)).fetchall()
        ranks = c.execute("SELECT w, pyxp.wallet_rank(w) FROM unnest(%s::text[]) w ORDER BY 1", (WALLETS,)).fetchall()
        audit = c.execute("SELECT * FROM pyxp.audit()").fetchall()
        # per wallet: wallet_seq 1..n without gaps, feed groups and created_at never going back
        audit += c.execute(
            "SELECT 'wallet_order', user_wallet, id, "
            "       format('seq %s feed %s<%s at %s<%s', wallet_seq, feed_xid, pf, created_at, pa) "
            "  FROM (SELECT t.*, lag(t.feed_xid) OVER w AS pf, lag(t.created_at) OVER w AS pa, "
            "               row_number() OVER w AS n FROM pyxp.xp_transactions t "
            "        WINDOW w AS (PARTITION BY t.user_wallet ORDER BY t.wallet_seq)) x "
            " WHERE x.wallet_seq <> x.n OR x.feed_xid < x.pf").fetchall()
        requests = c.execute("SELECT count(*) FROM pyxp.xp_award_claims").fetchone()
        return {"ledger": ledger, "balances": balances, "usage": usage, "periods": periods, "ranks": ranks,
                "audit": audit, "claims": requests}


def run(server: Server, seed: int, count: int = 60, floor: int | None = 0, caps: bool = True,
        trigger: bool = False) -> list[str]:
    """Returns the differences found (empty: the two paths agree)."""
    rng = random.Random(seed)
    ops = gen_ops(rng, count, same_wallet_ok=not trigger)
    prefix = f"pyxp_diff_{os.getpid()}_{seed}"
    na, nb = f"{prefix}_single", f"{prefix}_batch"
    a = Side(setup(server.fresh(na), floor, caps, trigger), batch=False)
    b = Side(setup(server.fresh(nb), floor, caps, trigger), batch=True)
    diffs: list[str] = []
    try:
        for step, (kind, arg) in enumerate(ops):
            if kind == "group":
                ra, rb = a.group(arg), b.group(arg)
                # A multi-event batch reports the first problem by check, then event; the singles by event:
                # compare the SQLSTATE only when one event is in the group.
                same = ra == rb if (len(arg) == 1 or ra[0] is None or rb[0] is None) else ra[1] == rb[1] == []
                if not same:
                    diffs.append(f"step {step} group {json.dumps(arg)}:\n  single {ra}\n  batch  {rb}")
            elif kind == "reverse":
                if not a.written:
                    continue
                ref = a.written[arg[0] % len(a.written)]
                ta, tb = a.tid_of(ref), b.tid_of(ref)
                if ta is None or tb is None:
                    diffs.append(f"step {step}: row {ref} missing (single {ta}, batch {tb})")
                    continue
                q = f"SELECT {RESULT_COLS} FROM pyxp.reverse_transaction(%s, %s)"
                ra, rb = a.call(q, (ta, arg[1])), b.call(q, (tb, arg[1]))
                if ra != rb:
                    diffs.append(f"step {step} reverse {ref} {arg[1]}:\n  single {ra}\n  batch  {rb}")
            elif kind == "vote":
                q = f"SELECT {RESULT_COLS} FROM pyxp.award_moderation_vote(%s, %s, %s, 'B2C')"
                ra, rb = a.call(q, arg), b.call(q, arg)
                if ra != rb:
                    diffs.append(f"step {step} vote {arg}:\n  single {ra}\n  batch  {rb}")
            elif kind == "cross":
                ra, rb = a.cross(arg), b.cross(arg)
                if ra != rb:
                    diffs.append(f"step {step} cross replay {arg}:\n  batch-of-1 on singles' db {ra}\n"
                                 f"  single on batches' db {rb}")
            elif kind == "iso":
                ra, rb = a.iso(*arg), b.iso(*arg)
                if ra != rb:
                    diffs.append(f"step {step} iso {arg}:\n  single {ra}\n  batch  {rb}")
            elif kind == "switch":
                for side in (a, b):
                    d = definition(floor, caps, arg)
                    side.conn.execute("SELECT * FROM pyxp.install_ruleset(%s, %s)", (Jsonb(d), "# switch"))
            elif kind == "reverse_bad":
                q = f"SELECT {RESULT_COLS} FROM pyxp.reverse_transaction(%s, 'x')"
                ra, rb = a.call(q, (arg,)), b.call(q, (arg,))
                if ra != rb:
                    diffs.append(f"step {step} reverse_bad {arg}: single {ra} batch {rb}")
            if step % 10 == 9 or step == len(ops) - 1:
                sa, sb = a.state(), b.state()
                for k in sa:
                    if sa[k] != sb[k]:
                        if isinstance(sa[k], list):
                            only_a = [r for r in sa[k] if r not in sb[k]]
                            only_b = [r for r in sb[k] if r not in sa[k]]
                            diffs.append(f"after step {step}: {k} differs:\n  single only {only_a}\n  batch only  {only_b}")
                        else:
                            diffs.append(f"after step {step}: {k} differs: single {sa[k]} batch {sb[k]}")
                if sa["audit"]:
                    diffs.append(f"after step {step}: audit (single) {sa['audit']}")
                if diffs:
                    break
    finally:
        a.conn.close()
        b.conn.close()
        server.drop(na)
        server.drop(nb)
    return diffs


@pytest.mark.parametrize(("floor", "caps", "trigger"),
                         [(0, True, False), (None, True, False), (-50, True, False), (0, False, False),
                          (None, False, False), (0, True, True), (None, False, True)])
def test_single_calls_and_batches_agree(pyxp_server: Any, floor: int | None, caps: bool, trigger: bool) -> None:
    """Three seeds of 80 operations each, per configuration of the floor, the caps and a level-up trigger."""
    server = Server(make_conninfo(host=pyxp_server.host, port=str(pyxp_server.port), user=pyxp_server.user,
                                  password=pyxp_server.password or None), pyxp_server.template_dbname)
    failures = [f"seed {seed}: {diffs[0]}" for seed in (1000, 1001, 1002)
                if (diffs := run(server, seed, 80, floor, caps, trigger))]
    assert not failures, "\n".join(failures)
