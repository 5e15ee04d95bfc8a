"""pyxp: the XP ledger of a campaign platform, kept in PostgreSQL.

The logic lives in PL/pgSQL (schema ``pyxp``); this package wraps it:
:class:`XP` / :class:`AsyncXP` call the SQL functions, :mod:`pyxp.ruleset_config`
compiles TOML config seeds into rule tables, :mod:`pyxp.schema` migrates the
database, and ``pyxp`` is the command line.
"""

from pyxp.client import XP, AsyncXP
from pyxp.errors import *  # noqa: F403 - every XPError subclass is public
from pyxp.errors import DatabaseUnavailable, XPError, error_from_sqlstate
from pyxp.results import (
    ArchivedPartition,
    AuditCheckpoint,
    AuditFinding,
    Award,
    AwardRequest,
    AwardRow,
    Balance,
    BatchAwardRow,
    Change,
    ClientRegistration,
    LeaderboardRow,
    LedgerPartition,
    LedgerRow,
    Level,
    RankBuckets,
    RulesetInstall,
)
from pyxp.ruleset_config import ConfigError, RuleSet, load_ruleset

__all__ = [
    "XP", "AsyncXP", "XPError", "DatabaseUnavailable", "error_from_sqlstate",
    "ConfigError", "RuleSet", "load_ruleset",
    "Award", "AwardRequest", "AwardRow", "BatchAwardRow", "Balance", "Level", "LedgerRow", "LeaderboardRow", "AuditFinding",
    "AuditCheckpoint", "RankBuckets", "LedgerPartition", "ArchivedPartition",
    "RulesetInstall", "ClientRegistration", "Change",
]
