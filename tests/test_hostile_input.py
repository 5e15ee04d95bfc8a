"""Hostile input to every public SQL function (SPEC sections 5 and 6), property-tested.

Property, for each call: it either succeeds — and then ``pyxp.audit()`` finds
nothing (balances equal their ledger sums, balance_after chains, levels match
the curve) — or it fails with a SQLSTATE of class ``PX``, never another one
(22003 overflow, 22P02, 54001 stack depth, XX000, 42883, 23505 ...), and a
failed call writes nothing (``database_state`` equal before and after). A call
also ends within a statement timeout (10 s; else 57014): hostile input must
not hold a backend for minutes.

Each call runs in its own transaction on its own connection (not the
observer's); every argument is sent as text and cast to the parameter's type
in the statement (``%(x)s::numeric``), so 'NaN' and 'Infinity' reach the
functions.

Generated arguments: wrong-but-castable values (numbers, booleans, dates,
uuids, JSON written as text parameters; ' 42 ', '+Infinity', float reprs as
numerics; 't', 'yes', 'on' as booleans), NULL, left-out optional parameters,
huge / negative / NaN / ±Infinity numerics, bigint and integer extremes,
unicode (RTL, emoji, combining characters; NUL is impossible in PostgreSQL
text and is never generated), control characters, SQL fragments, strings up
to 100,000 characters, JSON up to 1000 levels deep or about 1 MB.

The one accepted exception: a JSON document so deep that PostgreSQL's own
jsonb input parser refuses it (54001, or 22P02) while casting the caller's
literal, before any pyxp function runs. Such a literal is first cast to jsonb
alone; when that fails the example is skipped (and counted), so the property
only judges what the functions themselves do.

Each test uses one database for its whole hypothesis run. Profiles: ``ci``
(default, derandomized) and ``full`` (PYXP_HYPOTHESIS_PROFILE=full, >= 10,000
calls). The number of calls is printed when the module ends.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from conftest import database_state
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# --------------------------------------------------------------------------- profiles

EXAMPLES_PER_FUNCTION = {"ci": 120, "full": 720}  # 15 functions: 1800 / 10,800 calls
DEEP_JSON_EXAMPLES = {"ci": 30, "full": 150}  # per JSON parameter (3)
_COMMON: dict[str, Any] = {
    "deadline": None,
    "database": None,  # no .hypothesis directory in the repository
    "print_blob": True,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                              HealthCheck.data_too_large, HealthCheck.large_base_example,
                              HealthCheck.filter_too_much],
}
settings.register_profile("ci", max_examples=EXAMPLES_PER_FUNCTION["ci"], derandomize=True, **_COMMON)
settings.register_profile("full", max_examples=EXAMPLES_PER_FUNCTION["full"], derandomize=False, **_COMMON)
PROFILE = os.environ.get("PYXP_HYPOTHESIS_PROFILE", "ci")
# Applied per test (not loaded globally) so other modules keep their own settings.
HYPOTHESIS_SETTINGS = settings.get_profile(PROFILE)

# A call slower than this is a failure too (57014): hostile input must not hold a backend.
STATEMENT_TIMEOUT = "10s"

CALLS: Counter[str] = Counter()  # pyxp function calls made, per function
SKIPPED: Counter[str] = Counter()  # examples skipped: jsonb literal refused by PostgreSQL's parser
OUTCOMES: Counter[str] = Counter()  # "success" or the PX code, over all calls


@pytest.fixture(scope="module", autouse=True)
def report_call_count(request: pytest.FixtureRequest) -> Iterator[None]:
    """Prints how many calls the module made (outside pytest's output capture)."""
    started = time.monotonic()
    yield
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n[test_hostile_input] profile {PROFILE}: {sum(CALLS.values())} generated SQL calls in "
              f"{time.monotonic() - started:.1f} s {dict(sorted(CALLS.items()))}; skipped (jsonb "
              f"literal too deep for PostgreSQL's parser): {sum(SKIPPED.values())}; outcomes: "
              f"{dict(OUTCOMES.most_common())}", file=sys.stderr)


# --------------------------------------------------------------------------- values

OMIT = object()  # leave an optional parameter out (its SQL default applies)

SQL_FRAGMENTS = [
    "'; DROP TABLE pyxp.xp_transactions; --", "$$", "$x$ SELECT 1 $x$", "%s", "%(wallet)s", "%", "%%",
    "\\", "\\\\", "'", "''", '"', '";--', "--", "/*", "*/", ";", "$1", "?", ":name", "NULL", "null",
    "') OR ('1'='1", "0x_creator'; DELETE FROM pyxp.xp_balances; --", "pyxp.xp_transactions",
    "E'\\x41'", "\\x00", "\\u0000", "{}", "[]", '{"a": 1}', "U&'\\0041'", "DEFAULT", "ROW(1)",
]
UNICODE_TEXTS = [
    "مرحبا بالعالم", "שלום עולם", "\u202eevil\u202c", "\u200fRTL\u200e", "👩‍👩‍👧‍👦", "🦄" * 40,
    "e\u0301" * 70, "Z̴̡̛̤͈̏̈́a̷l̸g̵o̶", "\ufeff0x_creator", "0x_creator\u200b", "\u00a0", "\u2028", "\u3000",
    "İ" * 130, "ß" * 128, "ﬃ", "\U0010ffff", "\ue000", "𝕏𝕐", "ǅ", "Ⅻ", "٣٤٥", "中文钱包",
]
CONTROL_TEXTS = ["\t", "\n", "\r\n", "\x01", "\x1b[31mred", "\x7f", "\x85", "\x9f", "a\tb", "\x0b", "\x0c",
                 "0x_creator\n", "\n0x_creator"]
WHITESPACE_TEXTS = ["", " ", "   ", "\t\t", " \u00a0 "]
OTHER_TYPES_AS_TEXT = ["0", "-1", "1e15", "NaN", "Infinity", "true", "false", "t", "2024-02-30",
                       "2024-01-01 00:00:00+00", "00000000-0000-0000-0000-000000000000",
                       "9223372036854775808", "[1,2]", '{"wallet": "x"}', "(1,2)", "{a,b}"]
SPECIAL_TEXTS = SQL_FRAGMENTS + UNICODE_TEXTS + CONTROL_TEXTS + WHITESPACE_TEXTS + OTHER_TYPES_AS_TEXT

TEXT_CHARS = st.characters(codec="utf-8", exclude_characters="\x00")  # no NUL, no surrogates
LENGTHS = st.one_of(
    st.sampled_from([63, 64, 65, 127, 128, 129, 199, 200, 201, 253, 254, 255, 256, 257, 500, 501,
                     4096, 16385, 100_000]),
    st.integers(0, 100_000))
REPEATED_UNITS = ["a", " ", "é", "👍", "x'", "\t", "0", "%s", "\\", "e\u0301", "$$"]


def repeated(unit: str, length: int) -> str:
    """``unit`` repeated up to ``length`` characters (code points)."""
    return (unit * (length // len(unit) + 1))[:length]


short_text = st.one_of(st.sampled_from(SPECIAL_TEXTS), st.text(TEXT_CHARS, max_size=30))
long_text = st.builds(repeated, st.one_of(st.sampled_from(REPEATED_UNITS), st.text(TEXT_CHARS, min_size=1,
                                                                                   max_size=3)), LENGTHS)
other_type_text = st.one_of(st.integers().map(str), st.floats().map(str), st.booleans().map(str),
                            st.dates().map(str), st.uuids().map(str))
hostile_text = st.one_of(
    short_text, long_text, other_type_text,
    st.builds(lambda a, b: a + b, st.sampled_from(SPECIAL_TEXTS), st.text(TEXT_CHARS, max_size=10)),
)


def text_arg(*plausible: str) -> st.SearchStrategy[str | None]:
    """Plausible values (so that calls get deep and sometimes succeed), hostile text, NULL."""
    return st.one_of(st.sampled_from(plausible), hostile_text, st.none()) if plausible else st.one_of(
        hostile_text, st.none())


WALLETS = ("0x_creator", "0x_agency", "0x_moderator", "0x_completer", "0x_user", "0x_client",
           "0x52908400098527886E0F7030069857D2E4169EE7", " 0x_padded\t")
CAMPAIGNS = ("camp-b2c", "camp-agency", "camp-ind", "camp-new")
COMPLETIONS = ("done-1", "done-2", "done-3")
EMAILS = ("client@example.com", " CLIENT@Example.COM ", "other@example.org", "a@b.co", "a@b", "@b.co",
          "a@@b.co", "a@b..co", "a b@c.de", "ü@ß.de", "x@" + "y" * 250 + ".com", "a%s@b.co",
          "'; DROP TABLE pyxp.agency_b2c_clients; --@x.io")
CAMPAIGN_TYPES = ("B2C", "AGENCY_B2C", "INDIVIDUAL", "for_b2c", " Individual ", "FOR_AGENCY_B2C", "B2B")
VOTES = ("VALID", "REFUSE", "valid", " refuse ", "VALIDE", "REFUSED")
ACTIONS = ("B2C_MINT", "OPTION_WINSTORY_VIDEO", "CAMPAIGN_APPROVED", "MODERATION_VALIDATED_BY_MODERATOR",
           "MODERATION_REFUSED_BY_MODERATOR", "Completion_Submit_B2C_Paid", "Completion_Refused_B2C",
           "Completion_Submit_Individual", "Completion_Refused_Individual", "B2C_CLIENT_ONBOARDED",
           "b2c_mint", "REVERSAL")
PARAM_NAMES = ("PRICE_COMPLETION", "MINT_VALUE_WINC", "MINT_VALUE_$WINC", "mint_value_$winc", "MINT_VALUE")

NUMERIC_TEXTS = [
    "NaN", "nan", "Infinity", "-Infinity", "+Infinity", "inf", "-inf", "0", "-0", "0.0", "1e15",
    "1000000000000000", "1000000000000000.0000001", "1000000000000001", "999999999999999.5", "0.5", "1.5",
    "2.5", "-0.5", "-1", " 42 ", "1e-1000", "-1e-1000", "1e1000", "1e131071", "9223372036854775807",
    "9223372036854775808", "-9223372036854775809", "4611686018427387904", "1.7976931348623157e308",
    "5e-324", "123456789012345678901234567890.123456789012345678901234567890",
]
numeric_arg = st.one_of(
    st.sampled_from(NUMERIC_TEXTS),
    st.integers(-10**30, 10**30).map(str),
    st.integers(-(10**1000), 10**1000).map(str),
    st.decimals(min_value=-10**20, max_value=10**20, allow_nan=False, allow_infinity=False).map(str),
    st.floats().map(repr),  # includes nan, inf, -inf, -0.0, subnormals
    st.none(),
)
BIGINT_EXTREMES = [-2**63, -2**63 + 1, -2**62 - 1, -2**62, -1, 0, 1, 2**31 - 1, 2**31, 2**53 + 1,
                   2**62, 2**62 + 1, 2**63 - 2, 2**63 - 1]
bigint_arg = st.one_of(
    st.sampled_from(BIGINT_EXTREMES), st.integers(-2**63, 2**63 - 1), st.integers(0, 80),
).map(str) | st.sampled_from([None, " 7 ", "+3", "-0"])
INTEGER_EXTREMES = [-2**31, -2**31 + 1, -1, 0, 1, 50, 999, 1000, 1001, 2**31 - 2, 2**31 - 1]
integer_arg = st.one_of(
    st.sampled_from(INTEGER_EXTREMES), st.integers(-2**31, 2**31 - 1), st.integers(0, 1001),
).map(str) | st.sampled_from([None, " 10 ", "+5"])
boolean_arg = st.sampled_from([None, "true", "false", "t", "f", "yes", "no", "on", "off", "1", "0",
                               "TRUE", " false ", "y", "n"])

# --------------------------------------------------------------------------- JSON values (as text)

json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                        st.floats(allow_nan=False, allow_infinity=False), short_text)
json_value = st.recursive(json_scalar, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(short_text, children, max_size=4)), max_leaves=12)
json_document = st.builds(json.dumps, json_value, ensure_ascii=st.booleans())
RAW_JSON_NUMBERS = ["0", "-0", "1", "-1", "0.5", "2.5", "1e15", "1E15", "1000000000000000",
                    "1000000000000001", "999999999999999.5", "1e400", "-1e400", "1e-400", "1e1000",
                    "123456789012345678901234567890", "3.14159265358979323846264338327950288419716939937510"]
json_number = st.one_of(st.sampled_from(RAW_JSON_NUMBERS), st.integers(-10**20, 10**20).map(str),
                        st.floats(allow_nan=False, allow_infinity=False).map(json.dumps))


def json_object(keys: st.SearchStrategy[str], values: st.SearchStrategy[str], max_size: int = 5
                ) -> st.SearchStrategy[str]:
    """A JSON object written from (key, raw JSON value text) pairs (a key may repeat)."""
    return st.lists(st.tuples(keys, values), max_size=max_size).map(
        lambda pairs: "{" + ",".join(f"{json.dumps(key)}:{value}" for key, value in pairs) + "}")


def nested(depth: int, kind: str, leaf: str) -> str:
    if kind == "array":
        return "[" * depth + leaf + "]" * depth
    if kind == "object":
        return '{"a":' * depth + leaf + "}" * depth
    half = depth // 2  # objects holding arrays
    return '{"a":' * half + "[" * (depth - half) + leaf + "]" * (depth - half) + "}" * half


# Up to ~1000 levels; now and then 10,000 (the parser accepts it) or 100,000 (it does not: skipped).
depth = st.one_of(st.integers(1, 1000), st.integers(1, 1000), st.integers(1, 1000),
                  st.sampled_from([15, 16, 17, 18, 1000, 10_000, 100_000]))
deep_json = st.builds(nested, depth, st.sampled_from(["array", "object", "mixed"]),
                      st.sampled_from(["1", '"x"', "null", "{}", "[]", "1e400"]))


def _many_events(count: int) -> str:
    return json.dumps([{"wallet": f"0x_bulk_{i % 50}", "action": "MODERATION_VALIDATED_BY_MODERATOR",
                        "idempotency_key": f"bulk-{count}-{i}"} for i in range(count)])


# About 1 MB each.
LARGE_JSON = [
    '{"note": "' + "x" * 1_000_000 + '"}',
    "[" + ",".join(["1"] * 400_000) + "]",
    json.dumps({f"k{i}": "v" * 8 for i in range(50_000)}),
    json.dumps({f"P{i}": i for i in range(60_000)}),  # many formula-input-shaped names
    '{"PRICE_COMPLETION": ' + "9" * 100_000 + "}",  # a number of 100,000 digits
    _many_events(10_000),  # the largest batch accepted
    _many_events(10_001),
    json.dumps([{"wallet": "0x_bulk", "action": "B2C_MINT", "idempotency_key": "bulk-big-context",
                 "context": {"note": "y" * 1_000_000}}]),
]
large_json = st.sampled_from(range(len(LARGE_JSON))).map(LARGE_JSON.__getitem__)  # a short repr


EMBEDDINGS = ["itself", "as a value", "as a batch event's params", "as a batch event's context"]


def embedded(document: str, where: str) -> str:
    """A document as itself, as a value inside an object, or inside a batch event."""
    if where == "as a value":
        return '{"PRICE_COMPLETION":' + document + "}"
    if where == "as a batch event's params":
        return ('[{"wallet":"0x_user","action":"CAMPAIGN_APPROVED","idempotency_key":"big",'
                '"params":' + document + "}]")
    if where == "as a batch event's context":
        return ('[{"wallet":"0x_user","action":"CAMPAIGN_APPROVED","idempotency_key":"big",'
                '"context":{"x":' + document + "}}]")
    return document


big_json = st.builds(embedded, st.one_of(deep_json, large_json), st.sampled_from(EMBEDDINGS))

param_value = st.one_of(json_number, json_number, json_document,
                        st.sampled_from(['"NaN"', '"Infinity"', '"-Infinity"', '"1e15"', '"300"', "null"]))
params_arg = st.one_of(
    json_object(st.one_of(st.sampled_from(PARAM_NAMES), short_text), param_value),
    st.just("{}"), json_document, big_json, st.none())
context_value = st.one_of(json_document, st.builds(json.dumps, hostile_text))
context_arg = st.one_of(
    json_object(st.one_of(st.sampled_from(["campaign_id", "subject", "note"]), short_text), context_value),
    st.just("{}"), json_document, big_json, st.none())


def json_string_or_any(plausible: tuple[str, ...]) -> st.SearchStrategy[str]:
    """A field of a batch event: usually a string, sometimes any JSON value."""
    return st.one_of(st.sampled_from(plausible).map(json.dumps), st.builds(json.dumps, hostile_text),
                     json_document)


event = st.fixed_dictionaries({}, optional={
    "wallet": json_string_or_any(WALLETS),
    "action": json_string_or_any(ACTIONS),
    "idempotency_key": json_string_or_any(("k-1", "k-2", "k-3", "campaign.created:camp-b2c")),
    "params": st.one_of(json_object(st.sampled_from(PARAM_NAMES), param_value, 2), json_document),
    "context": st.one_of(json_object(st.sampled_from(["campaign_id", "subject", "note"]), context_value, 2),
                         json_document),
}).map(lambda fields: "{" + ",".join(f"{json.dumps(name)}:{value}" for name, value in fields.items()) + "}")
plausible_event = st.fixed_dictionaries({
    "wallet": st.sampled_from(WALLETS).map(json.dumps),
    "action": st.sampled_from(ACTIONS).map(json.dumps),
    "idempotency_key": st.builds(json.dumps, hostile_text),
}, optional={"params": json_object(st.sampled_from(PARAM_NAMES), json_number, 2)}).map(
    lambda fields: "{" + ",".join(f"{json.dumps(name)}:{value}" for name, value in fields.items()) + "}")
events_arg = st.one_of(
    st.lists(st.one_of(plausible_event, plausible_event, event), max_size=6).map(
        lambda items: "[" + ",".join(items) + "]"),
    st.lists(st.one_of(event, json_document), max_size=4).map(lambda items: "[" + ",".join(items) + "]"),
    json_document, big_json, st.none())

# --------------------------------------------------------------------------- the functions


def param(name: str, sql_type: str, values: st.SearchStrategy[Any], optional: bool = False
          ) -> tuple[str, str, st.SearchStrategy[Any]]:
    return name, sql_type, st.one_of(st.just(OMIT), values) if optional else values


wallet = text_arg(*WALLETS)
campaign = text_arg(*CAMPAIGNS)
completion = text_arg(*COMPLETIONS)
campaign_type = text_arg(*CAMPAIGN_TYPES)
vote = text_arg(*VOTES)
email = text_arg(*EMAILS)

FUNCTIONS: dict[str, list[tuple[str, str, st.SearchStrategy[Any]]]] = {
    "award": [param("wallet", "text", wallet), param("action", "text", text_arg(*ACTIONS)),
              param("idempotency_key", "text", text_arg()),
              param("params", "jsonb", params_arg, True), param("context", "jsonb", context_arg, True)],
    "award_many": [param("events", "jsonb", events_arg)],
    "reverse_transaction": [param("transaction_id", "bigint", bigint_arg),
                            param("reason", "text", text_arg("duplicate", "mistake"))],
    "award_campaign_creation": [
        param("creator_wallet", "text", wallet), param("campaign_id", "text", campaign),
        param("campaign_type", "text", campaign_type), param("mint_value", "numeric", numeric_arg, True),
        param("winstory_creates_video", "boolean", boolean_arg, True),
        param("no_rewards", "boolean", boolean_arg, True)],
    "award_campaign_approval": [param("campaign_id", "text", campaign),
                                param("creator_wallet", "text", wallet, True)],
    "award_moderation_vote": [
        param("moderator_wallet", "text", wallet), param("campaign_id", "text", campaign),
        param("vote_decision", "text", vote), param("campaign_type", "text", campaign_type, True)],
    "award_completion": [
        param("completer_wallet", "text", wallet), param("campaign_id", "text", campaign),
        param("completion_id", "text", completion), param("campaign_type", "text", campaign_type, True),
        param("is_validated", "boolean", boolean_arg, True),
        param("is_refused", "boolean", boolean_arg, True),
        param("is_paid", "boolean", boolean_arg, True),
        param("price_completion", "numeric", numeric_arg, True),
        param("mint_value_winc", "numeric", numeric_arg, True)],
    "award_completion_moderation": [
        param("moderator_wallet", "text", wallet), param("campaign_id", "text", campaign),
        param("completion_id", "text", completion), param("vote_decision", "text", vote),
        param("campaign_type", "text", campaign_type, True)],
    "register_agency_client": [
        param("agency_wallet", "text", wallet), param("client_email", "text", email),
        param("campaign_id", "text", campaign), param("company_name", "text", text_arg("ACME"), True)],
    "onboard_agency_client": [param("client_email", "text", email), param("client_wallet", "text", wallet)],
    "balance": [param("wallet", "text", wallet)],
    "history": [param("wallet", "text", wallet), param("max_rows", "integer", integer_arg, True),
                param("before_id", "bigint", bigint_arg, True)],
    "leaderboard": [param("max_rows", "integer", integer_arg, True),
                    param("offset_rows", "integer", integer_arg, True)],
    "wallet_rank": [param("wallet", "text", wallet)],
    "level_for": [param("total_xp", "bigint", bigint_arg)],
}


def abbreviated(value: Any) -> str:
    if isinstance(value, str) and len(value) > 120:
        return f"{value[:100]!r}... ({len(value)} characters)"
    return repr(value)


class Call:
    """One generated call: the function and its arguments (text or None), optional ones maybe left out."""

    def __init__(self, function: str, arguments: dict[str, tuple[str, str | None]]) -> None:
        self.function = function
        self.arguments = arguments  # name -> (sql type, value)

    def statement(self) -> str:
        named = ", ".join(f"{name} => %({name})s::{sql_type}"
                          for name, (sql_type, _) in self.arguments.items())
        return f"SELECT * FROM pyxp.{self.function}({named})"

    def values(self) -> dict[str, str | None]:
        return {name: value for name, (_, value) in self.arguments.items()}

    def __repr__(self) -> str:
        shown = ", ".join(f"{name} => {abbreviated(value)}::{sql_type}"
                          for name, (sql_type, value) in self.arguments.items())
        return f"pyxp.{self.function}({shown})"


@st.composite
def calls(draw: st.DrawFn, function: str) -> Call:
    """A call of ``function``: a value for each parameter, optional ones maybe left out."""
    arguments = {}
    for name, sql_type, values in FUNCTIONS[function]:
        value = draw(values)
        if value is not OMIT:
            arguments[name] = (sql_type, value)
    return Call(function, arguments)


CALL_STRATEGIES = {function: calls(function) for function in FUNCTIONS}


# --------------------------------------------------------------------------- the harness

SEED_CALLS = [
    "SELECT * FROM pyxp.award_campaign_creation('0x_creator', 'camp-b2c', 'B2C')",
    "SELECT * FROM pyxp.award_campaign_creation('0x_agency', 'camp-agency', 'AGENCY_B2C')",
    "SELECT * FROM pyxp.award_campaign_creation('0x_creator', 'camp-ind', 'INDIVIDUAL')",
    "SELECT * FROM pyxp.register_agency_client('0x_agency', 'client@example.com', 'camp-agency', 'ACME')",
    "SELECT * FROM pyxp.award_completion('0x_completer', 'camp-b2c', 'done-1', is_paid => true, "
    + "price_completion => 300)",
    "SELECT * FROM pyxp.award_moderation_vote('0x_moderator', 'camp-b2c', 'REFUSE')",
    "SELECT * FROM pyxp.award('0x_user', 'Completion_Refused_B2C', 'seed-penalty')",
]


def json_depth(document: str) -> int:
    """Deepest nesting of arrays/objects in a JSON text (strings skipped)."""
    deepest = level = 0
    in_string = escaped = False
    for char in document:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            level += 1
            deepest = max(deepest, level)
        elif char in "]}":
            level -= 1
    return deepest


class PropertyViolation(AssertionError):
    """A call broke the property: a non-PX error, a refused call that wrote, or an audit finding."""


class Harness:
    """An observer connection (state, audit) and a caller connection (one transaction per call)."""

    def __init__(self, db: psycopg.Connection[Any], caller: psycopg.Connection[Any]) -> None:
        self.db = db
        self.caller = caller

    def refused_by_jsonb_parser(self, call: Call) -> bool:
        """The documented exception: PostgreSQL's jsonb input refuses the literal itself."""
        for sql_type, value in call.arguments.values():
            if sql_type != "jsonb" or value is None:
                continue
            try:
                self.caller.execute("SELECT %s::jsonb IS NULL", (value,))
            except psycopg.Error as exc:
                if exc.diag.sqlstate not in ("54001", "22P02") or json_depth(value) <= 1000:
                    raise PropertyViolation(
                        f"{call!r}: the test generated a jsonb literal PostgreSQL refuses though it is "
                        f"not deep: {exc.diag.sqlstate} {exc.diag.message_primary}") from exc
                SKIPPED[call.function] += 1
                return True
        return False

    def check(self, call: Call) -> None:
        """Runs the call in its own transaction and checks the property (see the module docstring)."""
        if self.refused_by_jsonb_parser(call):
            return
        before = database_state(self.db)
        CALLS[call.function] += 1
        try:
            with self.caller.transaction():
                self.caller.execute(call.statement(), call.values()).fetchall()
        except psycopg.Error as exc:
            sqlstate = exc.diag.sqlstate or ""
            if not sqlstate.startswith("PX"):
                raise PropertyViolation(
                    f"{call!r} failed with SQLSTATE {sqlstate or '(none)'}, not a PX code: "
                    f"{exc.diag.message_primary} (context: {exc.diag.context})") from exc
            after = database_state(self.db)
            if after != before:
                raise PropertyViolation(f"{call!r} was refused ({sqlstate}) but wrote: {before} -> {after}")
            OUTCOMES[sqlstate] += 1
            return
        findings = self.db.execute("SELECT * FROM pyxp.audit()").fetchall()
        if findings:
            raise PropertyViolation(f"after {call!r}, audit() finds: {findings}")
        OUTCOMES["success"] += 1


@pytest.fixture
def hostile(conninfo: str, db: psycopg.Connection[Any]) -> Iterator[Harness]:
    """One database for a whole hypothesis run, seeded so that calls find campaigns,
    completions, a pending client registration and ledger rows to reverse."""
    for statement in SEED_CALLS:
        db.execute(statement)
    # Only the observer: audit()'s plan costs more than jit_above_cost, and compiling it
    # takes ~100 ms a call, for a ~5 ms query. The calls under test keep the defaults.
    db.execute("SET jit = off")
    with psycopg.connect(conninfo, autocommit=True) as caller:
        caller.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'")
        yield Harness(db, caller)


# --------------------------------------------------------------------------- the property


@pytest.mark.parametrize("function", list(FUNCTIONS))
@HYPOTHESIS_SETTINGS
@given(data=st.data())
def test_hostile_arguments_get_a_px_error_or_a_consistent_ledger(
        hostile: Harness, function: str, data: st.DataObject) -> None:
    """SPEC 6: every refusal is a PX error and leaves no row behind; SPEC 4: whatever is
    accepted keeps every balance provable from its history (audit() is empty)."""
    hostile.check(data.draw(CALL_STRATEGIES[function], label="call"))


# The JSON parameters, each with plausible other arguments.
def key_for(document: str) -> tuple[str, str]:
    return "text", "json-" + hashlib.sha256(document.encode()).hexdigest()[:24]


JSON_PARAMETERS = {
    "award.params": lambda document: Call("award", {
        "wallet": ("text", "0x_user"), "action": ("text", "Completion_Submit_B2C_Paid"),
        "idempotency_key": key_for(document), "params": ("jsonb", document)}),
    "award.context": lambda document: Call("award", {
        "wallet": ("text", "0x_user"), "action": ("text", "CAMPAIGN_APPROVED"),
        "idempotency_key": key_for(document), "context": ("jsonb", document)}),
    "award_many.events": lambda document: Call("award_many", {"events": ("jsonb", document)}),
}


@pytest.mark.parametrize("parameter", list(JSON_PARAMETERS))
@settings(HYPOTHESIS_SETTINGS, max_examples=DEEP_JSON_EXAMPLES[PROFILE])
@given(document=st.builds(embedded, deep_json, st.sampled_from(EMBEDDINGS)))
def test_deep_json_gets_a_px_error_or_a_consistent_ledger(
        hostile: Harness, parameter: str, document: str) -> None:
    """Nesting up to 1000 levels and beyond (100,000 levels: refused by the jsonb parser
    itself, the documented exception) in params, context and events."""
    hostile.check(JSON_PARAMETERS[parameter](document))


def test_large_json_gets_a_px_error_or_a_consistent_ledger(hostile: Harness) -> None:
    """Every ~1 MB document in every JSON parameter, every way it can be embedded (not left
    to chance: each is costly). All failures are collected, then reported together."""
    failures: list[str] = []
    for parameter, make_call in JSON_PARAMETERS.items():
        for document in LARGE_JSON:
            for where in EMBEDDINGS:
                try:
                    hostile.check(make_call(embedded(document, where)))
                except PropertyViolation as failure:
                    failures.append(f"{parameter}, {document[:40]!r}... ({len(document)} characters) "
                                    f"{where}: {failure}")
    assert not failures, "\n".join(failures)
