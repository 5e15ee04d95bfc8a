"""``pyxp demo``: the seeds' stories, played on a scratch database.

One function per story of the seeds, in this order:

1. :func:`example_state` (xp-flow-diagrams, "État de la Base de Données"),
   ruleset ``winstory-flows``: every flow once; the balances and latest rows table.
2. :func:`campaign_lifecycle` (xp-flow-diagrams, "Cycle de Vie"), ``winstory-flows``:
   22 moderators, approval, 50 completers of whom 10 are validated; the totals.
3. :func:`completer_scenario_paid_b2c` (xp-completers, "Scénario 1"), ``winstory``.
4. :func:`completer_scenario_individual_refused` (xp-completers, "Scénario 2"), ``winstory``.

Then :func:`print_week_leaderboard`: this week's board (SPEC section 12) of all the stories.

Every figure printed comes from the database: award results, balances, and
totals summed from the ledger rows (``history``). Each story uses its own
wallets and campaigns, so figures do not mix. The scratch database is dropped
at the end, also when a story fails; with ``keep=True`` (``pyxp demo --keep``)
it is kept and its URL printed, and a throwaway cluster is left running with
the command that stops and removes it.
"""

from __future__ import annotations

import os
import secrets
import shlex
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

from pyxp import schema
from pyxp.client import XP
from pyxp.database import (
    DATABASE_URL_VARIABLE,
    EmbeddedCluster,
    _runuser,
    configured_conninfo,
    discovered_server,
    locate_server,
    with_database,
)
from pyxp.results import AuditFinding, Award, Change
from pyxp.tables import (
    Cell,
    Column,
    Printer,
    Styled,
    change_line,
    level_change,
    print_audit,
    signed,
    xp_cell,
)


@dataclass
class Stage:
    """What a story plays with: the client on the scratch database, and the printer."""

    xp: XP
    conninfo: str
    out: Printer

    def use_ruleset(self, name: str) -> str:
        """Activates a shipped ruleset; returns "name vN" for the story's subtitle."""
        installed = schema.apply_ruleset(self.conninfo, name)
        return f"ruleset {installed.name} v{installed.version}"


@dataclass
class CallLog:
    """The calls of a story, printed as one table: one line per ledger row written."""

    out: Printer
    rows: list[list[Cell]] = field(default_factory=list)

    def award(self, step: str, result: Award) -> Award:
        for index, row in enumerate(result.rows):
            last = index == len(result.rows) - 1
            self.rows.append([
                step if index == 0 else "",
                row.user_wallet if index == 0 else "",
                row.transaction_type,
                xp_cell(row.xp_amount),
                row.total_xp,
                level_change(self.out, result.level_before or 1, result.level_after or 1) if last else "",
                Styled("level up!", fg="yellow", bold=True) if last and result.leveled_up else "",
            ])
        return result

    def note(self, step: str, wallet: str, what: str) -> None:
        """A call that writes no ledger row."""
        self.rows.append([step, wallet, Styled(what, dim=True), "", "", "", ""])

    def print(self) -> None:
        self.out.blank()
        self.out.table([Column("step"), Column("wallet"), Column("transaction_type"), Column("XP", ">"),
                        Column("total", ">"), Column("level"), Column("")], self.rows)


# --------------------------------------------------------------------------- reading the ledger back


def print_balances(stage: Stage, wallets: Sequence[str]) -> None:
    """The seeds' xp_balances table: total, level, XP to the next level."""
    rows: list[list[str | int]] = []
    for wallet in wallets:
        b = stage.xp.balance(wallet)
        rows.append([b.user_wallet, b.total_xp, b.current_level,
                     f"{b.xp_to_next_level} to lvl {b.current_level + 1}"])
    stage.out.blank()
    stage.out.table([Column("user_wallet"), Column("total_xp", ">"), Column("level", ">"),
                     Column("xp_to_next", ">")], rows, title="xp_balances")


def print_latest_rows(stage: Stage, wallets: Sequence[str], count: int) -> None:
    """The seeds' "xp_transactions (latest N)" table, from the wallets' histories."""
    rows = sorted((r for w in wallets for r in stage.xp.history(w, max_rows=count)),
                  key=lambda r: r.transaction_id, reverse=True)[:count]
    stage.out.blank()
    stage.out.table([Column("id", ">"), Column("user_wallet"), Column("transaction_type"),
                     Column("xp_amount", ">")],
                    [[r.transaction_id, r.user_wallet, r.transaction_type, xp_cell(r.xp_amount)]
                     for r in rows], title=f"xp_transactions (latest {count})")


def print_totals(stage: Stage, campaign_id: str, roles: Sequence[tuple[str, Sequence[str]]],
                 total_label: str = "GRAND TOTAL") -> None:
    """XP per role on one campaign, summed from the ledger rows of the role's wallets."""
    totals: dict[str, int] = {}
    table: list[list[Cell]] = []
    all_rows = 0
    for role, wallets in roles:
        rows = [r for wallet in wallets for r in stage.xp.history(wallet, max_rows=1000)
                if r.campaign_id == campaign_id]
        totals[role] = sum(r.xp_amount for r in rows)
        all_rows += len(rows)
        table.append([role, len(wallets), len(rows), xp_cell(totals[role])])
    grand = sum(totals.values())
    table.append([Styled(total_label, bold=True), sum(len(w) for _, w in roles), all_rows,
                  Styled(signed(grand), bold=True)])
    stage.out.blank()
    stage.out.table([Column("role"), Column("wallets", ">"), Column("ledger rows", ">"), Column("XP", ">")],
                    table, title=f"XP distributed on {campaign_id} (summed from the ledger)")


# --------------------------------------------------------------------------- the stories


def example_state(stage: Stage) -> None:
    """xp-flow-diagrams, "État de la Base de Données": each flow once (ruleset winstory-flows).

    The agency's campaign comes first and its client signs in last ("days or
    weeks later"), so the latest five rows are the seed's.
    """
    ruleset = stage.use_ruleset("winstory-flows")
    stage.out.heading("1. Example database state", f"xp-flow-diagrams, {ruleset}")
    xp, log = stage.xp, CallLog(stage.out)

    log.award("agency creates AGENCY_B2C campaign_456, no rewards",
              xp.award_campaign_creation("0x_agency", "campaign_456", "AGENCY_B2C", no_rewards=True))
    xp.register_agency_client("0x_agency", "client@example.com", "campaign_456", company_name="Client Corp")
    log.note("agency registers client@example.com", "0x_agency", "pending until the client signs in")
    log.award("creator creates B2C campaign_123, video + no rewards",
              xp.award_campaign_creation("0x_creator", "campaign_123", "B2C", mint_value=1000,
                                         winstory_creates_video=True, no_rewards=True))
    log.award("moderator votes VALID on campaign_123",
              xp.award_moderation_vote("0x_moderator", "campaign_123", "VALID"))
    log.award("completer submits completion_789",
              xp.award_completion("0x_completer", "campaign_123", "completion_789"))
    log.award("completion_789 validated, score 100/100",
              xp.award_completion("0x_completer", "campaign_123", "completion_789", is_validated=True))
    log.award("client signs in with client@example.com",
              xp.onboard_agency_client("client@example.com", "0x_client"))
    log.print()

    wallets = ["0x_creator", "0x_moderator", "0x_completer", "0x_agency", "0x_client"]
    print_balances(stage, wallets)
    stage.out.line(Styled("  (the seed's agency row reads \"1000 to lvl 7\"; level 7 starts at 4000, "
                          "so 2000: SPEC section 2)", dim=True))
    print_latest_rows(stage, wallets, 5)


def campaign_lifecycle(stage: Stage) -> None:
    """xp-flow-diagrams, "Cycle de Vie": creation, 22 votes (15 VALID, 7 REFUSE), approval,
    50 submissions, 10 validations (ruleset winstory-flows)."""
    ruleset = stage.use_ruleset("winstory-flows")
    stage.out.heading("2. A campaign's life cycle", f"xp-flow-diagrams, {ruleset}")
    xp, out = stage.xp, stage.out
    campaign = "campaign_lifecycle"
    creator = "0x_lifecycle_creator"
    moderators = [f"0x_lifecycle_moderator_{n:02}" for n in range(1, 23)]
    votes = ["VALID"] * 15 + ["REFUSE"] * 7
    completers = [f"0x_lifecycle_completer_{n:02}" for n in range(1, 51)]

    creation = xp.award_campaign_creation(creator, campaign, "B2C", mint_value=1000,
                                          winstory_creates_video=True, no_rewards=True)
    moderation = [xp.award_moderation_vote(m, campaign, vote) for m, vote in zip(moderators, votes)]
    approval = xp.award_campaign_approval(campaign)
    submissions = [xp.award_completion(c, campaign, f"{campaign}:{c}") for c in completers]
    validations = [xp.award_completion(c, campaign, f"{campaign}:{c}", is_validated=True)
                   for c in completers[:10]]

    def phase(name: str, what: str, awards: Sequence[Award]) -> list[Cell]:
        return [name, what, sum(len(a.rows) for a in awards), xp_cell(sum(a.xp for a in awards))]

    out.line(Styled(f"  {campaign}, wallets {creator}, {moderators[0]}..{moderators[-1][-2:]}, "
                    f"{completers[0]}..{completers[-1][-2:]}", dim=True))
    out.blank()
    out.table([Column("phase"), Column("what happens"), Column("ledger rows", ">"), Column("XP", ">")], [
        phase("creation", f"the creator mints a B2C campaign, video + no rewards "
                          f"(level {creation.level_before} {out.arrow} {creation.level_after})", [creation]),
        phase("moderation", f"{len(moderators)} moderators vote: "
                            f"{votes.count('VALID')} VALID, {votes.count('REFUSE')} REFUSE", moderation),
        phase("approval", "campaign approved: XP to the creator", [approval]),
        phase("completion", f"{len(completers)} completers submit", submissions),
        phase("", f"{len(validations)} reach a 100 % score", validations),
    ])
    print_totals(stage, campaign, [("Creator", [creator]), ("Moderators", moderators),
                                   ("Completers", completers)])


def completer_scenario_paid_b2c(stage: Stage) -> None:
    """xp-completers, "Scénario 1": a paid B2C completion (300), 3 VALID votes, validated
    (ruleset winstory)."""
    ruleset = stage.use_ruleset("winstory")
    stage.out.heading("3. Completer scenario 1: paid B2C completion, validated", f"xp-completers, {ruleset}")
    xp, log = stage.xp, CallLog(stage.out)
    campaign, completion, completer = "camp_001", "comp_001", "0xabc"
    moderators = ["0xmod1_s1", "0xmod2_s1", "0xmod3_s1"]

    log.award("submits comp_001, paid mission 300",
              xp.award_completion(completer, campaign, completion, "B2C", is_paid=True, price_completion=300))
    for moderator in moderators:
        log.award("moderator votes VALID",
                  xp.award_completion_moderation(moderator, campaign, completion, "VALID", "B2C"))
    log.award("comp_001 validated",
              xp.award_completion(completer, campaign, completion, "B2C", is_validated=True))
    log.print()
    print_totals(stage, campaign, [("Completer", [completer]), ("Moderators", moderators)], "total")


def completer_scenario_individual_refused(stage: Stage) -> None:
    """xp-completers, "Scénario 2": an INDIVIDUAL completion (5000 WINC), 2 VALID 3 REFUSE, refused."""
    ruleset = stage.use_ruleset("winstory")
    stage.out.heading("4. Completer scenario 2: INDIVIDUAL completion, refused", f"xp-completers, {ruleset}")
    xp, log = stage.xp, CallLog(stage.out)
    campaign, completion, completer = "camp_002", "comp_002", "0xdef"
    votes = {"0xmod1_s2": "VALID", "0xmod2_s2": "VALID",
             "0xmod3_s2": "REFUSE", "0xmod4_s2": "REFUSE", "0xmod5_s2": "REFUSE"}

    log.award("submits comp_002, MINT 5000 WINC",
              xp.award_completion(completer, campaign, completion, "INDIVIDUAL", mint_value_winc=5000))
    for moderator, vote in votes.items():
        log.award(f"moderator votes {vote}",
                  xp.award_completion_moderation(moderator, campaign, completion, vote, "INDIVIDUAL"))
    log.award("comp_002 refused (majority REFUSE)",
              xp.award_completion(completer, campaign, completion, "INDIVIDUAL", is_refused=True,
                                  mint_value_winc=5000))
    log.print()
    print_totals(stage, campaign, [("Completer", [completer]), ("Moderators", list(votes))], "total")


def print_week_leaderboard(stage: Stage, top: int = 5) -> None:
    """This week's leaderboard (``pyxp.leaderboard(period => 'week')``): the ISO week containing
    the database's now, in the active ruleset's timezone; the top wallets by XP earned in it."""
    with psycopg.connect(stage.conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT r.name, r.version, r.timezone, (b.period_start AT TIME ZONE r.timezone)::date, s.at"
            "  FROM pyxp.rulesets r, statement_timestamp() AS s(at),"
            "       pyxp.period_bounds('week', s.at, r.timezone) b"
            " WHERE r.is_active").fetchone()
    assert row is not None  # every story activates a ruleset
    name, version, zone, monday, at = row
    board = stage.xp.leaderboard(max_rows=1000, period="week", at=at)
    stage.out.heading("This week's leaderboard",
                      f"week of Monday {monday.isoformat()} ({zone}), ruleset {name} v{version}")
    stage.out.blank()
    stage.out.table([Column("rank", ">"), Column("wallet"), Column("week XP", ">"), Column("total XP", ">"),
                     Column("level", ">")],
                    [[r.rank, r.user_wallet, r.period_xp, r.total_xp, r.current_level] for r in board[:top]],
                    title=f"top {min(top, len(board))} of the {len(board)} wallets with XP this week")
    if all(r.period_xp == r.total_xp for r in board):
        stage.out.line(Styled("  (the stories all played just now, so week XP = total XP)", dim=True))


class LevelUpWatcher:
    """A watcher of the change feed on its own connection, as a live dashboard would run one
    (:meth:`XP.watch` in a thread): it sees every ledger row as it commits; after each story
    the demo prints the level-ups it saw."""

    def __init__(self, conninfo: str) -> None:
        self._client = XP(conninfo, max_connections=1)
        self._stop = threading.Event()
        self._seen: list[Change] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._follow, daemon=True, name="pyxp-demo-watch")
        self._thread.start()

    def _follow(self) -> None:
        for change in self._client.watch(poll_interval=0.1, stop=self._stop):
            with self._lock:
                self._seen.append(change)

    def print_level_ups(self, stage: Stage, deadline_s: float = 10) -> None:
        """Waits until the watcher has seen the ledger's last row, then prints the level-ups."""
        with psycopg.connect(stage.conninfo, autocommit=True) as conn:
            row = conn.execute("SELECT max(id) FROM pyxp.xp_transactions").fetchone()
            last = row[0] if row else None
        deadline = time.monotonic() + deadline_s
        while last is not None and time.monotonic() < deadline:
            with self._lock:
                if any(change.transaction_id == last for change in self._seen):
                    break
            time.sleep(0.05)
        with self._lock:
            seen, self._seen = self._seen, []
        level_ups = [change for change in seen if change.leveled_up]
        stage.out.blank()
        stage.out.line(Styled(f"  live: a watcher (pyxp watch) saw {len(seen)} changes as they committed; "
                              f"the level-ups:", dim=True))
        for change in level_ups:
            stage.out.line("  ", *change_line(stage.out, change))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._client.close()


STORIES: tuple[Callable[[Stage], None], ...] = (
    example_state,
    campaign_lifecycle,
    completer_scenario_paid_b2c,
    completer_scenario_individual_refused,
)


# --------------------------------------------------------------------------- running it


def database_url(conninfo: str) -> str:
    """``postgresql://user@host:port/dbname`` of a conninfo, without its password (for people to copy)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        user, dbname, host, port = conn.info.user, conn.info.dbname, conn.info.host, conn.info.port
    user, dbname = quote(user, safe=""), quote(dbname, safe="")
    if host.startswith("/"):  # a socket directory
        return f"postgresql://{user}@/{dbname}?host={quote(host, safe='/')}&port={port}"
    return f"postgresql://{user}@{f'[{host}]' if ':' in host else host}:{port}/{dbname}"


def run_demo(server: str, out: Printer, origin: str = "", keep: bool = False) -> list[AuditFinding]:
    """Plays :data:`STORIES` on a new database ``pyxp_demo_<random>`` of ``server``, then drops it
    (``keep``: keeps it and prints its URL, also when a story fails).

    Returns the audit findings of the final state (none expected).
    """
    name = f"pyxp_demo_{secrets.token_hex(4)}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        where = f"{admin.info.host}:{admin.info.port}"
    try:
        out.line(Styled("pyxp demo", bold=True), ": the seeds' stories, played on a scratch database")
        out.line(Styled(f"  server    {where}" + (f" ({origin})" if origin else ""), dim=True))
        fate = "kept at the end (--keep)" if keep else "dropped at the end"
        out.line(Styled(f"  database  {name} (created now, {fate})", dim=True))
        out.line(Styled("  Each step calls a pyxp SQL function; every figure below is what the database "
                        "returned or holds.", dim=True))
        conninfo = with_database(server, name)
        schema.upgrade(conninfo)
        watcher = LevelUpWatcher(conninfo)
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                stage = Stage(XP(conn), conninfo, out)
                for story in STORIES:
                    story(stage)
                    watcher.print_level_ups(stage)
                print_week_leaderboard(stage)
                findings = stage.xp.audit()
        finally:
            watcher.close()
        out.blank()
        print_audit(out, findings)
    finally:
        if keep:
            try:
                print_kept_database(out, with_database(server, name), name)
            except psycopg.Error:  # the server went away: the story's own error says more
                out.line(f"scratch database {name} kept")
        else:
            with psycopg.connect(server, autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            out.line(Styled(f"scratch database {name} dropped", dim=True))
    return findings


def print_kept_database(out: Printer, conninfo: str, name: str) -> None:
    """Where the kept scratch database is, and how to explore and drop it."""
    url = database_url(conninfo)
    password = " (with the password you connected with)" if "password" in conninfo else ""
    out.blank()
    out.line(Styled(f"scratch database {name} kept", bold=True), f": {url}{password}")
    out.line(f"  explore it:  {DATABASE_URL_VARIABLE}={shlex.quote(url)} pyxp balance 0x_creator   "
             f"(or psql {shlex.quote(url)})")
    drop = f"DROP DATABASE {name} WITH (FORCE)"
    out.line(f"  drop it:     psql {shlex.quote(with_url_database(url, 'postgres'))} -c {shlex.quote(drop)}")


def with_url_database(url: str, dbname: str) -> str:
    """The same URL on another database of the server."""
    head, _, tail = url.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{dbname}" + (f"?{tail}" if tail else "")


def _origin(conninfo: str) -> str:
    if os.environ.get(DATABASE_URL_VARIABLE):
        return DATABASE_URL_VARIABLE
    if conninfo == configured_conninfo():
        return "libpq defaults"
    return "a throwaway cluster from the local PostgreSQL binaries, removed at the end"


def play_on_discovered_server(out: Printer, keep: bool = False) -> list[AuditFinding]:
    """The demo on the server :func:`pyxp.database.discovered_server` finds (or starts).

    ``keep``: the scratch database stays; a throwaway cluster started for it stays
    running too, and the command that stops and removes it is printed.
    """
    if not keep:
        with discovered_server() as server:
            return run_demo(server, out, _origin(server))
    found = locate_server()
    if isinstance(found, Path):  # no server answers: the binaries to start one from
        return _play_on_kept_cluster(out, found)
    return run_demo(found, out, _origin(found), keep=True)


def _play_on_kept_cluster(out: Printer, bindir: Path) -> list[AuditFinding]:
    """``demo --keep`` with no server: a throwaway cluster that outlives the demo, also when a story
    fails (what it wrote can be looked at); the command that stops and removes it is printed."""
    cluster = EmbeddedCluster(bindir).start()
    try:
        return run_demo(cluster.conninfo, out, "a throwaway cluster from the local PostgreSQL binaries, "
                                               "kept running (--keep)", keep=True)
    finally:
        pg_ctl = shlex.join([str(cluster.bindir / "pg_ctl"), "-D", str(cluster.datadir), "-m", "fast",
                             "stop"])
        if cluster.run_as:
            pg_ctl = f"{shlex.quote(_runuser())} -u {cluster.run_as} -- {pg_ctl}"
        out.line(f"  the throwaway cluster keeps running in {cluster.directory}; stop and remove it with:")
        out.line(f"    {pg_ctl} && rm -rf {shlex.quote(str(cluster.directory))}")
