"""Model test: a seeded random workload from 16 connections never loses or doubles XP.

SPEC §4 "Atomicity" (concurrent calls on the same wallet or key never lose or
double an award), "Idempotency" (first call with a key wins, the same inputs
replay, other inputs are refused and write nothing), "Append-only"
(a row is reversed once, by a row of the opposite amount).

16 threads, each with its own connection and its own random.Random(seed), mix
every award function over 5 wallets and ~40 idempotency keys so that calls
collide: first calls race, replays, conflicting replays (other inputs),
reversals (and reversals of reversals), small award_many batches (with
repeated keys inside a batch), agency registrations and onboardings.

The workload runs under a variant of the default rules with caps (SPEC §12,
``CAPS``): the moderation votes share a daily allowance (their penalty in the
group too), a campaign's creation rows another, CAMPAIGN_APPROVED and
Completion_Submit_B2C_Paid have their own (a day, a week). Concurrent gains of
one wallet are cut, in part or to 0, and reversals free what they applied.

The model does not re-implement the rules engine. It knows:
  * the oracle table: the XP of the handful of SPEC §2 actions used here (the
    amount a rule requests; a cap may cut a gain to less);
  * the caps: a wallet's rows are appended under its balance row lock in id
    order, so replaying the ledger per wallet in id order from the requested
    amounts gives exactly what each capped gain had left (``replay_caps``);
  * which inputs each call carried (a "variant" of its key: 0 = the usual
    inputs, 1 = deliberately other inputs);
  * what the database acknowledged. Concurrent first calls race, so the call
    that got ``replayed = false`` for a key is taken as the winner.
It then checks, from the acknowledged calls alone: every balance, every ledger
row (requested and applied amounts), every key, the allowances used, the
moderation counts, the campaign registry, the agency client rows, and that
every refusal was a real conflict.
"""

from __future__ import annotations

import random
import sys
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from conftest import install_variant

pytestmark = pytest.mark.slow

BASE_SEED = 20_240_611
THREADS = 16
OPS_PER_THREAD = 60
CONFLICT_RATE = 0.15  # share of calls sent with other inputs than their key's usual ones

# --------------------------------------------------------------------------- oracle (SPEC §2)


def half_away(value: Decimal) -> int:
    """SPEC §2: a formula result is rounded to the nearest integer, halves away from zero."""
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))  # ROUND_HALF_UP = away from zero


def number(params: Mapping[str, Any], name: str) -> Decimal:
    return Decimal(str(params[name]))


# The XP of every action this workload can produce, as SPEC §2 states it for `winstory`.
ORACLE_XP: dict[str, Callable[[Mapping[str, Any]], int]] = {
    "B2C_MINT": lambda p: 1000,
    "AGENCY_B2C_MINT": lambda p: 1000,
    "OPTION_WINSTORY_VIDEO": lambda p: 500,
    "OPTION_NO_REWARDS": lambda p: 1000,
    "CAMPAIGN_APPROVED": lambda p: 100,
    "MODERATION_VALIDATED_BY_MODERATOR": lambda p: 2,
    "MODERATION_REFUSED_BY_MODERATOR": lambda p: -1,
    "Completion_Submit_B2C_Free": lambda p: 100,
    "Completion_Submit_B2C_Paid": lambda p: half_away(100 + number(p, "PRICE_COMPLETION")),
    "Completion_Validated_B2C": lambda p: 100,
    "Completion_Refused_B2C": lambda p: -50,
    "Completion_Submit_Agency_Free": lambda p: 100,
    "Completion_Submit_Agency_Paid": lambda p: half_away(100 + number(p, "PRICE_COMPLETION")),
    "Completion_Validated_Agency": lambda p: 100,
    "Completion_Refused_Agency": lambda p: -50,
    "Completion_Submit_Individual": lambda p: half_away(number(p, "MINT_VALUE_WINC")),
    "Completion_Validated_Individual": lambda p: 100,
    "Completion_Refused_Individual": lambda p: half_away(-number(p, "MINT_VALUE_WINC") / 2),
    "Completion_Moderation_Validated": lambda p: 2,
    "Completion_Moderation_Refused": lambda p: -1,
    "B2C_CLIENT_ONBOARDED": lambda p: 1000,
}

# SPEC §2: which action a completion call earns, by (campaign type, event[, paid]).
COMPLETION_ACTION = {
    ("B2C", "submitted", False): "Completion_Submit_B2C_Free",
    ("B2C", "submitted", True): "Completion_Submit_B2C_Paid",
    ("B2C", "validated"): "Completion_Validated_B2C",
    ("B2C", "refused"): "Completion_Refused_B2C",
    ("AGENCY_B2C", "submitted", False): "Completion_Submit_Agency_Free",
    ("AGENCY_B2C", "submitted", True): "Completion_Submit_Agency_Paid",
    ("AGENCY_B2C", "validated"): "Completion_Validated_Agency",
    ("AGENCY_B2C", "refused"): "Completion_Refused_Agency",
    ("INDIVIDUAL", "submitted", False): "Completion_Submit_Individual",
    ("INDIVIDUAL", "validated"): "Completion_Validated_Individual",
    ("INDIVIDUAL", "refused"): "Completion_Refused_Individual",
}
VOTE_ACTION = {
    ("campaign", "VALID"): "MODERATION_VALIDATED_BY_MODERATOR",
    ("campaign", "REFUSE"): "MODERATION_REFUSED_BY_MODERATOR",
    ("completion", "VALID"): "Completion_Moderation_Validated",
    ("completion", "REFUSE"): "Completion_Moderation_Refused",
}


# --------------------------------------------------------------------------- caps (SPEC §12)

# The ruleset the workload runs under: the default rules with these caps (action -> max_xp, per, group),
# periods in TIMEZONE. Chosen so that the workload's wallets overrun them, whatever the timing:
#   * creating camp-b2c-0 (either variant) writes B2C_MINT 1000 then an option in the same "creation"
#     allowance: the option is cut to 0 within the call;
#   * every Completion_Submit_B2C_Paid asks for more than 100 (W[4] gets two: 350 or 360, 113 or 400):
#     the first in the week is cut in part, the next (unless the first was reversed) to 0;
#   * a moderator votes VALID 2 or 3 times (+2 each; penalties share the group): the second is cut to 1,
#     the third to 0; CAMPAIGN_APPROVED reaches W[0] and W[2] twice: the second is cut to 0;
#   * reversals (of nearly every row, by the end) free what those gains applied, and later gains use it.
TIMEZONE = "Europe/Paris"
CAPS: dict[str, tuple[int, str, str | None]] = {
    "MODERATION_VALIDATED_BY_MODERATOR": (3, "day", "moderation"),
    "Completion_Moderation_Validated": (3, "day", "moderation"),
    "MODERATION_REFUSED_BY_MODERATOR": (3, "day", "moderation"),  # a penalty: never cut, frees nothing
    "CAMPAIGN_APPROVED": (100, "day", None),
    "Completion_Submit_B2C_Paid": (100, "week", None),
    "B2C_MINT": (1000, "day", "creation"),
    "OPTION_WINSTORY_VIDEO": (1000, "day", "creation"),
    "OPTION_NO_REWARDS": (1000, "day", "creation"),
}
CAPS_PER = {f"group:{group}" if group else f"rule:{action}": per for action, (_, per, group) in CAPS.items()}
# wallet, allowance ('group:<name>' or 'rule:<action>'), first local day of the period
Allowance = tuple[str, str, date]


def period_start(per: str, at: datetime) -> date:
    """The first local day of the calendar period ``per`` containing ``at`` in TIMEZONE (ISO weeks)."""
    day = at.astimezone(ZoneInfo(TIMEZONE)).date()
    return {"day": day, "week": day - timedelta(days=day.weekday()), "month": day.replace(day=1),
            "year": day.replace(month=1, day=1)}[per]


def allowance_of(row: Mapping[str, Any]) -> Allowance:
    """The allowance a row of a capped rule counts in: its wallet's, for its rule or group, in its period."""
    _, per, group = CAPS[row["transaction_type"]]
    name = f"group:{group}" if group else f"rule:{row['transaction_type']}"
    return row["user_wallet"], name, period_start(per, row["created_at"])


def replay_caps(ledger: Mapping[int, Mapping[str, Any]],
                requested: Mapping[int, int]) -> tuple[Counter[Allowance], list[str]]:
    """Applies the caps again to the ledger, in id order (per wallet, the order its rows were appended under
    its lock), from the oracle's requested amount of each row (``requested``: id -> amount; a reversal:
    minus what its target applied). Returns what each allowance used and every disagreement:

    * a capped gain applies min(requested, what is left of its allowance in the period of its created_at),
      records xp_requested = requested when cut (else NULL); a row cut to 0 is a row like any other;
    * anything else (penalties of a capped rule included) applies its requested amount, xp_requested NULL,
      and uses nothing;
    * a reversal of a capped gain frees what the gain applied, in the gain's period;
    * no allowance ever holds more than its cap.

    Usage grows by the stored amounts, so one wrong cut is reported once, not as a shift of every later row.
    """
    used: Counter[Allowance] = Counter()
    problems: list[str] = []
    for row_id in sorted(ledger):
        row, want = ledger[row_id], requested[row_id]
        expected: tuple[int, int | None] = (want, None)
        if row["reverses"] is not None:
            gain = ledger[row["reverses"]]
            if gain["transaction_type"] in CAPS and gain["xp_amount"] > 0:
                used[allowance_of(gain)] -= gain["xp_amount"]
        elif row["transaction_type"] in CAPS and want > 0:
            allowance, max_xp = allowance_of(row), CAPS[row["transaction_type"]][0]
            applied = min(want, max(max_xp - used[allowance], 0))
            expected = (applied, want if applied < want else None)
            used[allowance] += row["xp_amount"]
            if not 0 <= used[allowance] <= max_xp:
                problems.append(f"row {row_id}: {allowance} at {used[allowance]} XP, cap {max_xp}")
        if (row["xp_amount"], row["xp_requested"]) != expected:
            problems.append(f"row {row_id} ({row['user_wallet']}, {row['transaction_type']}): applied, "
                            f"requested {(row['xp_amount'], row['xp_requested'])}, expected {expected}")
    return used, problems


def oracle_rows(*actions: str, params: Mapping[str, Any] | None = None) -> tuple[tuple[str, int], ...]:
    return tuple((action, ORACLE_XP[action](params or {})) for action in actions)


# --------------------------------------------------------------------------- the world

W = [f"0x_model_{name}" for name in ("ana", "ben", "chloe", "dan", "eve")]
AGENCY = W[0]

# Campaign id: type, creator, (winstory_creates_video, no_rewards) of variant 0 and of variant 1.
CAMPAIGNS = {
    "camp-b2c-0": ("B2C", W[1], (True, True), (True, False)),
    "camp-b2c-1": ("B2C", W[2], (False, False), (True, False)),
    "camp-agency-0": ("AGENCY_B2C", AGENCY, (False, True), (False, False)),
    "camp-ind-0": ("INDIVIDUAL", W[3], (False, False), (True, False)),
}
# (campaign, moderator): the usual decision (variant 1 votes the other one).
CAMPAIGN_VOTES = {
    ("camp-b2c-0", W[2]): "VALID", ("camp-b2c-0", W[3]): "REFUSE", ("camp-b2c-0", W[4]): "VALID",
    ("camp-agency-0", W[1]): "VALID", ("camp-agency-0", W[4]): "REFUSE", ("camp-ind-0", W[0]): "VALID",
}
# Completion id: campaign, submission kwargs of variant 0 and variant 1 (another wallet,
# another price, another MINT value), and the usual outcome (variant 1: the other one).
COMPLETIONS: dict[str, tuple[str, tuple[dict[str, Any], dict[str, Any]], str]] = {
    "cpl-b2c-free": ("camp-b2c-1", ({"completer_wallet": W[3]}, {"completer_wallet": W[4]}), "validated"),
    "cpl-b2c-paid": ("camp-b2c-0", (
        {"completer_wallet": W[4], "is_paid": True, "price_completion": Decimal("12.5")},
        {"completer_wallet": W[4], "is_paid": True, "price_completion": Decimal("300")}), "refused"),
    "cpl-agency-paid": ("camp-agency-0", (
        {"completer_wallet": W[2], "is_paid": True, "price_completion": Decimal("250")},
        {"completer_wallet": W[2], "is_paid": True, "price_completion": Decimal("251")}), "validated"),
    "cpl-ind": ("camp-ind-0", (
        {"completer_wallet": W[1], "mint_value_winc": Decimal("4999")},
        {"completer_wallet": W[1], "mint_value_winc": Decimal("2000")}), "refused"),
}
COMPLETION_VOTES = {
    ("cpl-b2c-paid", W[0]): "VALID", ("cpl-b2c-paid", W[1]): "REFUSE",
    ("cpl-ind", W[2]): "VALID", ("cpl-ind", W[4]): "REFUSE",
}
# Generic awards (pyxp.award and award_many): key -> action, (wallet, params) of variants 0 and 1.
GENERIC: dict[str, tuple[str, tuple[tuple[str, dict[str, int]], tuple[str, dict[str, int]]]]] = {
    "model:g0": ("CAMPAIGN_APPROVED", ((W[0], {}), (W[1], {}))),
    "model:g1": ("CAMPAIGN_APPROVED", ((W[2], {}), (W[3], {}))),
    "model:g2": ("MODERATION_REFUSED_BY_MODERATOR", ((W[1], {}), (W[4], {}))),
    "model:g3": ("MODERATION_REFUSED_BY_MODERATOR", ((W[3], {}), (W[0], {}))),
    "model:g4": ("Completion_Submit_B2C_Paid", ((W[4], {"PRICE_COMPLETION": 250}),
                                                (W[4], {"PRICE_COMPLETION": 260}))),
    "model:g5": ("Completion_Submit_B2C_Paid", ((W[0], {"PRICE_COMPLETION": 1}),
                                                (W[2], {"PRICE_COMPLETION": 1}))),
    "model:g6": ("Completion_Refused_Individual", ((W[2], {"MINT_VALUE_WINC": 3001}),
                                                   (W[2], {"MINT_VALUE_WINC": 3003}))),
    "model:g7": ("Completion_Refused_Individual", ((W[3], {"MINT_VALUE_WINC": 7}),
                                                   (W[1], {"MINT_VALUE_WINC": 7}))),
    "model:g8": ("Completion_Moderation_Validated", ((W[1], {}), (W[2], {}))),
    "model:g9": ("OPTION_WINSTORY_VIDEO", ((W[4], {}), (W[3], {}))),
}
# Client email: the client wallet of variant 0 and variant 1 (never the agency's).
CLIENTS = {"client-a@example.com": (W[1], W[2]), "client-b@example.com": (W[3], W[4])}
AGENCY_CAMPAIGNS = ("camp-agency-0", "camp-agency-ext")  # the second one pyxp never hears of
REASONS = ("model: duplicate award", "model: fraud")

# --------------------------------------------------------------------------- SQL

SQL = {
    "award": """SELECT * FROM pyxp.award(wallet => %(wallet)s, action => %(action)s,
                                        idempotency_key => %(key)s, params => %(params)s)""",
    "award_many": "SELECT * FROM pyxp.award_many(events => %(events)s)",
    "award_campaign_creation": """SELECT * FROM pyxp.award_campaign_creation(
        creator_wallet => %(creator_wallet)s, campaign_id => %(campaign_id)s,
        campaign_type => %(campaign_type)s, winstory_creates_video => %(winstory_creates_video)s,
        no_rewards => %(no_rewards)s)""",
    "award_campaign_approval": """SELECT * FROM pyxp.award_campaign_approval(
        campaign_id => %(campaign_id)s, creator_wallet => %(creator_wallet)s)""",
    "award_moderation_vote": """SELECT * FROM pyxp.award_moderation_vote(
        moderator_wallet => %(moderator_wallet)s, campaign_id => %(campaign_id)s,
        vote_decision => %(vote_decision)s, campaign_type => %(campaign_type)s)""",
    "award_completion": """SELECT * FROM pyxp.award_completion(
        completer_wallet => %(completer_wallet)s, campaign_id => %(campaign_id)s,
        completion_id => %(completion_id)s, campaign_type => %(campaign_type)s,
        is_validated => %(is_validated)s, is_refused => %(is_refused)s, is_paid => %(is_paid)s,
        price_completion => %(price_completion)s::numeric,
        mint_value_winc => %(mint_value_winc)s::numeric)""",
    "award_completion_moderation": """SELECT * FROM pyxp.award_completion_moderation(
        moderator_wallet => %(moderator_wallet)s, campaign_id => %(campaign_id)s,
        completion_id => %(completion_id)s, vote_decision => %(vote_decision)s,
        campaign_type => %(campaign_type)s)""",
    "register_agency_client": """SELECT * FROM pyxp.register_agency_client(
        agency_wallet => %(agency_wallet)s, client_email => %(client_email)s,
        campaign_id => %(campaign_id)s, company_name => %(company_name)s)""",
    "onboard_agency_client": """SELECT * FROM pyxp.onboard_agency_client(
        client_email => %(client_email)s, client_wallet => %(client_wallet)s)""",
    "reverse_transaction": """SELECT * FROM pyxp.reverse_transaction(
        transaction_id => %(transaction_id)s, reason => %(reason)s)""",
}
EXPECTED_REFUSALS = {"PX010", "PX014"}  # conflicting replays; a second reversal / reversing a reversal
# A completion belongs to the completer of its first call (SPEC 4): the variant naming another
# completer is refused with PX011 when the other wallet's call came first.
OWNERSHIP_REFUSALS = {("award_completion", "PX011")}
REPEATABLE_READ_RATE = 0.08

# --------------------------------------------------------------------------- calls


@dataclass(frozen=True)
class Event:
    """One idempotent unit of a call: its key, which inputs it carried, what the oracle says it writes."""

    key: str
    variant: Any
    wallet: str
    expected: tuple[tuple[str, int], ...]  # (transaction_type, requested XP) of its ledger rows
    moderations: int = 0
    reverses: int | None = None
    may_do_nothing: bool = False  # onboarding before any registration: no rows, key not claimed


@dataclass
class Call:
    fn: str
    args: dict[str, Any]
    events: list[Event] = field(default_factory=list)  # award_many: one per batch event, in order
    must_refuse: str | None = None  # refused whatever the timing: reversal of a reversal, batch's own conflict
    rows: list[list[dict[str, Any]]] | None = None  # acknowledged: result rows per event
    registration: dict[str, Any] | None = None  # acknowledged register_agency_client row
    sqlstate: str | None = None
    error: str | None = None
    repeatable_read: bool = False  # called inside a REPEATABLE READ transaction: refused (PX025)

    @property
    def acknowledged(self) -> bool:
        return self.error is None


class Workload:
    """Builds random calls; shares the acknowledged transactions (targets of reversals) between threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._transactions: list[tuple[int, str, str, int]] = []  # id, wallet, type, amount

    def acknowledged(self, call: Call) -> None:
        fresh = [(r["transaction_id"], r["user_wallet"], r["transaction_type"], r["xp_amount"])
                 for rows in call.rows or [] for r in rows if not r["replayed"]]
        with self._lock:
            self._transactions.extend(fresh)

    def next_call(self, rng: random.Random) -> Call:
        kinds = {self.award: 12, self.batch: 8, self.creation: 7, self.approval: 4, self.campaign_vote: 10,
                 self.completion: 14, self.completion_vote: 8, self.registration: 6, self.onboarding: 8,
                 self.reversal: 14}
        return rng.choices(list(kinds), weights=list(kinds.values()))[0](rng)

    @staticmethod
    def variant(rng: random.Random) -> int:
        return 1 if rng.random() < CONFLICT_RATE else 0

    @staticmethod
    def generic_event(key: str, variant: int) -> tuple[Event, dict[str, Any]]:
        action, variants = GENERIC[key]
        wallet, params = variants[variant]
        event = Event(key, variant, wallet, oracle_rows(action, params=params))
        return event, {"wallet": wallet, "action": action, "idempotency_key": key, "params": params}

    def award(self, rng: random.Random) -> Call:
        event, item = self.generic_event(rng.choice(list(GENERIC)), self.variant(rng))
        return Call("award", {"wallet": item["wallet"], "action": item["action"],
                              "key": item["idempotency_key"], "params": Jsonb(item["params"])}, [event])

    def batch(self, rng: random.Random) -> Call:
        """2-4 generic awards; sometimes a key twice in the batch (same inputs: replays its first
        occurrence; other inputs: the batch's own conflict, always refused)."""
        keys = rng.sample(list(GENERIC), rng.randint(2, 4))
        picked = [self.generic_event(key, self.variant(rng)) for key in keys]
        must_refuse = None
        if rng.random() < 0.3:
            event, _ = rng.choice(picked)
            variant = event.variant if rng.random() < 0.85 else 1 - event.variant
            picked.append(self.generic_event(event.key, variant))
            must_refuse = "PX010" if variant != event.variant else None
        return Call("award_many", {"events": Jsonb([item for _, item in picked])},
                    [event for event, _ in picked], must_refuse)

    def creation(self, rng: random.Random) -> Call:
        campaign = rng.choice(list(CAMPAIGNS))
        kind, creator, *options = CAMPAIGNS[campaign]
        variant = self.variant(rng)
        video, no_rewards = options[variant]
        actions = {"B2C": ["B2C_MINT"], "AGENCY_B2C": ["AGENCY_B2C_MINT"], "INDIVIDUAL": []}[kind]
        if kind != "INDIVIDUAL":  # options are B2C / AGENCY_B2C rules; INDIVIDUAL creation earns nothing
            actions += ["OPTION_WINSTORY_VIDEO"] * video + ["OPTION_NO_REWARDS"] * no_rewards
        event = Event(f"campaign.created:{campaign}", variant, creator, oracle_rows(*actions))
        return Call("award_campaign_creation", {
            "creator_wallet": creator, "campaign_id": campaign, "campaign_type": kind,
            "winstory_creates_video": video, "no_rewards": no_rewards}, [event])

    def approval(self, rng: random.Random) -> Call:
        campaign = rng.choice(list(CAMPAIGNS))
        creator = CAMPAIGNS[campaign][1]
        event = Event(f"campaign.approved:{campaign}", 0, creator, oracle_rows("CAMPAIGN_APPROVED"))
        return Call("award_campaign_approval", {"campaign_id": campaign, "creator_wallet": creator}, [event])

    @staticmethod
    def vote(usual: str, variant: int) -> str:
        return usual if variant == 0 else {"VALID": "REFUSE", "REFUSE": "VALID"}[usual]

    def campaign_vote(self, rng: random.Random) -> Call:
        (campaign, moderator), usual = rng.choice(list(CAMPAIGN_VOTES.items()))
        variant = self.variant(rng)
        decision = self.vote(usual, variant)
        event = Event(f"campaign.vote:{campaign}:{moderator}", variant, moderator,
                      oracle_rows(VOTE_ACTION["campaign", decision]), moderations=1)
        return Call("award_moderation_vote", {
            "moderator_wallet": moderator, "campaign_id": campaign, "vote_decision": decision,
            "campaign_type": CAMPAIGNS[campaign][0]}, [event])

    def completion(self, rng: random.Random) -> Call:
        completion = rng.choice(list(COMPLETIONS))
        campaign, submissions, usual_outcome = COMPLETIONS[completion]
        kind = CAMPAIGNS[campaign][0]
        variant = self.variant(rng)
        args = {"campaign_id": campaign, "completion_id": completion, "campaign_type": kind,
                "is_validated": False, "is_refused": False, "is_paid": False,
                "price_completion": None, "mint_value_winc": None}
        if rng.random() < 0.5:  # the submission
            args |= submissions[variant]
            action = COMPLETION_ACTION[kind, "submitted", args["is_paid"]]
            key = f"completion.submitted:{completion}"
        else:  # the outcome, on the usual submission's inputs: validated or refused, once
            args |= submissions[0]
            other = {"validated": "refused", "refused": "validated"}
            outcome = usual_outcome if variant == 0 else other[usual_outcome]
            args["is_validated" if outcome == "validated" else "is_refused"] = True
            action = COMPLETION_ACTION[kind, outcome]
            key = f"completion.outcome:{completion}"
        params = {"PRICE_COMPLETION": args["price_completion"], "MINT_VALUE_WINC": args["mint_value_winc"]}
        event = Event(key, variant, args["completer_wallet"], oracle_rows(action, params=params))
        return Call("award_completion", args, [event])

    def completion_vote(self, rng: random.Random) -> Call:
        (completion, moderator), usual = rng.choice(list(COMPLETION_VOTES.items()))
        campaign = COMPLETIONS[completion][0]
        variant = self.variant(rng)
        decision = self.vote(usual, variant)
        event = Event(f"completion.vote:{completion}:{moderator}", variant, moderator,
                      oracle_rows(VOTE_ACTION["completion", decision]), moderations=1)
        return Call("award_completion_moderation", {
            "moderator_wallet": moderator, "campaign_id": campaign, "completion_id": completion,
            "vote_decision": decision, "campaign_type": CAMPAIGNS[campaign][0]}, [event])

    def registration(self, rng: random.Random) -> Call:
        return Call("register_agency_client", {
            "agency_wallet": AGENCY, "client_email": rng.choice(list(CLIENTS)),
            "campaign_id": rng.choice(AGENCY_CAMPAIGNS), "company_name": "Model Corp"})

    def onboarding(self, rng: random.Random) -> Call:
        email = rng.choice(list(CLIENTS))
        variant = self.variant(rng)
        wallet = CLIENTS[email][variant]
        event = Event(f"client.onboarded:{email}", wallet, wallet, oracle_rows("B2C_CLIENT_ONBOARDED"),
                      may_do_nothing=True)
        return Call("onboard_agency_client", {"client_email": email, "client_wallet": wallet}, [event])

    def reversal(self, rng: random.Random) -> Call:
        with self._lock:
            target = rng.choice(self._transactions) if self._transactions else None
        if target is None:
            return self.award(rng)
        transaction_id, wallet, kind, amount = target
        reason = REASONS[self.variant(rng)]
        call = Call("reverse_transaction", {"transaction_id": transaction_id, "reason": reason})
        if kind == "REVERSAL":
            call.must_refuse = "PX014"  # a reversal is never reversed (SPEC §4: corrections are new rows)
        else:
            call.events = [Event(f"reverse:{transaction_id}", reason, wallet, (("REVERSAL", -amount),),
                                 reverses=transaction_id)]
        return call


def execute(conn: psycopg.Connection[Any], call: Call) -> Call:
    try:
        if call.repeatable_read:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            conn.execute("SELECT count(*) FROM pyxp.xp_balances")  # the snapshot predates the call's locks
        rows = conn.execute(SQL[call.fn], call.args).fetchall()
        if call.repeatable_read:
            conn.execute("COMMIT")
    except psycopg.Error as exc:
        call.sqlstate, call.error = exc.sqlstate, str(exc).strip()
        if call.repeatable_read:
            conn.execute("ROLLBACK")
        return call
    if call.fn == "register_agency_client":
        call.registration = rows[0]
    elif call.fn == "award_many":
        call.rows = [[r for r in rows if r["event_index"] == i] for i in range(len(call.events))]
    else:
        call.rows = [rows]
    return call


def run_workload(conninfo: str) -> list[Call]:
    workload = Workload()
    barrier = threading.Barrier(THREADS)

    def thread(index: int) -> list[Call]:
        rng = random.Random(BASE_SEED + index)
        calls = []
        with psycopg.connect(conninfo, autocommit=True, row_factory=dict_row) as conn:
            barrier.wait(timeout=60)
            for _ in range(OPS_PER_THREAD):
                call = workload.next_call(rng)
                # Some callers run in REPEATABLE READ (SPEC 4): refused whatever the call, nothing
                # written. (A completion naming another completer may be refused first: PX011.)
                if rng.random() < REPEATABLE_READ_RATE and call.fn != "award_completion":
                    call.repeatable_read, call.must_refuse = True, "PX025"
                call = execute(conn, call)
                if call.rows is not None:
                    workload.acknowledged(call)
                calls.append(call)
        return calls

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        futures = [pool.submit(thread, index) for index in range(THREADS)]
        return [call for future in futures for call in future.result(timeout=300)]


# --------------------------------------------------------------------------- the model


def acknowledged_events(calls: list[Call]) -> Iterator[tuple[Call, Event, list[dict[str, Any]]]]:
    """Every acknowledged event with its rows; an onboarding that found no registration did nothing."""
    for call in calls:
        for event, rows in zip(call.events, call.rows or []):
            if event.may_do_nothing and not rows:
                continue
            yield call, event, rows


def requested_xp(row: Mapping[str, Any]) -> int:
    """What the rule asked for: xp_requested when a cap cut the row, else its amount."""
    return row["xp_amount"] if row["xp_requested"] is None else row["xp_requested"]


def test_random_concurrent_workload_matches_the_model(conninfo: str, db: psycopg.Connection[Any]) -> None:
    install_variant(db, "model-capped", timezone=TIMEZONE, caps=CAPS)
    calls = run_workload(conninfo)
    db.row_factory = dict_row  # type: ignore[assignment]

    # 1. Only conflicts were refused: no deadlock (40P01), serialization failure or any other error.
    unexpected = [(c.fn, c.sqlstate, c.error) for c in calls
                  if not c.acknowledged and c.sqlstate not in EXPECTED_REFUSALS
                  and (c.fn, c.sqlstate) not in OWNERSHIP_REFUSALS and c.sqlstate != c.must_refuse]
    assert unexpected == []
    completers = {(r["subject"], r["user_wallet"]) for r in db.execute(
        "SELECT subject, user_wallet FROM pyxp.xp_transactions WHERE idempotency_key LIKE 'completion.submitted:%'"
        " OR idempotency_key LIKE 'completion.outcome:%'").fetchall()}
    assert len(completers) == len({subject for subject, _ in completers}), "a completion paid two completers"
    wrongly_accepted = [(c.fn, c.args) for c in calls if c.must_refuse and c.sqlstate != c.must_refuse]
    assert wrongly_accepted == []

    # 2. Oracle: every acknowledged event (first call or replay) returns the rows SPEC §2 gives its inputs,
    #    all new or all replayed. The requested amount is the oracle's; only a gain of a capped rule may
    #    apply less (how much less: step 5b, from the ledger order).
    acked = list(acknowledged_events(calls))
    for call, event, rows in acked:
        assert [(r["user_wallet"], r["transaction_type"], requested_xp(r)) for r in rows] == \
            [(event.wallet, action, amount) for action, amount in event.expected], (call.fn, call.args)
        assert len({r["replayed"] for r in rows}) <= 1, (call.fn, call.args, rows)
        for r in rows:
            assert r["xp_requested"] is None or (r["transaction_type"] in CAPS
                                                 and 0 <= r["xp_amount"] < r["xp_requested"]), (call.fn, r)

    # 3. Per key: one winner (replayed = false), every acknowledged call carried its inputs,
    #    every replay returned the winner's rows.
    by_key: dict[str, list[tuple[Call, Event, list[dict[str, Any]]]]] = defaultdict(list)
    for use in acked:
        by_key[use[1].key].append(use)
    winner: dict[str, Any] = {}
    winning_events: list[Event] = []
    fresh_rows: dict[int, tuple[Event, dict[str, Any]]] = {}
    requested: dict[int, int] = {}  # ledger row id -> the oracle's amount for it
    for key, uses in by_key.items():
        variants = {event.variant for _, event, _ in uses}
        assert len(variants) == 1, f"key {key}: calls with other inputs were acknowledged too: {variants}"
        winner[key] = variants.pop()
        firsts = [(event, rows) for _, event, rows in uses if rows and not rows[0]["replayed"]]
        assert len(firsts) == (1 if uses[0][1].expected else 0), f"key {key} written {len(firsts)} times"
        assert len({tuple(r["transaction_id"] for r in rows) for _, _, rows in uses}) == 1, key
        for event, rows in firsts:
            winning_events.append(event)
            fresh_rows.update((r["transaction_id"], (event, r)) for r in rows)
            requested.update((r["transaction_id"], amount) for (_, amount), r in zip(event.expected, rows))

    # 4. Every refusal was a real conflict with the key's winning inputs (or refused by nature).
    for call in calls:
        if call.sqlstate in EXPECTED_REFUSALS and call.must_refuse is None:
            conflicts = [e.key for e in call.events if e.key in winner and winner[e.key] != e.variant]
            assert conflicts, f"{call.fn} refused ({call.error}) but its inputs match every key's winner"

    # 5. The ledger is exactly the acknowledged new rows: nothing lost, doubled, or left by a refusal.
    ledger = {r["id"]: r for r in db.execute(
        "SELECT id, user_wallet, transaction_type, xp_amount, xp_requested, balance_after, idempotency_key, "
        "reverses, created_at FROM pyxp.xp_transactions")}
    assert sorted(ledger) == sorted(fresh_rows)
    for call, event, rows in acked:
        for r in rows:  # replays too: they report the original row, cut as it was
            stored = ledger[r["transaction_id"]]
            assert (stored["user_wallet"], stored["transaction_type"], stored["xp_amount"],
                    stored["xp_requested"], stored["balance_after"], stored["idempotency_key"],
                    stored["reverses"]) == \
                (r["user_wallet"], r["transaction_type"], r["xp_amount"], r["xp_requested"], r["total_xp"],
                 event.key, event.reverses), (call.fn, call.args)

    # 5b. Caps, exactly: replayed per wallet in ledger order, every capped gain applied what was left of its
    #     allowance (rows cut to 0 included), nothing else was cut, penalties used nothing, reversals freed
    #     what their gain applied, no allowance went over its cap; xp_cap_usage holds what the replay used.
    cap_used, cap_problems = replay_caps(ledger, requested)
    assert cap_problems == []
    stored_usage = {(r["user_wallet"], r["allowance"],
                     period_start(CAPS_PER[r["allowance"]], r["period_start"])): r["used_xp"]
                    for r in db.execute("SELECT * FROM pyxp.xp_cap_usage")}
    assert {k: v for k, v in stored_usage.items() if v} == {k: v for k, v in cap_used.items() if v}

    # 6. Each key is stored once, and only the keys of acknowledged calls are.
    stored_keys = [r["idempotency_key"] for r in db.execute("SELECT idempotency_key FROM pyxp.idempotency_keys")]
    assert sorted(stored_keys) == sorted(by_key)

    # 7. Balances and moderation counts from the acknowledged new rows; ledger sums agree; audit is clean.
    expected_xp: Counter[str] = Counter()
    expected_moderations: Counter[str] = Counter()
    for event, r in fresh_rows.values():
        expected_xp[r["user_wallet"]] += r["xp_amount"]
    for event in winning_events:
        expected_moderations[event.wallet] += event.moderations
    balances = {r["user_wallet"]: (r["total_xp"], r["total_moderations"])
                for r in db.execute("SELECT user_wallet, total_xp, total_moderations FROM pyxp.xp_balances")}
    assert balances == {w: (expected_xp[w], expected_moderations[w]) for w in expected_xp}
    sums = {r["user_wallet"]: r["total"] for r in db.execute(
        "SELECT user_wallet, sum(xp_amount) AS total FROM pyxp.xp_transactions GROUP BY user_wallet")}
    assert sums == dict(expected_xp)
    assert db.execute("SELECT * FROM pyxp.audit()").fetchall() == []

    # 8. The campaign registry holds the winning creations, and the campaigns an acknowledged
    # registration named before any creation (0023: its agency's AGENCY_B2C campaign); agency
    # client rows follow the onboardings.
    campaigns = {r["campaign_id"]: (r["campaign_type"], r["creator_wallet"])
                 for r in db.execute("SELECT * FROM pyxp.campaigns")}
    registrations = db.execute("SELECT agency_wallet, client_email, campaign_id, client_wallet, xp_granted "
                               "FROM pyxp.agency_b2c_clients").fetchall()
    acknowledged_registrations = {(c.args["agency_wallet"], c.args["client_email"], c.args["campaign_id"])
                                  for c in calls if c.registration is not None}
    registered = {campaign: ("AGENCY_B2C", agency) for agency, _, campaign in acknowledged_registrations}
    assert campaigns == registered | {c: CAMPAIGNS[c][:2] for c in CAMPAIGNS if f"campaign.created:{c}" in winner}
    assert sorted((r["agency_wallet"], r["client_email"], r["campaign_id"]) for r in registrations) == \
        sorted(acknowledged_registrations)
    for r in registrations:
        onboarded_wallet = winner.get(f"client.onboarded:{r['client_email']}")
        assert (r["xp_granted"], r["client_wallet"]) == (onboarded_wallet is not None, onboarded_wallet), r

    # The workload really exercised what it claims to (fixed seeds: these are not timing-dependent
    # in any meaningful way, 960 calls over ~40 keys collide all the time).
    figures = {
        "calls": len(calls),
        "acknowledged": sum(c.acknowledged for c in calls),
        "replayed events": sum(1 for _, _, rows in acked if rows and rows[0]["replayed"]),
        "refused PX010": sum(c.sqlstate == "PX010" for c in calls),
        "refused PX014": sum(c.sqlstate == "PX014" for c in calls),
        "refused PX011": sum(c.sqlstate == "PX011" for c in calls),
        "refused PX025 (repeatable read)": sum(c.repeatable_read and c.sqlstate == "PX025" for c in calls),
        "keys": len(stored_keys),
        "ledger rows": len(ledger),
        "reversals written": sum(1 for r in ledger.values() if r["reverses"] is not None),
        "batches acknowledged": sum(c.fn == "award_many" and c.acknowledged for c in calls),
        "onboardings granted": sum(k.startswith("client.onboarded:") for k in stored_keys),
        "wallets": len(balances),
        "capped gains cut in part": sum(r["xp_requested"] is not None and r["xp_amount"] > 0
                                        for r in ledger.values()),
        "capped gains cut to 0": sum(r["xp_requested"] is not None and r["xp_amount"] == 0
                                     for r in ledger.values()),
        "reversals freeing an allowance": sum(
            1 for r in ledger.values() if r["reverses"] is not None
            and ledger[r["reverses"]]["transaction_type"] in CAPS and ledger[r["reverses"]]["xp_amount"] > 0),
        "penalties of a capped rule": sum(r["transaction_type"] in CAPS and r["xp_amount"] < 0
                                          for r in ledger.values()),
        "replays of cut rows": sum(1 for _, _, rows in acked for r in rows
                                   if r["replayed"] and r["xp_requested"] is not None),
    }
    print(f"\n[model] {THREADS} threads x {OPS_PER_THREAD} calls, seed {BASE_SEED}: "
          + ", ".join(f"{k} {v}" for k, v in figures.items()), file=sys.stderr)
    for name in ("replayed events", "refused PX010", "refused PX014", "refused PX025 (repeatable read)",
                 "reversals written",
                 "batches acknowledged", "onboardings granted", "capped gains cut in part",
                 "capped gains cut to 0", "reversals freeing an allowance", "penalties of a capped rule",
                 "replays of cut rows"):
        assert figures[name] > 0, f"the workload produced no {name}"
