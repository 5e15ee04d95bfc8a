"""Ruleset config seeds: TOML text -> compiled rules and level curve (SPEC section 8).

A ruleset file names the ruleset, may set a balance floor and a timezone, describes the
level curve (explicit thresholds, then growth tiers) and lists the rules, each optionally
capped per calendar period in that timezone (SPEC section 12). Amounts are numbers or
formulas such as ``100 + PRICE_COMPLETION`` or ``MINT_VALUE_$WINC / 2``; formulas are
parsed with :mod:`ast` (never evaluated) into a *linear form*
``constant + sum(coefficient * input)``, which is what the database stores and evaluates.

Pure Python, no database. Every problem in a file is a :class:`ConfigError` naming the
file, the line and what is accepted.
"""

from __future__ import annotations

import ast
import math
import re
import tomllib
import warnings
import zoneinfo
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation, localcontext
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence

from pyxp.errors import XPError

__all__ = [
    "BUILTIN_INPUTS",
    "CAMPAIGN_TYPES",
    "CAP_PERIODS",
    "DEFAULT_GROWTH",
    "DEFAULT_THRESHOLDS",
    "KNOWN_EVENTS",
    "Cap",
    "ConfigError",
    "LevelRow",
    "LinearForm",
    "Rule",
    "RuleSet",
    "compile_formula",
    "generate_levels",
    "load_ruleset",
    "normalize_campaign_type",
    "normalize_input_name",
    "parse_ruleset",
    "shipped_rulesets",
]

# --------------------------------------------------------------------------- constants

MAX_ABS = 10**15  # largest |number| in a config (same bound as SQL formula inputs)
THRESHOLD_LIMIT = 10**18  # thresholds must stay below this (pyxp.install_ruleset takes 18 digits)
MAX_DECIMALS = 20  # decimal places of a formula's numbers (pyxp.install_ruleset takes 20)
MAX_LEVEL = 10_000  # generated curve length cap (the tail past it is linear anyway)
MAX_FORMULA_LENGTH = 1000

BUILTIN_INPUTS: tuple[str, ...] = ("PRICE_COMPLETION", "MINT_VALUE_WINC", "MINT_VALUE")
CAMPAIGN_TYPES: tuple[str, ...] = ("B2C", "AGENCY_B2C", "INDIVIDUAL")
CAP_PERIODS: tuple[str, ...] = ("day", "week", "month", "year")  # calendar periods of a cap

# Known events -> the conditions each accepts (canonical spelling).
KNOWN_EVENTS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "campaign.created": ("winstory_creates_video", "no_rewards"),
        "campaign.approved": (),
        "campaign.vote": ("VALID", "REFUSE"),
        "completion.submitted": ("free", "paid"),
        "completion.validated": (),
        "completion.refused": (),
        "completion.vote": ("VALID", "REFUSE"),
        "client.onboarded": (),
    }
)

# The formula inputs each flow passes (sql/06_flows.sql, its calls of pyxp.formula_inputs; keep the
# two in step): a rule of a flow's event whose formula
# names another can never apply (every call would be PX018, with a hint the flow cannot follow).
FLOW_INPUTS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "campaign.created": ("MINT_VALUE",),
        "campaign.approved": (),
        "campaign.vote": (),
        "completion.submitted": ("PRICE_COMPLETION", "MINT_VALUE_WINC"),
        "completion.validated": ("PRICE_COMPLETION", "MINT_VALUE_WINC"),
        "completion.refused": ("PRICE_COMPLETION", "MINT_VALUE_WINC"),
        "completion.vote": (),
        "client.onboarded": (),
    }
)
# The campaign type an onboarding always passes: the registering agency's campaign.
ONBOARDING_TYPE = "AGENCY_B2C"

# Default winstory curve (SPEC section 3): levels 1..7 from the seeds' example table,
# then x1.35 per level up to 10, x1.10 up to 30, x1.05 up to 50, constant afterwards.
DEFAULT_THRESHOLDS: tuple[int, ...] = (0, 100, 250, 500, 1000, 2000, 4000)
DEFAULT_GROWTH: tuple[tuple[int, Decimal], ...] = (
    (10, Decimal("1.35")),
    (30, Decimal("1.10")),
    (50, Decimal("1.05")),
)

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_ACTION_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_CUSTOM_EVENT_RE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")
_CUSTOM_CONDITION_RE = re.compile(r"[A-Za-z0-9_]{1,64}")
_GROUP_RE = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_INPUT_RE = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")
# `$` between identifier characters, as in the seeds' MINT_VALUE_$WINC.
_DOLLAR_RE = re.compile(r"(?<=[A-Za-z0-9_])\$(?=[A-Za-z0-9_])")

# Transaction types pyxp writes itself: a reversal, a retroactive rules adjustment (SPEC 13).
RESERVED_ACTIONS = ("REVERSAL", "RULES_ADJUSTMENT")
_ROOT_KEYS = ("name", "description", "timezone", "balance_floor", "inputs", "levels", "rules")
_LEVEL_KEYS = ("thresholds", "growth")
_TIER_KEYS = ("up_to_level", "factor")
_RULE_KEYS = (
    "action",
    "event",
    "campaign_types",
    "condition",
    "earn_xp",
    "lose_xp",
    "cap",
    "group",
    "description",
)
_CAP_KEYS = ("max_xp", "per")

_ACCEPT_NUMBER = "an integer or decimal between -10^15 and 10^15, or a formula string"
_ACCEPT_CAP = (
    'cap = { max_xp = an integer from 1 to 10^15, per = "day", "week", "month" or "year" } '
    "(or a [rules.cap] table with those two keys)"
)
_ACCEPT_TIMEZONE = "an IANA time zone name such as UTC, Europe/Paris, Pacific/Auckland"


# --------------------------------------------------------------------------- errors


class ConfigError(XPError, ValueError):
    """A ruleset config problem, found before anything touches the database: ``"{path}:{line}: {what}; accepted: {accepted}"``.

    Parts that are unknown are left out (without a path the location reads ``line N``).
    """

    def __init__(
        self,
        what: str,
        *,
        path: str | None = None,
        line: int | None = None,
        accepted: str = "",
    ) -> None:
        self.what = what
        self.path = path
        self.line = line
        self.accepted = accepted
        if path is not None and line is not None:
            where = f"{path}:{line}: "
        elif path is not None:
            where = f"{path}: "
        elif line is not None:
            where = f"line {line}: "
        else:
            where = ""
        tail = f"; accepted: {accepted}" if accepted else ""
        super().__init__(f"{where}{what}{tail}")

    def __str__(self) -> str:
        return self.message


# --------------------------------------------------------------------------- data


def _dec_str(value: Decimal) -> str:
    """Canonical text of a Decimal: no exponent, no trailing zeros ("0.5", "100", "-50")."""
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


@dataclass(frozen=True)
class LinearForm:
    """``constant + sum(coefficients[name] * name)``; zero coefficients are dropped."""

    constant: Decimal
    coefficients: Mapping[str, Decimal] = field(default_factory=dict)

    def __post_init__(self) -> None:
        cleaned = {k: Decimal(v) for k, v in sorted(self.coefficients.items()) if v != 0}
        object.__setattr__(self, "constant", Decimal(self.constant))
        object.__setattr__(self, "coefficients", MappingProxyType(cleaned))

    def __hash__(self) -> int:
        return hash((self.constant, tuple(self.coefficients.items())))

    def inputs(self) -> tuple[str, ...]:
        """Names of the inputs the form depends on, sorted."""
        return tuple(self.coefficients)

    @property
    def is_constant(self) -> bool:
        return not self.coefficients

    def __add__(self, other: LinearForm) -> LinearForm:
        coefficients = dict(self.coefficients)
        for name, c in other.coefficients.items():
            coefficients[name] = coefficients.get(name, Decimal(0)) + c
        return LinearForm(self.constant + other.constant, coefficients)

    def __neg__(self) -> LinearForm:
        return self.scaled(Decimal(-1))

    def __sub__(self, other: LinearForm) -> LinearForm:
        return self + (-other)

    def scaled(self, factor: Decimal) -> LinearForm:
        return LinearForm(
            self.constant * factor, {k: c * factor for k, c in self.coefficients.items()}
        )

    def divided(self, divisor: Decimal) -> LinearForm:
        # Divide each term (rather than multiply by 1/divisor) to stay exact where possible.
        return LinearForm(
            self.constant / divisor, {k: c / divisor for k, c in self.coefficients.items()}
        )

    def rounded(self) -> LinearForm:
        """The form as the database stores it: every number to :data:`MAX_DECIMALS` places
        (``PRICE_COMPLETION / 3`` gives 28 significant digits, which pyxp.install_ruleset
        refused). An amount is rounded to an integer XP, and an input is at most 10^15: the
        difference is below 10^-5 XP."""
        places = Decimal(1).scaleb(-MAX_DECIMALS)
        with localcontext() as ctx:
            ctx.prec = 60  # 16 integer digits + 20 decimals, exactly
            return LinearForm(
                self.constant.quantize(places), {k: c.quantize(places) for k, c in self.coefficients.items()}
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "constant": _dec_str(self.constant),
            "coefficients": {k: _dec_str(c) for k, c in self.coefficients.items()},
        }


@dataclass(frozen=True)
class Cap:
    """At most ``max_xp`` XP of gains per calendar ``per`` (one of :data:`CAP_PERIODS`)."""

    max_xp: int
    per: str

    def __str__(self) -> str:
        return f'{{max_xp = {self.max_xp}, per = "{self.per}"}}'

    def to_json(self) -> dict[str, Any]:
        return {"max_xp": self.max_xp, "per": self.per}


@dataclass(frozen=True)
class Rule:
    action: str
    event: str | None
    campaign_types: tuple[str, ...] | None
    condition: str | None
    formula: str  # human readable: "earn", "-lose" or "earn - lose" (a formula lose in parentheses)
    xp: LinearForm  # earn - lose
    description: str | None = None
    cap: Cap | None = None
    group: str | None = None  # rules of one group share one allowance (and carry the same cap)


@dataclass(frozen=True)
class LevelRow:
    level: int
    threshold: int  # total XP needed for this level
    increment: int  # XP from this level to the next (the constant tail on the last row)
    is_last: bool


@dataclass(frozen=True)
class RuleSet:
    name: str
    description: str | None
    balance_floor: int | None
    levels: tuple[LevelRow, ...]
    rules: tuple[Rule, ...]
    source: str  # the raw TOML text
    path: str | None = None
    timezone: str | None = None  # as written in the file; None when absent (UTC)

    @property
    def effective_timezone(self) -> str:
        """The zone of the calendar periods: :attr:`timezone`, else ``UTC``."""
        return self.timezone or "UTC"

    def definition(self) -> dict[str, Any]:
        """JSON-ready compiled form, as sent to SQL.

        ``timezone``, a rule's ``cap`` and ``group`` appear only when the file sets them, so
        rulesets without them compile (and hash) as before.
        """
        return {
            "name": self.name,
            "description": self.description,
            "balance_floor": self.balance_floor,
            **({"timezone": self.timezone} if self.timezone is not None else {}),
            "levels": [
                {
                    "level": row.level,
                    "threshold": row.threshold,
                    "increment": row.increment,
                    "is_last": row.is_last,
                }
                for row in self.levels
            ],
            "rules": [
                {
                    "action": rule.action,
                    "event": rule.event,
                    "campaign_types": (
                        list(rule.campaign_types) if rule.campaign_types is not None else None
                    ),
                    "condition": rule.condition,
                    "formula": rule.formula,
                    **rule.xp.to_json(),
                    "description": rule.description,
                    **({"cap": rule.cap.to_json()} if rule.cap is not None else {}),
                    **({"group": rule.group} if rule.group is not None else {}),
                }
                for rule in self.rules
            ],
        }

    def rule(self, action: str) -> Rule:
        for rule in self.rules:
            if rule.action == action:
                return rule
        raise KeyError(action)


# --------------------------------------------------------------------------- small helpers


def normalize_input_name(name: str) -> str:
    """Formula input spelling of the seeds: ``MINT_VALUE_$WINC`` -> ``MINT_VALUE_WINC``."""
    return name.replace("$", "").upper()


def normalize_campaign_type(value: str) -> str:
    """``b2c`` / ``FOR_B2C`` -> ``B2C``; ValueError when not a campaign type."""
    canonical = value.strip().upper()
    if canonical.startswith("FOR_"):
        canonical = canonical[4:]
    if canonical not in CAMPAIGN_TYPES:
        raise ValueError(f"unknown campaign type {value!r}")
    return canonical


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# Names zoneinfo lists that are the host's settings, not zones: localtime is /etc/localtime (another
# host after a restore or a failover moves every period), Factory a placeholder (0034).
HOST_TIMEZONE_NAMES = frozenset({"localtime", "Factory"})


@cache
def _timezones() -> frozenset[str]:
    return (frozenset(zoneinfo.available_timezones()) | {"UTC"}) - HOST_TIMEZONE_NAMES


# --------------------------------------------------------------------------- formulas

_ACCEPT_FORMULA = (
    "integer/decimal literals, the inputs {names} (MINT_VALUE_$WINC = MINT_VALUE_WINC), "
    "+, -, * with a constant side, / by a non-zero constant, parentheses"
)

_OPERATOR_TEXT: Mapping[type, str] = {
    ast.Pow: "**",
    ast.Mod: "%",
    ast.FloorDiv: "//",
    ast.MatMult: "@",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitOr: "|",
    ast.BitAnd: "&",
    ast.BitXor: "^",
}


def compile_formula(text: str, inputs: Iterable[str] = ()) -> LinearForm:
    """Compile a formula into a :class:`LinearForm`.

    ``inputs`` adds input names to :data:`BUILTIN_INPUTS`. Raises ValueError with a short
    reason when the formula is not a linear combination of known inputs. Division by a
    constant is exact when it can be (``/ 2``) and rounded to 28 significant digits when
    it cannot (``/ 3``).
    """
    if not isinstance(text, str):
        raise ValueError("a formula is a string")
    known = set(BUILTIN_INPUTS) | {normalize_input_name(n) for n in inputs}
    src = " ".join(text.split())  # newlines/tabs of multi-line TOML strings -> spaces
    if not src:
        raise ValueError("empty formula")
    if len(src) > MAX_FORMULA_LENGTH:
        raise ValueError(f"formula longer than {MAX_FORMULA_LENGTH} characters")
    src = _DOLLAR_RE.sub("", src)
    try:
        with warnings.catch_warnings():  # e.g. "1 (2)" warns "int is not callable"
            warnings.simplefilter("ignore")
            tree = ast.parse(src, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not a valid expression ({exc.msg})") from None
    except (ValueError, MemoryError, RecursionError):
        raise ValueError("not a valid expression") from None
    try:
        with localcontext() as ctx:
            ctx.prec = 28
            form = _linear(tree.body, src, known)
    except RecursionError:
        raise ValueError("formula nested too deeply") from None
    except InvalidOperation:
        raise ValueError("formula arithmetic out of range") from None
    for value in (form.constant, *form.coefficients.values()):
        if not value.is_finite() or abs(value) > MAX_ABS:
            raise ValueError("a constant or coefficient exceeds 10^15 in absolute value")
    return form


def _linear(node: ast.expr, src: str, known: set[str]) -> LinearForm:
    """Recursive fold of an expression AST into a linear form."""
    text = ast.get_source_segment(src, node) or type(node).__name__
    if isinstance(node, ast.Constant):
        value = node.value
        if not _is_number(value):
            raise ValueError(f"{text} is not a number")
        # Decimal from the literal's source text: 0.1 stays exactly 0.1 (not the float).
        number = Decimal(value) if isinstance(value, int) else Decimal(text)
        if not number.is_finite() or abs(number) > MAX_ABS:
            raise ValueError(f"number {text} is out of range")
        return LinearForm(number)
    if isinstance(node, ast.Name):
        name = normalize_input_name(node.id)
        if name not in known:
            raise ValueError(f"unknown input {node.id}")
        return LinearForm(Decimal(0), {name: Decimal(1)})
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        operand = _linear(node.operand, src, known)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        if type(node.op) in _OPERATOR_TEXT:
            raise ValueError(f"operator {_OPERATOR_TEXT[type(node.op)]} is not linear ({text})")
        left = _linear(node.left, src, known)
        right = _linear(node.right, src, known)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            if left.is_constant:
                return right.scaled(left.constant)
            if right.is_constant:
                return left.scaled(right.constant)
            raise ValueError(f"{text} multiplies two inputs (not linear)")
        if isinstance(node.op, ast.Div):
            if not right.is_constant:
                raise ValueError(f"{text} divides by an input (not linear)")
            if right.constant == 0:
                raise ValueError(f"{text} divides by zero")
            return left.divided(right.constant)
    if isinstance(node, ast.Call):
        raise ValueError(f"function calls are not accepted ({text})")
    if isinstance(node, ast.Compare):
        raise ValueError(f"comparisons are not accepted ({text})")
    raise ValueError(f"{text} is not accepted")


# --------------------------------------------------------------------------- level curve


def generate_levels(
    thresholds: Sequence[int], growth: Sequence[tuple[int, Decimal]] = ()
) -> tuple[LevelRow, ...]:
    """Level rows from explicit thresholds (levels 1..N) and growth tiers.

    Past level N, increment(L -> L+1) = round_half_up(increment(L-1 -> L) * factor), the
    factor being that of the first tier whose ``up_to_level`` >= L+1. Rows go up to the
    last tier's ``up_to_level``; the last row's increment (the previous one) then repeats
    forever. Inputs are assumed validated (see :func:`parse_ruleset`); ValueError when a
    threshold reaches 2^63.
    """
    totals = list(thresholds)
    increment = totals[-1] - totals[-2]
    for up_to_level, factor in growth:
        while len(totals) < up_to_level:
            increment = int((increment * factor).to_integral_value(rounding=ROUND_HALF_UP))
            totals.append(totals[-1] + increment)
            if totals[-1] >= THRESHOLD_LIMIT:
                raise ValueError(f"level {len(totals)} threshold {totals[-1]} reaches 10^18")
    rows = []
    for index, threshold in enumerate(totals):
        is_last = index == len(totals) - 1
        step = increment if is_last else totals[index + 1] - threshold
        rows.append(LevelRow(index + 1, threshold, step, is_last))
    return tuple(rows)


# --------------------------------------------------------------------------- line finder

_HEADER_RE = re.compile(r"""^\s*(\[\[?)\s*([A-Za-z0-9_\-."' ]+?)\s*\]\]?\s*(?:#.*)?$""")
_KEY_PART = r"""(?:"(?:[^"\\]|\\.)*"|'[^']*'|[A-Za-z0-9_-]+)"""
# A key line: ``key =`` or a dotted ``a.b.key =`` (the table a.b, relative to the current one).
_KEY_RE = re.compile(rf"""^\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*=""")

# () root, ("levels",), ("rules", k) for the k-th [[rules]], ("rules", k, "cap") for its [rules.cap]
_Table = tuple[Any, ...]


def _huge_integer(node: Any, path: tuple[Any, ...] = ()) -> tuple[_Table, str | None] | None:
    """(table, key) of the first integer too long to show (Python converts at most 4,300
    digits to text), else None."""
    if isinstance(node, dict):
        items: Iterable[tuple[Any, Any]] = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        if isinstance(node, int) and not isinstance(node, bool) and node.bit_length() > 13_000:
            keys = list(path)
            while keys and not isinstance(keys[-1], str):
                keys.pop()  # an element of an array: the array's key
            return (tuple(keys[:-1]), keys[-1]) if keys else ((), None)
        return None
    for name, value in items:
        found = _huge_integer(value, (*path, name))
        if found is not None:
            return found
    return None


def _uncommented(line: str) -> str:
    """The line up to its comment: a ``#`` outside strings (a comment may hold quotes)."""
    quote: str | None = None
    i = 0
    while i < len(line):
        if quote is None:
            triple = line[i : i + 3]
            if triple in ('"""', "'''"):
                quote, i = triple, i + 3
                continue
            if line[i] == "#":
                return line[:i]
            if line[i] in "\"'":
                quote = line[i]
        elif line[i] == "\\" and quote in ('"', '"""'):
            i += 1  # an escaped character
        elif line.startswith(quote, i):
            i += len(quote)
            quote = None
            continue
        i += 1
    return line


class _Lines:
    """Maps (table, key) to line numbers in the raw TOML (tomllib keeps none).

    A light scan, not a TOML parser: headers ``[t]`` / ``[[t]]`` and lines starting with
    ``key =``; text inside multi-line strings is skipped.
    """

    def __init__(self, text: str) -> None:
        # TOML breaks lines at LF (CRLF) only; str.splitlines() also at U+2028, U+0085...,
        # which may stand inside a string, and would shift every later line number.
        self.lines = [line.removesuffix("\r") for line in text.split("\n")]
        self.headers: dict[_Table, int] = {}
        self.keys: dict[tuple[_Table, str], int] = {}
        counts: dict[str, int] = {}
        table: _Table = ()
        in_string: str | None = None
        for number, raw in enumerate(self.lines, 1):
            if in_string is not None:
                if raw.count(in_string) % 2 == 1:
                    in_string = None
                continue
            header = _HEADER_RE.match(raw)
            if header:
                name = re.sub(r"""[\s"']""", "", header.group(2))
                if header.group(1) == "[[":
                    table = (name, counts.get(name, 0))
                    counts[name] = table[1] + 1
                else:  # [rules.cap]: a sub-table of the last [[rules]]
                    parent = max((p for p in counts if name.startswith(f"{p}.")), key=len, default="")
                    table = (parent, counts[parent] - 1, name[len(parent) + 1 :]) if parent else (name,)
                self.headers.setdefault(table, number)
                continue
            key = _KEY_RE.match(raw)
            if key:
                parts = [part.strip().strip("\"'") for part in re.findall(_KEY_PART, key.group(1))]
                self.keys.setdefault(((*table, *parts[:-1]), parts[-1]), number)
                if len(parts) > 1:  # levels.thresholds = ...: the table levels starts here too
                    self.headers.setdefault((*table, *parts[:-1]), number)
                if all(isinstance(t, str) for t in table):  # rules = [{...}, ...]: each table's line
                    name = ".".join((*table, *parts))
                    for index, line in enumerate(self._inline_tables(number, key.end())):
                        self.headers.setdefault((name, index), line)
            for quote in ('"""', "'''"):
                if _uncommented(raw).count(quote) % 2 == 1:
                    in_string = quote
                    break

    def _inline_tables(self, number: int, column: int) -> list[int]:
        """Lines of the inline tables ``{...}`` of the array that starts after column
        ``column`` of line ``number`` (``rules = [``), in order; none if no array starts there.

        TOML writes an inline table on one line: that line names every key in it.
        """
        found: list[int] = []
        depth = 0  # brackets and braces open, the array's own included
        quote: str | None = None
        for at in range(number, len(self.lines) + 1):
            line = self.lines[at - 1]
            i = column if at == number else 0
            while i < len(line):
                if quote is not None:
                    if line[i] == "\\" and quote in ('"', '"""'):
                        i += 2
                        continue
                    if line.startswith(quote, i):
                        i, quote = i + len(quote), None
                        continue
                elif line[i] == "#":
                    break
                elif line[i : i + 3] in ('"""', "'''"):
                    quote, i = line[i : i + 3], i + 3
                    continue
                elif line[i] in "\"'":
                    quote = line[i]
                elif line[i] in "[{":
                    if depth == 0 and line[i] != "[":
                        return found  # a value that is no array
                    if depth == 1 and line[i] == "{":
                        found.append(at)
                    depth += 1
                elif line[i] in "]}":
                    depth -= 1
                    if depth == 0:
                        return found
                elif depth == 0 and not line[i].isspace():
                    return found  # a value that is no array
                i += 1
            if quote in ('"', "'"):  # a one-line string does not go on
                quote = None
        return found

    def line(self, table: _Table, key: str | None = None) -> int | None:
        """Line of ``key`` in ``table``, else of the table's header, else None."""
        if key is not None and (table, key) in self.keys:
            return self.keys[(table, key)]
        return self.headers.get(table)

    def nth_containing(self, start: int | None, word: str, n: int) -> int | None:
        """Line of the n-th (0-based) line at or after ``start`` containing ``word``."""
        if start is None:
            return None
        seen = 0
        for number in range(start, len(self.lines) + 1):
            if word in self.lines[number - 1]:
                if seen == n:
                    return number
                seen += 1
        return None


# --------------------------------------------------------------------------- parser


class _Parser:
    def __init__(self, text: str, path: str | None) -> None:
        self.text = text
        self.path = path
        self.lines = _Lines(text)
        self.inputs: set[str] = set(BUILTIN_INPUTS)

    def error(
        self,
        what: str,
        accepted: str,
        table: _Table = (),
        key: str | None = None,
        line: int | None = None,
    ) -> ConfigError:
        if line is None:
            line = self.lines.line(table, key)
        return ConfigError(what, path=self.path, line=line, accepted=accepted)

    def check_keys(
        self,
        data: Mapping[str, Any],
        allowed: Sequence[str],
        table: _Table,
        where: str,
        line: int | None = None,
    ) -> None:
        for key in data:
            if key not in allowed:
                raise self.error(
                    f"unknown key {key!r} in {where}", ", ".join(allowed), table, key, line
                )

    # -- top level

    def parse(self) -> RuleSet:
        try:
            data = tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            found = re.search(r"at line (\d+)", str(exc))
            raise ConfigError(
                f"invalid TOML: {exc}",
                path=self.path,
                line=int(found.group(1)) if found else None,
                accepted="TOML 1.0",
            ) from None
        except ValueError:  # a decimal integer longer than Python reads (4,300 digits)
            raise ConfigError(
                "invalid TOML: an integer of more than 4300 digits", path=self.path, line=None,
                accepted="numbers up to 10^15 (thresholds below 10^18)",
            ) from None
        huge = _huge_integer(data)
        if huge is not None:  # (a hex one parses; showing it would fail)
            table, key = huge
            raise self.error(
                "an integer of more than 3900 digits", "numbers up to 10^15 (thresholds below 10^18)", table, key
            )
        self.check_keys(data, _ROOT_KEYS, (), "the ruleset")

        name = data.get("name")
        if name is None:
            raise self.error("missing key 'name'", 'name = "[a-z0-9][a-z0-9_-]{0,62}"', line=1)
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise self.error(
                f"invalid ruleset name {name!r}", "[a-z0-9][a-z0-9_-]{0,62}", (), "name"
            )
        description = self.optional_text(data, (), "description")
        timezone = self.parse_timezone(data.get("timezone"))
        balance_floor = self.parse_floor(data)
        self.parse_inputs(data)
        levels = self.parse_levels(data.get("levels"))

        rules_data = data.get("rules")
        if rules_data is None:
            raise self.error("no [[rules]]", "at least one [[rules]] table", line=None)
        if not isinstance(rules_data, list) or not all(isinstance(r, dict) for r in rules_data):
            raise self.error("'rules' must be an array of tables", "[[rules]] tables", (), "rules")
        if not rules_data:
            raise self.error("no [[rules]]", "at least one [[rules]] table", (), "rules")
        rules: list[Rule] = []
        seen: dict[str, int] = {}
        groups: dict[str, Rule] = {}  # group -> its first rule
        for index, rule_data in enumerate(rules_data):
            rule = self.parse_rule(index, rule_data)
            folded = rule.action.casefold()
            if folded in seen:
                raise self.error(
                    f"duplicate action {rule.action!r} (rule {seen[folded] + 1} has it)",
                    "each action code once per ruleset (case-insensitively)",
                    ("rules", index),
                    "action",
                )
            seen[folded] = index
            if rule.group is not None:
                first = groups.setdefault(rule.group, rule)
                if first.cap != rule.cap:
                    raise self.error(
                        f"rule {rule.action}: cap {rule.cap} disagrees with group {rule.group}'s "
                        f"cap {first.cap} (rule {first.action})",
                        "the same cap on every rule of a group",
                        line=self.cap_line(("rules", index)),
                    )
            rules.append(rule)
        return RuleSet(
            name=name,
            description=description,
            balance_floor=balance_floor,
            levels=levels,
            rules=tuple(rules),
            source=self.text,
            path=self.path,
            timezone=timezone,
        )

    def optional_text(self, data: Mapping[str, Any], table: _Table, key: str) -> str | None:
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.error(f"{key} must be a string, got {value!r}", "a string", table, key)
        if "\x00" in value:
            raise self.error(f"{key} holds the character U+0000", "a string without U+0000 (\\u0000), "
                             "which PostgreSQL cannot store", table, key)
        return value

    def parse_timezone(self, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or value not in _timezones():
            raise self.error(
                f"timezone {value!r} is not an IANA time zone name", _ACCEPT_TIMEZONE, (), "timezone"
            )
        return value

    def parse_floor(self, data: Mapping[str, Any]) -> int | None:
        value = data.get("balance_floor")
        if value is None:
            return None
        accepted = "an integer between -10^15 and 0 (omit the key for no floor)"
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(
                f"balance_floor {value!r} is not an integer", accepted, (), "balance_floor"
            )
        if not -MAX_ABS <= value <= 0:
            raise self.error(
                f"balance_floor {value} is out of range", accepted, (), "balance_floor"
            )
        return value

    def parse_inputs(self, data: Mapping[str, Any]) -> None:
        value = data.get("inputs")
        if value is None:
            return
        accepted = 'a list of input names such as "MY_INPUT" (letters, digits, _, $; at most 64)'
        if not isinstance(value, list):
            raise self.error(f"inputs must be a list, got {value!r}", accepted, (), "inputs")
        extra: set[str] = set()
        for item in value:
            if not isinstance(item, str) or not _INPUT_RE.fullmatch(normalize_input_name(item)):
                raise self.error(f"invalid input name {item!r}", accepted, (), "inputs")
            normalized = normalize_input_name(item)
            if normalized in extra:
                raise self.error(f"duplicate input name {item!r}", accepted, (), "inputs")
            extra.add(normalized)
        self.inputs |= extra

    # -- levels

    def parse_levels(self, value: Any) -> tuple[LevelRow, ...]:
        if value is None:  # no [levels]: the default winstory curve
            return generate_levels(DEFAULT_THRESHOLDS, DEFAULT_GROWTH)
        table: _Table = ("levels",)
        if not isinstance(value, dict):
            raise self.error(
                "levels must be a table", "[levels] with thresholds and growth", (), "levels"
            )
        self.check_keys(value, _LEVEL_KEYS, table, "[levels]")
        accepted = (
            "thresholds = a list of at least 2 integers, starting at 0, strictly increasing, "
            "below 2^63"
        )
        thresholds = value.get("thresholds")
        if thresholds is None:
            raise self.error("missing key 'thresholds' in [levels]", accepted, table)
        if (
            not isinstance(thresholds, list)
            or len(thresholds) < 2
            or not all(isinstance(t, int) and not isinstance(t, bool) for t in thresholds)
        ):
            raise self.error(f"invalid thresholds {thresholds!r}", accepted, table, "thresholds")
        if thresholds[0] != 0:
            raise self.error(
                f"thresholds start at {thresholds[0]}, not 0", accepted, table, "thresholds"
            )
        for before, after in zip(thresholds, thresholds[1:]):
            if after <= before:
                raise self.error(
                    f"thresholds are not strictly increasing ({before} then {after})",
                    accepted,
                    table,
                    "thresholds",
                )
        if thresholds[-1] >= THRESHOLD_LIMIT:
            raise self.error(
                f"threshold {thresholds[-1]} reaches 10^18", accepted, table, "thresholds"
            )
        if len(thresholds) > MAX_LEVEL:
            raise self.error(f"more than {MAX_LEVEL} thresholds", accepted, table, "thresholds")

        growth = self.parse_growth(value.get("growth"), len(thresholds))
        try:
            return generate_levels(thresholds, growth)
        except ValueError as exc:
            raise self.error(
                f"level curve overflows: {exc}",
                "growth tiers whose thresholds stay below 2^63",
                table,
                "growth",
            ) from None

    def parse_growth(self, value: Any, count: int) -> list[tuple[int, Decimal]]:
        table: _Table = ("levels",)
        accepted = (
            "growth = a list of { up_to_level = integer, factor = number from 1 to 100 } with "
            f"strictly increasing up_to_level, each > {count} (the last threshold's level) "
            f"and <= {MAX_LEVEL}"
        )
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
            raise self.error(f"invalid growth {value!r}", accepted, table, "growth")
        tiers: list[tuple[int, Decimal]] = []
        previous = count
        for index, tier in enumerate(value):
            # A tier's line: [[levels.growth]] header, else the index-th up_to_level after growth.
            line = (
                self.lines.line(("levels.growth", index))
                or self.lines.nth_containing(
                    self.lines.line(table, "growth"), "up_to_level", index
                )
                or self.lines.line(table, "growth")
            )
            self.check_keys(tier, _TIER_KEYS, table, f"growth tier {index + 1}", line)
            up_to = tier.get("up_to_level")
            factor = tier.get("factor")
            if (
                not isinstance(up_to, int)
                or isinstance(up_to, bool)
                or not previous < up_to <= MAX_LEVEL
            ):
                raise self.error(
                    f"growth tier {index + 1}: invalid up_to_level {up_to!r}", accepted, line=line
                )
            if not _is_number(factor) or not math.isfinite(factor) or factor < 1:
                raise self.error(
                    f"growth tier {index + 1}: invalid factor {factor!r}", accepted, line=line
                )
            if factor > 100:
                raise self.error(
                    f"growth tier {index + 1}: factor {factor!r} above 100", accepted, line=line
                )
            tiers.append((up_to, Decimal(str(factor))))
            previous = up_to
        return tiers

    # -- rules

    def parse_rule(self, index: int, data: Mapping[str, Any]) -> Rule:
        table: _Table = ("rules", index)
        self.check_keys(data, _RULE_KEYS, table, f"rule {index + 1}")

        action = data.get("action")
        if action is None:
            raise self.error(f"rule {index + 1}: missing key 'action'", 'action = "A_CODE"', table)
        if not isinstance(action, str) or not _ACTION_RE.fullmatch(action):
            raise self.error(
                f"rule {index + 1}: invalid action {action!r}",
                "[A-Za-z][A-Za-z0-9_]{0,63}",
                table,
                "action",
            )
        if action.upper() in RESERVED_ACTIONS:
            raise self.error(
                f"rule {index + 1}: action {action!r} is reserved for pyxp's own rows",
                "any other action code (REVERSAL and RULES_ADJUSTMENT are pyxp's)",
                table,
                "action",
            )
        where = f"rule {action}"

        event = data.get("event")
        known_events = ", ".join(KNOWN_EVENTS)
        event_accepted = f"{known_events}, or a custom event such as shop.purchase"
        if event is not None:
            if not isinstance(event, str) or not (
                event in KNOWN_EVENTS or _CUSTOM_EVENT_RE.fullmatch(event) and len(event) <= 128
            ):
                raise self.error(
                    f"{where}: invalid event {event!r}", event_accepted, table, "event"
                )

        campaign_types = self.parse_campaign_types(data.get("campaign_types"), table, where)

        condition = data.get("condition")
        if condition is not None:
            if event is None:
                raise self.error(
                    f"{where}: a condition needs an event",
                    "condition only together with event",
                    table,
                    "condition",
                )
            condition = self.parse_condition(condition, event, table, where)

        if "earn_xp" not in data and "lose_xp" not in data:
            raise self.error(
                f"{where}: missing earn_xp or lose_xp",
                f"earn_xp and/or lose_xp: {_ACCEPT_NUMBER}",
                table,
            )
        earn, earn_text = self.parse_amount(data.get("earn_xp"), table, "earn_xp", where)
        lose, lose_text = self.parse_amount(data.get("lose_xp"), table, "lose_xp", where)
        xp = earn - lose
        for value in (xp.constant, *xp.coefficients.values()):
            if abs(value) > MAX_ABS:
                raise self.error(
                    f"{where}: earn_xp - lose_xp exceeds 10^15", _ACCEPT_NUMBER, table, "earn_xp"
                )
        # Human-readable formula; a side equal to 0 (e.g. the seeds' `lose_xp: 0`) is omitted.
        # A plain number needs no parentheses: -50, not -(50).
        lose_shown = lose_text if lose_text is None or re.fullmatch(r"[0-9.]+", lose_text) else f"({lose_text})"
        if lose_shown is None:
            formula = earn_text or "0"
        elif earn_text is None:
            formula = f"-{lose_shown}"
        else:
            formula = f"{earn_text} - {lose_shown}"
        self.check_flow_can_apply(event, campaign_types, condition, xp, table, where)
        cap = self.parse_cap(data.get("cap"), table, where)
        group = data.get("group")
        if group is not None:
            if not isinstance(group, str) or not _GROUP_RE.fullmatch(group):
                raise self.error(
                    f"{where}: invalid group {group!r}", "[a-z][a-z0-9_-]{0,62}", table, "group"
                )
            if cap is None:
                raise self.error(
                    f"{where}: group {group} needs a cap: every rule of a group carries the same cap",
                    f"group together with {_ACCEPT_CAP}",
                    table,
                )
        return Rule(
            action=action,
            event=event,
            campaign_types=campaign_types,
            condition=condition,
            formula=formula,
            xp=xp,
            description=self.optional_text(data, table, "description"),
            cap=cap,
            group=group,
        )

    def check_flow_can_apply(self, event: str | None, campaign_types: tuple[str, ...] | None,
                             condition: str | None, xp: LinearForm, table: _Table, where: str) -> None:
        """A rule of a flow's event that no call of that flow could ever apply is a config
        error (a hostile test, 2026-11-27: a vote rule using a price was accepted, and every vote
        was then refused; an onboarding rule for B2C only never fired, yet used the client's key)."""
        if event not in FLOW_INPUTS:
            return
        passed = FLOW_INPUTS[event]
        if event == "completion.submitted" and condition == "free":
            passed = tuple(name for name in passed if name != "PRICE_COMPLETION")  # a free mission has no price
        missing = sorted(set(xp.coefficients) - set(passed))
        if missing:
            key = "earn_xp" if (table, "earn_xp") in self.lines.keys else "lose_xp"
            raise self.error(
                f"{where}: {event}{' (' + condition + ')' if condition else ''} passes no input "
                f"{', '.join(missing)}: the rule could never apply",
                f"for {event}: a formula of " + (", ".join(passed) if passed else "no input (a number)"),
                table,
                key,
            )
        if event == "client.onboarded" and campaign_types is not None and ONBOARDING_TYPE not in campaign_types:
            raise self.error(
                f"{where}: client.onboarded always passes campaign type {ONBOARDING_TYPE}: the rule could never apply",
                f"campaign_types including {ONBOARDING_TYPE}, or none",
                table,
                "campaign_types",
            )

    def cap_line(self, table: _Table, key: str | None = None) -> int | None:
        """Line of a rule's ``cap = {...}`` (or ``cap.key =``); for a ``[rules.cap]`` sub-table,
        the line of ``key`` in it, else its header."""
        sub: _Table = (*table, "cap")
        if sub in self.lines.headers:
            return self.lines.line(sub, key)
        return self.lines.line(table, "cap")

    def parse_cap(self, value: Any, table: _Table, where: str) -> Cap | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.error(
                f"{where}: cap must be a table, got {value!r}", _ACCEPT_CAP, line=self.cap_line(table)
            )
        for key in value:
            if key not in _CAP_KEYS:
                raise self.error(
                    f"{where}: unknown key {key!r} in cap", _ACCEPT_CAP, line=self.cap_line(table, key)
                )
        max_xp, per = value.get("max_xp"), value.get("per")
        if not isinstance(max_xp, int) or isinstance(max_xp, bool) or not 1 <= max_xp <= MAX_ABS:
            what = "missing key 'max_xp' in cap" if max_xp is None else f"invalid cap max_xp {max_xp!r}"
            raise self.error(f"{where}: {what}", _ACCEPT_CAP, line=self.cap_line(table, "max_xp"))
        if not isinstance(per, str) or per.lower() not in CAP_PERIODS:
            what = "missing key 'per' in cap" if per is None else f"invalid cap per {per!r}"
            raise self.error(f"{where}: {what}", _ACCEPT_CAP, line=self.cap_line(table, "per"))
        return Cap(max_xp, per.lower())

    def parse_campaign_types(
        self, value: Any, table: _Table, where: str
    ) -> tuple[str, ...] | None:
        if value is None:
            return None
        accepted = (
            "a non-empty list of B2C, AGENCY_B2C, INDIVIDUAL (any case, or FOR_B2C, "
            "FOR_AGENCY_B2C, FOR_INDIVIDUAL); omit the key for all types"
        )
        if not isinstance(value, list) or not value:
            raise self.error(
                f"{where}: invalid campaign_types {value!r}", accepted, table, "campaign_types"
            )
        result: list[str] = []
        for item in value:
            try:
                if not isinstance(item, str):
                    raise ValueError
                canonical = normalize_campaign_type(item)
            except ValueError:
                raise self.error(
                    f"{where}: unknown campaign type {item!r}", accepted, table, "campaign_types"
                ) from None
            if canonical in result:
                raise self.error(
                    f"{where}: campaign type {item!r} listed twice",
                    accepted,
                    table,
                    "campaign_types",
                )
            result.append(canonical)
        return tuple(result)

    def parse_condition(self, value: Any, event: str, table: _Table, where: str) -> str:
        if event in KNOWN_EVENTS:
            allowed = KNOWN_EVENTS[event]
            accepted = (
                f"for {event}: " + ", ".join(allowed) + " (or no condition)"
                if allowed
                else f"no condition for {event}"
            )
            if isinstance(value, str):
                for candidate in allowed:  # case-insensitive, stored in canonical spelling
                    if candidate.casefold() == value.casefold():
                        return candidate
            raise self.error(
                f"{where}: invalid condition {value!r} for event {event}",
                accepted,
                table,
                "condition",
            )
        if not isinstance(value, str) or not _CUSTOM_CONDITION_RE.fullmatch(value):
            raise self.error(
                f"{where}: invalid condition {value!r}", "[A-Za-z0-9_]{1,64}", table, "condition"
            )
        return value

    def parse_amount(
        self, value: Any, table: _Table, key: str, where: str
    ) -> tuple[LinearForm, str | None]:
        """(linear form, text for the human-readable formula or None when absent/zero)."""
        if value is None:
            return LinearForm(Decimal(0)), None
        if isinstance(value, str):
            try:
                form = compile_formula(value, self.inputs)
            except ValueError as exc:
                names = ", ".join(sorted(self.inputs))
                raise self.error(
                    f"{where}: {key} = {value!r}: {exc}",
                    _ACCEPT_FORMULA.format(names=names),
                    table,
                    key,
                ) from None
            text = " ".join(value.split())
        elif _is_number(value):
            if isinstance(value, float) and not math.isfinite(value):
                raise self.error(
                    f"{where}: {key} = {value!r} is not finite", _ACCEPT_NUMBER, table, key
                )
            number = Decimal(value) if isinstance(value, int) else Decimal(str(value))
            if abs(number) > MAX_ABS:
                raise self.error(
                    f"{where}: {key} = {value!r} is out of range", _ACCEPT_NUMBER, table, key
                )
            form = LinearForm(number)
            text = _dec_str(number)
        else:
            kind = "a boolean" if isinstance(value, bool) else type(value).__name__
            raise self.error(
                f"{where}: {key} = {value!r} is {kind}, not a number", _ACCEPT_NUMBER, table, key
            )
        form = form.rounded()
        if form.is_constant and form.constant == 0:
            return form, None
        return form, text


# --------------------------------------------------------------------------- entry points


def parse_ruleset(text: str, path: str | None = None) -> RuleSet:
    """Compile a ruleset from TOML text; ``path`` only names the file in errors."""
    return _Parser(text, path).parse()


def _shipped_dir() -> Traversable:
    return resources.files("pyxp") / "rulesets"


def shipped_rulesets() -> list[str]:
    """Names of the rulesets shipped inside the package, sorted."""
    return sorted(
        entry.name[: -len(".toml")]
        for entry in _shipped_dir().iterdir()
        if entry.name.endswith(".toml") and entry.is_file()
    )


def load_ruleset(name_or_path: str) -> RuleSet:
    """A shipped ruleset by name (``winstory``, ``winstory-flows``) or a .toml file by path."""
    shipped = shipped_rulesets()
    if name_or_path in shipped:
        resource = _shipped_dir() / f"{name_or_path}.toml"
        return parse_ruleset(resource.read_text(encoding="utf-8"), str(resource))
    accepted = f"a shipped ruleset name ({', '.join(shipped)}) or the path of a .toml file"
    path = Path(name_or_path)
    if not path.is_file():
        raise ConfigError(
            f"no ruleset named {name_or_path!r} and no such file", path=None, accepted=accepted
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read ruleset: {exc}", path=str(path), accepted=accepted
        ) from None
    return parse_ruleset(text, str(path))
