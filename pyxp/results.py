"""Typed results of the pyxp SQL functions (rows mapped into dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class AwardRow:
    """One ledger row created (or replayed) by an award call; levels are the wallet's right after it."""

    transaction_id: int
    user_wallet: str
    transaction_type: str
    xp_amount: int
    xp_requested: int | None  # set when a balance floor or a cap cut the amount
    total_xp: int
    current_level: int
    xp_to_next_level: int
    previous_level: int
    replayed: bool


@dataclass(frozen=True)
class Award:
    """What one award call did: its ledger rows, in order, and a summary of them."""

    rows: tuple[AwardRow, ...]

    @property
    def xp(self) -> int:
        """XP applied by the call (sum of its rows)."""
        return sum(row.xp_amount for row in self.rows)

    @property
    def total_xp(self) -> int | None:
        return self.rows[-1].total_xp if self.rows else None

    @property
    def level_before(self) -> int | None:
        return self.rows[0].previous_level if self.rows else None

    @property
    def level_after(self) -> int | None:
        return self.rows[-1].current_level if self.rows else None

    @property
    def xp_to_next_level(self) -> int | None:
        return self.rows[-1].xp_to_next_level if self.rows else None

    @property
    def leveled_up(self) -> bool:
        return bool(self.rows) and self.rows[-1].current_level > self.rows[0].previous_level

    @property
    def replayed(self) -> bool:
        """True when the call repeated an earlier one and changed nothing."""
        return bool(self.rows) and all(row.replayed for row in self.rows)

    @property
    def transaction_types(self) -> list[str]:
        return [row.transaction_type for row in self.rows]


@dataclass(frozen=True)
class BatchAwardRow(AwardRow):
    """A row of pyxp.award_many: an AwardRow and the index of the event it answers."""

    event_index: int = 0


@dataclass(frozen=True)
class AwardRequest:
    """One event of a batch (:meth:`pyxp.XP.award_many`): the parameters of pyxp.award."""

    wallet: str
    action: str
    idempotency_key: str
    params: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Balance:
    user_wallet: str
    total_xp: int
    current_level: int
    xp_to_next_level: int
    total_moderations: int
    created_at: datetime | None  # None: the wallet has no history yet
    updated_at: datetime | None


@dataclass(frozen=True)
class Level:
    level: int
    level_start_xp: int
    next_level_xp: int
    xp_to_next_level: int

    def __post_init__(self) -> None:
        # numeric in SQL (they may exceed bigint); whole numbers here.
        for name in ("level_start_xp", "next_level_xp", "xp_to_next_level"):
            value: Any = getattr(self, name)
            if isinstance(value, Decimal):
                object.__setattr__(self, name, int(value))


@dataclass(frozen=True)
class LedgerRow:
    transaction_id: int
    user_wallet: str
    transaction_type: str
    xp_amount: int
    xp_requested: int | None
    balance_after: int
    rule_id: int | None
    campaign_id: str | None
    subject: str | None
    idempotency_key: str
    metadata: dict[str, Any]
    reverses: int | None
    created_at: datetime


@dataclass(frozen=True)
class WalletArchive:
    """What archives took of a wallet's history: its ``archived_rows`` rows dated before
    ``archived_before`` (the end of the archived range), now in schema pyxp_archive; its
    balance (``total_xp``, ``current_level``) still counts them."""

    user_wallet: str
    archived_rows: int
    archived_before: datetime
    total_xp: int
    current_level: int


@dataclass(frozen=True)
class LeaderboardRow:
    rank: int
    user_wallet: str
    total_xp: int
    current_level: int
    period_xp: int  # the board's XP: total_xp for "all", the period's XP otherwise


@dataclass(frozen=True)
class AuditFinding:
    check_name: str
    user_wallet: str | None
    transaction_id: int | None
    detail: str


@dataclass(frozen=True)
class AuditCheckpoint:
    """A checkpoint pyxp.record_audit_checkpoint() recorded: what it verified since the previous one."""

    checkpoint_id: int
    wallets_verified: int
    rows_verified: int
    created_at: datetime


@dataclass(frozen=True)
class RankBuckets:
    """What pyxp.rebalance_rank_buckets() left: the all-time board's rank buckets, and how many
    of them it re-cut (the period boards' counts are not counted here)."""

    buckets: int
    recut_buckets: int


@dataclass(frozen=True)
class LedgerPartition:
    """A month pyxp.create_ledger_partitions() created (``created``), or left in the default
    partition because rows of it are already there (``note`` says so)."""

    partition_name: str
    range_start: datetime
    range_end: datetime
    created: bool
    note: str | None


@dataclass(frozen=True)
class ArchivedPartition:
    """A partition pyxp.archive_ledger_partitions() took out of the ledger: its rows are now in
    ``archive_table`` (schema pyxp_archive), to dump and drop. ``range_start`` None: MINVALUE."""

    archive_id: int
    partition_name: str
    range_start: datetime | None
    range_end: datetime
    rows_archived: int
    archive_table: str


@dataclass(frozen=True)
class RulesetInstall:
    ruleset_id: int
    name: str
    version: int
    created: bool
    activated: bool
    balances_changed: int


@dataclass(frozen=True)
class RetroactiveApplication:
    """What ``pyxp.apply_rules_retroactively`` did (SPEC 13)."""

    ruleset_id_applied: int
    name: str
    version: int
    already_applied: bool  # nothing to add: every balance equals the simulation (applied before, or a curve-only change)
    wallets_adjusted: int  # RULES_ADJUSTMENT rows appended
    xp_adjusted: Decimal   # their sum
    balances_changed: int  # balances whose level the activation changed


@dataclass(frozen=True)
class ClientRegistration:
    id: int
    agency_wallet: str
    client_email: str
    client_wallet: str | None
    company_name: str | None
    campaign_id: str
    xp_granted: bool
    onboarded_at: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class Change:
    """One committed ledger row from the change feed (pyxp.changes, SPEC 11).

    Pass ``cursor`` back as ``after_cursor`` to read on; ``total_xp`` is the balance right
    after the row, ``previous_level`` / ``current_level`` the levels before and after it.
    """

    cursor: int
    transaction_id: int
    user_wallet: str
    transaction_type: str
    xp_amount: int
    total_xp: int
    previous_level: int
    current_level: int
    campaign_id: str | None
    subject: str | None
    created_at: datetime

    @property
    def leveled_up(self) -> bool:
        return self.current_level > self.previous_level

    @property
    def leveled_down(self) -> bool:
        return self.current_level < self.previous_level
