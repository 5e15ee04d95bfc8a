"""Every acceptance figure of the seeds (SPEC section 10), each under the ruleset it names.

The completers document's figures run under the default ruleset ``winstory``
(active in the template database); the flow diagrams' figures under
``winstory-flows``. The Python client plays the completers examples, scenario 1
and the example database state; scenario 2 and the campaign lifecycle are
played as a non-Python service would, with raw SQL in named notation.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from pyxp import XP, schema

# ----------------------------------------------------------------------------- helpers

def assert_audit_clean(db: psycopg.Connection[Any]) -> None:
    """pyxp.audit() finds nothing: every balance is proven by its ledger rows."""
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []


def balance_of(db: psycopg.Connection[Any], wallet: str) -> tuple[int, int, int]:
    """(total_xp, current_level, xp_to_next_level) of a wallet, read from the table."""
    row = db.execute(
        "SELECT total_xp, current_level, xp_to_next_level FROM pyxp.xp_balances WHERE user_wallet = %s",
        (wallet,)).fetchone()
    assert row is not None, f"no balance for {wallet}"
    return tuple(row)  # type: ignore[return-value]


def ledger_sum(db: psycopg.Connection[Any], wallets: list[str]) -> int:
    row = db.execute("SELECT coalesce(sum(xp_amount), 0) FROM pyxp.xp_transactions "
                     "WHERE user_wallet = ANY(%s)", (wallets,)).fetchone()
    assert row is not None
    return int(row[0])


def active_ruleset_name(db: psycopg.Connection[Any]) -> str:
    row = db.execute("SELECT name FROM pyxp.rulesets WHERE is_active").fetchone()
    assert row is not None
    return str(row[0])


@pytest.fixture
def flows(conninfo: str, db: psycopg.Connection[Any]) -> str:
    """Switch this test's database to the ``winstory-flows`` ruleset."""
    schema.apply_ruleset(conninfo, "winstory-flows")
    assert active_ruleset_name(db) == "winstory-flows"
    return conninfo


def test_template_database_runs_the_default_ruleset(db: psycopg.Connection[Any]) -> None:
    """The completers figures below rely on ``winstory`` being active."""
    assert active_ruleset_name(db) == "winstory"


# ----------------------------------------------------------------------------- xp-completers, examples 1-5
# Seed: "Exemples d'Utilisation" 1 to 5, one POST /api/xp/award-completion each.

COMPLETERS_EXAMPLES = [
    pytest.param({"campaign_type": "B2C", "is_paid": False},
                 "Completion_Submit_B2C_Free", 100, id="1-b2c-free-submission"),
    pytest.param({"campaign_type": "B2C", "is_paid": True, "price_completion": 500},
                 "Completion_Submit_B2C_Paid", 600, id="2-b2c-paid-500-submission"),
    pytest.param({"campaign_type": "B2C", "is_validated": True},
                 "Completion_Validated_B2C", 100, id="3-validation"),
    pytest.param({"campaign_type": "B2C", "is_refused": True},
                 "Completion_Refused_B2C", -50, id="4-refusal"),
    pytest.param({"campaign_type": "INDIVIDUAL", "mint_value_winc": 2000},
                 "Completion_Submit_Individual", 2000, id="5-individual-2000-winc-submission"),
]


@pytest.mark.parametrize(("call", "action", "amount"), COMPLETERS_EXAMPLES)
def test_completers_example(xp: XP, db: psycopg.Connection[Any], call: dict[str, Any],
                            action: str, amount: int) -> None:
    award = xp.award_completion(completer_wallet="0xabc", campaign_id="camp_123",
                                completion_id="comp_456", **call)
    assert award.transaction_types == [action]
    assert award.xp == amount
    assert award.total_xp == amount
    assert award.replayed is False
    assert xp.balance("0xabc").total_xp == amount
    assert_audit_clean(db)


# ----------------------------------------------------------------------------- xp-completers, scenario 1
# B2C paid completion (300 USD), 3 moderators vote VALID, final validation:
# completer +400 then +100 = +500; moderators 3 x +2 = +6.

def test_completers_scenario_1_paid_b2c_completion_validated(xp: XP, db: psycopg.Connection[Any]) -> None:
    moderators = ["0xmod1", "0xmod2", "0xmod3"]

    submitted = xp.award_completion(completer_wallet="0xabc", campaign_id="camp_001",
                                    completion_id="comp_001", campaign_type="B2C",
                                    is_paid=True, price_completion=300)
    assert (submitted.transaction_types, submitted.xp) == (["Completion_Submit_B2C_Paid"], 400)

    for moderator in moderators:
        vote = xp.award_completion_moderation(moderator, "camp_001", "comp_001",
                                              campaign_type="B2C", vote_decision="VALID")
        assert (vote.transaction_types, vote.xp) == (["Completion_Moderation_Validated"], 2)

    validated = xp.award_completion(completer_wallet="0xabc", campaign_id="camp_001",
                                    completion_id="comp_001", campaign_type="B2C", is_validated=True)
    assert (validated.transaction_types, validated.xp) == (["Completion_Validated_B2C"], 100)

    assert xp.balance("0xabc").total_xp == 500                                   # TOTAL COMPLÉTEUR
    assert sum(xp.balance(m).total_xp for m in moderators) == 6                  # TOTAL MODÉRATEURS
    assert ledger_sum(db, moderators) == 6
    assert all(xp.balance(m).total_moderations == 1 for m in moderators)
    assert_audit_clean(db)


# ----------------------------------------------------------------------------- xp-completers, scenario 2
# INDIVIDUAL completion (5000 WINC), votes 2 VALID 3 REFUSE, refused with the
# MINT value: completer +5000 - 2500 = +2500; moderators 4 - 3 = +1 combined.
# Played as a service would: raw SQL, named notation.

def test_completers_scenario_2_individual_completion_refused(db: psycopg.Connection[Any]) -> None:
    submitted = db.execute(
        """SELECT transaction_type, xp_amount, total_xp FROM pyxp.award_completion(
               completer_wallet => '0xdef', campaign_id => 'camp_002', completion_id => 'comp_002',
               campaign_type => 'INDIVIDUAL', mint_value_winc => 5000)""").fetchall()
    assert submitted == [("Completion_Submit_Individual", 5000, 5000)]

    votes = [("0xmod1", "VALID"), ("0xmod2", "VALID"),
             ("0xmod3", "REFUSE"), ("0xmod4", "REFUSE"), ("0xmod5", "REFUSE")]
    for moderator, decision in votes:
        row = db.execute(
            """SELECT transaction_type, xp_amount FROM pyxp.award_completion_moderation(
                   moderator_wallet => %(moderator)s, campaign_id => 'camp_002', completion_id => 'comp_002',
                   campaign_type => 'INDIVIDUAL', vote_decision => %(decision)s)""",
            {"moderator": moderator, "decision": decision}).fetchall()
        assert row == ([("Completion_Moderation_Validated", 2)] if decision == "VALID"
                       else [("Completion_Moderation_Refused", -1)])

    refused = db.execute(
        """SELECT transaction_type, xp_amount, total_xp FROM pyxp.award_completion(
               completer_wallet => '0xdef', campaign_id => 'camp_002', completion_id => 'comp_002',
               campaign_type => 'INDIVIDUAL', is_refused => true, mint_value_winc => 5000)""").fetchall()
    assert refused == [("Completion_Refused_Individual", -2500, 2500)]

    assert balance_of(db, "0xdef")[0] == 2500                                    # TOTAL COMPLÉTEUR
    moderators = [m for m, _ in votes]
    assert ledger_sum(db, moderators) == 1                                       # TOTAL MODÉRATEURS (4 - 3)
    # Penalties apply in full: a REFUSE-only moderator sits below zero.
    assert balance_of(db, "0xmod3")[0] == -1
    assert_audit_clean(db)


# ------------------------------------------------------------------------- xp-flow-diagrams, example state
# "État de la Base de Données (Exemple)", under winstory-flows. The seed's
# "latest 5 transactions" end with the creator's OPTION_NO_REWARDS and contain
# none of the agency's rows, so the agency created its campaign (and
# registered its client) first; the client signed in last ("days or weeks
# later").

def play_example_state(xp: XP) -> None:
    """The seed's actions, in order."""
    xp.award_campaign_creation("0x_agency", "campaign_agency", "AGENCY_B2C", no_rewards=True)
    xp.register_agency_client("0x_agency", "client@example.com", "campaign_agency",
                              company_name="Client Corp")
    xp.award_campaign_creation("0x_creator", "campaign_123", "B2C", mint_value=1000,
                               winstory_creates_video=True, no_rewards=True)
    xp.award_moderation_vote("0x_moderator", "campaign_123", "VALID", campaign_type="B2C")
    xp.award_completion("0x_completer", "campaign_123", "completion_1")
    xp.award_completion("0x_completer", "campaign_123", "completion_1", is_validated=True)
    xp.onboard_agency_client("client@example.com", "0x_client")


EXAMPLE_BALANCES = [
    # wallet, total_xp, level, xp to next level (SPEC: the agency row reads "2000 to lvl 7")
    pytest.param("0x_creator", 2500, 6, 1500, id="creator"),
    pytest.param("0x_moderator", 2, 1, 98, id="moderator"),
    pytest.param("0x_completer", 110, 2, 140, id="completer"),
    pytest.param("0x_agency", 2000, 6, 2000, id="agency"),
    pytest.param("0x_client", 1000, 5, 1000, id="client"),
]


@pytest.mark.parametrize(("wallet", "total_xp", "level", "to_next"), EXAMPLE_BALANCES)
def test_flow_diagrams_example_balance(flows: str, xp: XP, db: psycopg.Connection[Any], wallet: str,
                                       total_xp: int, level: int, to_next: int) -> None:
    play_example_state(xp)
    assert balance_of(db, wallet) == (total_xp, level, to_next)
    balance = xp.balance(wallet)
    assert (balance.total_xp, balance.current_level, balance.xp_to_next_level) == (total_xp, level, to_next)
    assert_audit_clean(db)


def test_flow_diagrams_example_has_exactly_the_five_seed_wallets(flows: str, xp: XP,
                                                                 db: psycopg.Connection[Any]) -> None:
    play_example_state(xp)
    wallets = [r[0] for r in db.execute("SELECT user_wallet FROM pyxp.xp_balances ORDER BY 1")]
    assert wallets == sorted(p.values[0] for p in EXAMPLE_BALANCES)


def test_flow_diagrams_creation_call_levels_the_creator_from_1_to_6(flows: str, xp: XP,
                                                                    db: psycopg.Connection[Any]) -> None:
    """Seed: B2C_MINT +1000, video +500, no rewards +1000 = +2500; level 1 -> 6, 1500 to go."""
    creation = xp.award_campaign_creation("0x_creator", "campaign_123", "B2C", mint_value=1000,
                                          winstory_creates_video=True, no_rewards=True)
    assert creation.transaction_types == ["B2C_MINT", "OPTION_WINSTORY_VIDEO", "OPTION_NO_REWARDS"]
    assert [row.xp_amount for row in creation.rows] == [1000, 500, 1000]
    assert creation.xp == 2500
    assert (creation.level_before, creation.level_after) == (1, 6)
    assert creation.leveled_up
    assert creation.xp_to_next_level == 1500
    assert_audit_clean(db)


def test_flow_diagrams_example_latest_five_transactions(flows: str, xp: XP,
                                                        db: psycopg.Connection[Any]) -> None:
    play_example_state(xp)
    latest = db.execute("""SELECT user_wallet, transaction_type, xp_amount
                             FROM pyxp.xp_transactions ORDER BY id DESC LIMIT 5""").fetchall()
    assert latest == [
        ("0x_client", "B2C_CLIENT_ONBOARDED", 1000),
        ("0x_completer", "COMPLETION_100_VALIDATED", 100),
        ("0x_completer", "COMPLETION_SUBMITTED", 10),
        ("0x_moderator", "MODERATION_VALIDATED_BY_MODERATOR", 2),
        ("0x_creator", "OPTION_NO_REWARDS", 1000),
    ]
    onboarded = db.execute("""SELECT metadata ->> 'agency_wallet' FROM pyxp.xp_transactions
                               WHERE transaction_type = 'B2C_CLIENT_ONBOARDED'""").fetchall()
    assert onboarded == [("0x_agency",)]
    assert_audit_clean(db)


# ----------------------------------------------------------------------------- xp-flow-diagrams, lifecycle
# "Cycle de Vie d'une Campagne avec XP", under winstory-flows, as raw SQL:
# creation +2500; 22 moderators (15 VALID, 7 REFUSE) +23; approval -> creator
# 2600; 50 submissions x +10 and 10 validations x +100 -> completers 1500;
# grand total 4123.

def test_flow_diagrams_campaign_lifecycle(flows: str, db: psycopg.Connection[Any]) -> None:
    creation = db.execute(
        """SELECT sum(xp_amount), max(total_xp) FROM pyxp.award_campaign_creation(
               creator_wallet => '0x_creator', campaign_id => 'campaign_lifecycle', campaign_type => 'B2C',
               mint_value => 1000, winstory_creates_video => true, no_rewards => true)""").fetchone()
    assert creation == (2500, 2500)

    moderators = [f"0x_moderator_{i:02d}" for i in range(22)]
    for i, moderator in enumerate(moderators):
        db.execute("""SELECT * FROM pyxp.award_moderation_vote(
                          moderator_wallet => %(moderator)s, campaign_id => 'campaign_lifecycle',
                          vote_decision => %(decision)s)""",
                   {"moderator": moderator, "decision": "VALID" if i < 15 else "REFUSE"})
    assert ledger_sum(db, moderators) == 23                                      # +23 XP combined

    approval = db.execute(
        "SELECT user_wallet, transaction_type, xp_amount, total_xp "
        "FROM pyxp.award_campaign_approval(campaign_id => 'campaign_lifecycle')").fetchall()
    assert approval == [("0x_creator", "CAMPAIGN_APPROVED", 100, 2600)]        # Creator: +2600

    completers = [f"0x_completer_{i:02d}" for i in range(50)]
    for i, completer in enumerate(completers):
        db.execute("""SELECT * FROM pyxp.award_completion(
                          completer_wallet => %(completer)s, campaign_id => 'campaign_lifecycle',
                          completion_id => %(completion)s)""",
                   {"completer": completer, "completion": f"completion_{i:02d}"})
    assert ledger_sum(db, completers) == 500                                     # 50 x +10
    for i, completer in enumerate(completers[:10]):
        db.execute("""SELECT * FROM pyxp.award_completion(
                          completer_wallet => %(completer)s, campaign_id => 'campaign_lifecycle',
                          completion_id => %(completion)s, is_validated => true)""",
                   {"completer": completer, "completion": f"completion_{i:02d}"})
    assert ledger_sum(db, completers) == 1500                                    # +1500 combined

    assert balance_of(db, "0x_creator")[0] == 2600
    totals = db.execute("""SELECT (SELECT sum(xp_amount) FROM pyxp.xp_transactions),
                                  (SELECT sum(total_xp) FROM pyxp.xp_balances),
                                  (SELECT count(*) FROM pyxp.xp_transactions)""").fetchone()
    # GRAND TOTAL 4123 = sum of every ledger row = sum of every balance;
    # rows: 3 creation + 22 votes + 1 approval + 50 submissions + 10 validations.
    assert totals == (4123, 4123, 86)
    moderations = db.execute("SELECT sum(total_moderations) FROM pyxp.xp_balances").fetchone()
    assert moderations == (22,)
    assert_audit_clean(db)


# ----------------------------------------------------------------------------- rules are data

def test_switching_ruleset_changes_what_a_completion_earns_without_code(conninfo: str, xp: XP,
                                                                        db: psycopg.Connection[Any]) -> None:
    """SPEC section 2: the same call earns +100 under winstory, +10 under winstory-flows."""
    def submit(completion_id: str) -> Any:
        return xp.award_completion("0x_completer", "camp_123", completion_id, campaign_type="B2C")

    under_winstory = submit("comp_before_switch")
    assert (under_winstory.transaction_types, under_winstory.xp) == (["Completion_Submit_B2C_Free"], 100)

    schema.apply_ruleset(conninfo, "winstory-flows")
    under_flows = submit("comp_after_switch")
    assert (under_flows.transaction_types, under_flows.xp) == (["COMPLETION_SUBMITTED"], 10)

    assert xp.balance("0x_completer").total_xp == 110
    # The earlier row keeps the rule that produced it.
    rules = db.execute("""SELECT t.subject, r.action, rs.name FROM pyxp.xp_transactions t
                            JOIN pyxp.rules r ON r.rule_id = t.rule_id
                            JOIN pyxp.rulesets rs ON rs.ruleset_id = r.ruleset_id
                           ORDER BY t.id""").fetchall()
    assert rules == [("comp_before_switch", "Completion_Submit_B2C_Free", "winstory"),
                     ("comp_after_switch", "COMPLETION_SUBMITTED", "winstory-flows")]
    assert_audit_clean(db)
