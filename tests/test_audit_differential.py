"""The audit's single-row checks against the frozen body of 0041 (a differential test, helper-72).

0042 rewrote pyxp.row_problems (each row against its rule in one pass, the duplicated ids grouped
once) with the claim that its findings are those of 0041's three passes. The 0041 body, kept by
0042's downgrade file, is installed beside the current one as pyxp.row_problems_0041; a ledger with
every kind of row (generic awards with and without params, caps, a balance floor's cuts, the flows,
reversals, a batch, a retroactive adjustment, a ruleset switch, a checkpoint between old and new
rows) is tampered with in seeded random ways, each inside a transaction rolled back, and both bodies
must return the same multiset of findings, in full and since the checkpoint, with the default plans
and with parallel plans forced. (The one finding 0042 added, a row whose rule cannot be evaluated on its
metadata, made 0041's body raise: tests/test_audit_checkpoints.py holds it.) A later revision that changes what row_problems finds on purpose
changes this test with it: 0043 reports a row whose rule's form gives no amount on its metadata (an
input removed or edited to null, or a rule edited to name an input no row holds), which 0041 let
through; those findings are compared apart. 0044 probes a new row's claim or request by key
where 0043 joined them: the tampering edits the claims and requests too, and must reach both checks
since the checkpoint. 0046 reports a RULES_ADJUSTMENT row whose ruleset was never applied
retroactively, or whose key names another wallet, which 0041 took for an adjustment (or reported in
other words): those findings are compared apart.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
from conftest import install_variant
from psycopg.types.json import Jsonb

from pyxp.ruleset_config import load_ruleset

NULL_FORM = "is missing or null in its metadata"  # 0043's amount_mismatch (pyxp.row_problems)
FORGED = "not an adjustment of this wallet by a ruleset applied retroactively"  # 0046's rule_missing
FROZEN_0041 = Path(__file__).resolve().parents[1] / "migrations" / "versions" / "0042_audit_in_fewer_passes.downgrade.sql"

PARALLEL = ["parallel_setup_cost = 0", "parallel_tuple_cost = 0", "min_parallel_table_scan_size = 0",
            "min_parallel_index_scan_size = 0", "max_parallel_workers_per_gather = 2"]
WEIRD = ['0x"q', "0x\\b", "0xé€😀", "0x'", '0x{"wallet": "0xa"}', "x\n\t\u0001"]


def install_0041_body(db: psycopg.Connection[Any]) -> None:
    """0041's pyxp.row_problems, as 0042's downgrade file restores it, under another name (the
    rest of that file, which undoes 0042, is not run)."""
    text = FROZEN_0041.read_text(encoding="utf-8")
    start = text.index("CREATE OR REPLACE FUNCTION pyxp.row_problems(")
    body = text[start:text.index("\n$$;\n", start) + len("\n$$;\n")]
    db.execute(body.replace("FUNCTION pyxp.row_problems(", "FUNCTION pyxp.row_problems_0041("))


def bumped_ruleset(db: psycopg.Connection[Any], bump: int) -> int:
    """The default rules with every constant amount raised by ``bump``, installed and activated;
    its id (for pyxp.apply_rules_retroactively)."""
    definition = load_ruleset("winstory").definition()
    definition["name"] = "bumped"
    for rule in definition["rules"]:
        if rule["coefficients"] == {}:
            rule["constant"] = rule["formula"] = str(int(rule["constant"]) + bump)
    row = db.execute("SELECT ruleset_id FROM pyxp.install_ruleset(%s, %s)", (Jsonb(definition), "# bumped")).fetchone()
    assert row is not None
    return int(row[0])


def rows_of_every_kind(db: psycopg.Connection[Any], tag: str) -> None:
    def award(wallet: str, action: str, key: str, params: dict[str, Any] | None = None) -> None:
        db.execute("SELECT * FROM pyxp.award(%s, %s, %s, %s)", (wallet, action, f"{tag}-{key}", Jsonb(params or {})))

    for i in range(3):
        award(f"0x{tag}{i}", "CAMPAIGN_APPROVED", f"appr-{i}")
        award(f"0x{tag}{i}", "Completion_Submit_B2C_Paid", f"paid-{i}", {"PRICE_COMPLETION": 10 * i + 1})
        award(f"0x{tag}{i}", "Completion_Refused_Individual", f"ref-{i}", {"MINT_VALUE_$WINC": 301 + 2 * i})
        award(f"0x{tag}{i}", "Completion_Refused_B2C", f"refb-{i}")
    for k, wallet in enumerate(WEIRD[:4]):
        award(wallet, "CAMPAIGN_APPROVED", f"weird-{k}")
    db.execute("SELECT * FROM pyxp.award_many(%s)", (Jsonb([
        {"wallet": f"0x{tag}b{j % 2}", "action": action, "idempotency_key": f"{tag}-b{j}",
         **({"params": {"PRICE_COMPLETION": j}} if "Paid" in action else {})}
        for j, action in enumerate(["CAMPAIGN_APPROVED", "Completion_Submit_B2C_Paid", "Completion_Refused_B2C"])]),))
    db.execute("SELECT * FROM pyxp.award_campaign_creation(%s, %s, 'B2C', winstory_creates_video => true)",
               (f"0x{tag}cr", f"{tag}-cmp"))
    db.execute("SELECT * FROM pyxp.award_campaign_creation(%s, %s, 'AGENCY_B2C')", (f"0x{tag}ag", f"{tag}-agc"))
    db.execute("SELECT * FROM pyxp.award_moderation_vote(%s, %s, 'REFUSE')", (f"0x{tag}mod", f"{tag}-cmp"))
    db.execute("SELECT * FROM pyxp.award_completion(%s, %s, %s, is_paid => true, price_completion => 40)",
               (f"0x{tag}cp", f"{tag}-cmp", f"{tag}-c1"))
    db.execute("SELECT * FROM pyxp.register_agency_client(%s, %s, %s)", (f"0x{tag}ag", f"{tag}@client.example", f"{tag}-agc"))
    db.execute("SELECT * FROM pyxp.onboard_agency_client(%s, %s)", (f"{tag}@client.example", f"0x{tag}client"))
    first = db.execute("SELECT id FROM pyxp.xp_transactions WHERE idempotency_key = %s", (f"{tag}-appr-0",)).fetchone()
    assert first is not None
    db.execute("SELECT * FROM pyxp.reverse_transaction(%s, 'test')", (first[0],))


def tampering(rng: random.Random, rows: list[dict[str, Any]], rules: list[tuple[int, str]]) -> tuple[str, tuple[Any, ...]]:
    """One owner's edit of a row or a rule (the triggers are off)."""
    row, other, (rule_id, action) = rng.choice(rows), rng.choice(rows), rng.choice(rules)
    key = (row["id"], row["created_at"])
    where = " WHERE id = %s AND created_at = %s"
    update = "UPDATE pyxp.xp_transactions SET "
    choices: list[tuple[str, tuple[Any, ...]]] = [
        (update + "xp_amount = xp_amount + %s" + where, (rng.choice([-1, 1, 7, 10**6]),) + key),
        (update + "xp_requested = %s" + where,
         (rng.choice([None, 0, row["xp_amount"], -row["xp_amount"], 2 * row["xp_amount"], row["xp_amount"] - 1]),) + key),
        (update + "rule_id = %s" + where, (rng.choice([None, 999999, rule_id, other["rule_id"]]),) + key),
        (update + "transaction_type = %s" + where, (rng.choice([action, "RULES_ADJUSTMENT", "GIFT", other["transaction_type"]]),) + key),
        (update + "user_wallet = %s" + where, (rng.choice(WEIRD + [other["user_wallet"]]),) + key),
        (update + "metadata = jsonb_set(metadata, ARRAY[%s], %s)" + where,
         (rng.choice(["PRICE_COMPLETION", "MINT_VALUE_WINC", "ruleset_id", "zzz"]), Jsonb(rng.choice([0, 1, 12.5, -3, "7", None]))) + key),
        (update + "metadata = %s" + where, (Jsonb(rng.choice([{}, other["metadata"], {"ruleset_id": str(rng.randint(1, 4))}])),) + key),
        (update + "request_digest = %s" + where, (rng.choice([None, rng.randint(-2**63, 2**63 - 1), other["request_digest"]]),) + key),
        (update + "request_digest = pyxp.inputs_digest(jsonb_build_object('action', %s::text, 'params', '{}'::jsonb, 'wallet', %s::text))" + where, (action, other["user_wallet"]) + key),
        (update + "idempotency_key = %s" + where,
         (rng.choice([f"rules.adjustment:{rng.randint(1, 4)}", "rules.adjustment:", f"reverse:{other['id']}", "forged"]),) + key),
        (update + "reverses = %s" + where, (rng.choice([None, other["id"], row["id"]]),) + key),
        (update + "feed_xid = %s" + where, (rng.choice([None, other["feed_xid"], rows[-1]["feed_xid"]]),) + key),
        # the same id again, in another partition
        ("INSERT INTO pyxp.xp_transactions (id, user_wallet, transaction_type, xp_amount, xp_requested, balance_after,"
         " rule_id, idempotency_key, metadata, reverses, created_at, feed_xid, request_digest, wallet_seq)"
         " OVERRIDING SYSTEM VALUE SELECT id, %s, transaction_type, xp_amount, xp_requested, balance_after, rule_id,"
         " idempotency_key, metadata, reverses, %s, feed_xid, request_digest, wallet_seq FROM pyxp.xp_transactions" + where,
         (rng.choice([row["user_wallet"], '0x"dup\\']), rng.choice(["2001-01-01", "2101-01-01"])) + key),
        # the idempotency records: a claim deleted, moved to another row, given another hash, or a
        # second claim naming a row; a flow's or reversal's request deleted
        ("DELETE FROM pyxp.xp_award_claims WHERE transaction_id = %s AND created_at = %s", key),
        ("UPDATE pyxp.xp_award_claims SET transaction_id = %s, created_at = %s WHERE transaction_id = %s",
         (other["id"], other["created_at"], row["id"])),
        ("UPDATE pyxp.xp_award_claims SET key_hash = md5(%s)::uuid WHERE transaction_id = %s", (str(rng.random()), row["id"])),
        ("INSERT INTO pyxp.xp_award_claims (key_hash, transaction_id, created_at) VALUES (md5(%s)::uuid, %s, %s)",
         (str(rng.random()),) + key),
        ("DELETE FROM pyxp.xp_requests WHERE key_hash = pyxp.key_hash(%s)", (row["idempotency_key"],)),
        ("DELETE FROM pyxp.rules WHERE rule_id = %s", (rule_id,)),
        ("UPDATE pyxp.rules SET action = %s WHERE rule_id = %s", (rng.choice(rules)[1], rule_id)),
        ("UPDATE pyxp.rules SET xp_constant = xp_constant + %s WHERE rule_id = %s", (rng.choice([1, 0.5, -0.5]), rule_id)),
        ("UPDATE pyxp.rules SET xp_coefficients = %s WHERE rule_id = %s",
         (Jsonb(rng.choice([{}, {"PRICE_COMPLETION": "1"}, {"zzz": "2"}])), rule_id)),
    ]
    return rng.choice(choices)


def findings(db: psycopg.Connection[Any], function: str, since: bool) -> Counter[tuple[Any, ...]]:
    return Counter(db.execute(f"SELECT * FROM pyxp.{function}(%s)", (since,)).fetchall())


def test_row_problems_finds_what_0041_found(db: psycopg.Connection[Any]) -> None:
    rows_of_every_kind(db, "a")
    install_variant(db, "capped", caps={"CAMPAIGN_APPROVED": (150, "day", None),
                                        "Completion_Submit_B2C_Paid": (60, "day", None)}, balance_floor=0)
    rows_of_every_kind(db, "c")
    bumped = bumped_ruleset(db, 7)
    db.execute("SELECT * FROM pyxp.apply_rules_retroactively(%s)", (bumped,))
    assert db.execute("SELECT * FROM pyxp.record_audit_checkpoint()").fetchone() is not None
    install_variant(db, "floored", balance_floor=-60)
    rows_of_every_kind(db, "n")
    install_0041_body(db)
    kinds = db.execute("SELECT count(*) FILTER (WHERE xp_requested IS NOT NULL), count(*) FILTER (WHERE reverses IS NOT NULL),"
                       " count(*) FILTER (WHERE transaction_type = 'RULES_ADJUSTMENT'),"
                       " count(*) FILTER (WHERE feed_xid >= pyxp.last_checkpoint_xmin()) FROM pyxp.xp_transactions").fetchone()
    assert kinds is not None and all(kinds), kinds  # cuts, reversals, adjustments, rows since the checkpoint
    assert findings(db, "row_problems", False) == findings(db, "row_problems_0041", False) == Counter()

    rules = [(int(r), str(a)) for r, a in db.execute("SELECT rule_id, action FROM pyxp.rules")]
    with db.cursor(row_factory=psycopg.rows.dict_row) as cur:
        rows = cur.execute("SELECT * FROM pyxp.xp_transactions ORDER BY id").fetchall()
    found: Counter[str] = Counter()
    since_found: set[str] = set()
    for seed in range(40):
        rng = random.Random(seed)
        with db.transaction(force_rollback=True):
            db.execute("SET LOCAL session_replication_role = replica")
            db.execute("ALTER TABLE pyxp.xp_transactions DISABLE TRIGGER USER")
            for _ in range(rng.randint(1, 4)):
                statement, params = tampering(rng, rows, rules)
                try:
                    with db.transaction():
                        db.execute(statement, params)
                except psycopg.errors.UniqueViolation:  # a rule's action taken by another rule of its ruleset
                    pass
            for settings in ([], PARALLEL):
                with db.transaction(force_rollback=True):
                    for setting in settings:
                        db.execute("SET LOCAL " + setting)
                    for since in (False, True):
                        new, old = findings(db, "row_problems", since), findings(db, "row_problems_0041", since)
                        # 0043's finding: a row whose form gives NULL (an input missing or null;
                        # 0041 let it through, or said its rule "gives " nothing beside a bad cut)
                        added = Counter({f: n for f, n in new.items() if NULL_FORM in f[3]})
                        nulled = Counter({f: n for f, n in old.items() if f[3].endswith(" gives ")})
                        # 0046's: a row taken for an adjustment (no finding in 0041) or reported otherwise
                        forged = Counter({f: n for f, n in new.items() if FORGED in f[3]})
                        forged_rows = {f[:3] for f in forged}
                        reworded = Counter({f: n for f, n in old.items() if f[0] == "rule_missing" and f[:3] in forged_rows})
                        assert new - added - forged == old - nulled - reworded, (seed, settings, since, new - old,
                                                                                  old - new)
                        found.update("forged_adjustment" for _ in forged)
                        assert {f[2] for f in nulled} <= {f[2] for f in added}, (seed, nulled, added)
                        found.update(name for name, *_ in new - added)
                        found.update("null_form" for _ in added)
                        since_found.update(name for name, *_ in new if since)
    # The tampering reached every check of the rewritten pass, the duplicated ids', and (since the
    # checkpoint too) the claims' and requests' that 0044 probes by key.
    assert {"rule_missing", "rule_mismatch", "amount_mismatch", "inputs_mismatch", "duplicate_id",
            "null_form", "claim_mismatch", "request_missing"} <= set(found), found
    assert {"claim_mismatch", "request_missing"} <= since_found, since_found
