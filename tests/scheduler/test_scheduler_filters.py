"""The requirement-filter language: fields, precedence, lists, and errors that point at a column."""

from __future__ import annotations

import ast
import builtins
import dataclasses
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import Device, Price, Runtime
from scheduler import filters
from scheduler.filters import FIELDS, Filter, FilterError, parse
from tests.factories import NOW
from tests.factories import plain_ad as ad

SHA = "ab" * 32
FIELD_LIST = ", ".join(FIELDS)
OPERATORS = "(operators: == != < <= > >= in)"


PLAIN = ad()
RICH = ad(
    cpus=16, memory_mb=65536, load=0.25, sandbox_tier="A", region="eu-west",
    cached=(SHA, "cd" * 32, "ef" * 32), expires=NOW + 30_000,
    devices=(
        Device(kind="cpu", model="epyc", memory_mb=65536, compute_capability="", count=1,
               gflops=500.0, mem_gbps=80.0),
        Device(kind="cuda", model="H100", memory_mb=81920, compute_capability="9.0", count=2,
               gflops=60000.0, bf16_gflops=900000.0),
        Device(kind="cuda", model="A100", memory_mb=40960, compute_capability="8.0", count=1,
               gflops=19500.0, bf16_gflops=312000.0),
    ),
    runtimes=(Runtime(name="python3", version="3.11", packages={}, digest=""),
              Runtime(name="pytorch", version="2.3", packages={}, digest="")),
    price=Price(start=100_000, per_cpu_second=10, per_gpu_second=694, per_gb_second=1,
                per_gb_transfer=50_000, minimum=250_000),
)
NO_CPU = ad(devices=())


def test_the_field_table_is_documented() -> None:
    assert list(FIELDS) == [
        "cpus", "memory", "load", "tier", "region", "peer_id", "runtime", "has_gpu",
        "gpu.count", "gpu.memory", "gpu.model", "gpu.tflops", "gpu.bf16_tflops", "cpu.tflops",
        "cpu.mem_gbps", "price.start", "price.cpu_hour", "price.gpu_hour", "price.gb_hour",
        "price.gb_transfer", "price.minimum", "cached", "expires_in"]
    assert FIELDS["tier"] == 'text: sandbox tier: "A", "B" or "none"'
    assert FIELDS["memory"] == "number: memory offered, GB (memory_mb / 1024)"
    assert all("\n" not in doc and doc.split(":")[0] in ("number", "text", "bool")
               for doc in FIELDS.values())


# expression, on RICH, on PLAIN
FIELD_CASES = [
    ("cpus == 16", True, False),
    ("cpus >= 4", True, True),
    ("memory == 64", True, False),
    ("memory == 8", False, True),
    ("load == 0.25", True, False),
    ("load < 0.1", False, True),
    ('tier == "A"', True, False),
    ("tier == 'none'", False, True),
    ('region == "eu-west"', True, False),
    ('region == ""', False, True),
    ('runtime == "python3"', True, True),
    ('runtime == "pytorch"', True, False),
    ('runtime != "pytorch"', False, True),
    ('runtime != "python3"', False, False),
    ("has_gpu == true", True, False),
    ("has_gpu != true", False, True),
    ("has_gpu == false", False, True),
    ("gpu.count == 3", True, False),
    ("gpu.count == 0", False, True),
    ("gpu.memory == 80", True, False),
    ("gpu.memory == 0", False, True),
    ('gpu.model == "A100"', True, False),
    ('gpu.model == "H100"', True, False),
    ('gpu.model == "V100"', False, False),
    ('gpu.model != "A100"', False, True),
    ('gpu.model != "V100"', True, True),
    ("gpu.tflops == 60", True, False),
    ("gpu.tflops == 0", False, True),
    ("gpu.bf16_tflops == 900", True, False),
    ("gpu.bf16_tflops == 0", False, True),
    ("cpu.tflops == 0.5", True, False),
    ("cpu.tflops == 0", False, True),
    ("cpu.mem_gbps == 80", True, False),
    ("cpu.mem_gbps == 0", False, True),
    ("price.start == 0.1", True, False),
    ("price.cpu_hour == 0.036", True, False),
    ("price.gpu_hour == 2.4984", True, False),
    ("price.gpu_hour <= 2.5", True, True),
    ("price.gb_hour == 0.0036", True, False),
    ("price.gb_transfer == 0.05", True, False),
    ("price.minimum == 0.25", True, False),
    ("price.minimum == 0", False, True),
    ("cached == 3", True, False),
    ("cached == 0", False, True),
    (f'peer_id == "{RICH.peer_id}"', True, False),
    ("expires_in == 30", True, False),
    ("expires_in == 1", False, True),
]


@pytest.mark.parametrize(("expression", "rich", "plain"), FIELD_CASES)
def test_fields(expression: str, rich: bool, plain: bool) -> None:
    f = parse(expression)
    assert f(RICH, now_ms=NOW) is rich
    assert f(PLAIN, now_ms=NOW) is plain


def test_every_field_is_exercised() -> None:
    assert {e.split()[0] for e, _, _ in FIELD_CASES} == set(FIELDS)


def test_the_clock_and_missing_devices() -> None:
    assert parse("expires_in == -0.5")(PLAIN, now_ms=NOW + 1500)
    assert parse("cpu.tflops == 0 and cpu.mem_gbps == 0")(NO_CPU, now_ms=NOW)


@pytest.mark.parametrize(("expression", "expected"), [
    # and binds tighter than or: (F and T) or T, not F and (T or T)
    ("cpus == 1 and cpus == 16 or load < 1", True),
    # T or (F and F), not (T or F) and F
    ("load < 1 or cpus == 1 and cpus == 2", True),
    ("(load < 1 or cpus == 1) and cpus == 2", False),
    # not binds tighter than and: (not F) and F, not not (F and F)
    ("not cpus == 1 and cpus == 1", False),
    ("not (cpus == 1 and cpus == 1)", True),
    ("not not cpus == 16", True),
    ("not (cpus == 1 or cpus == 16)", False),
    ('not (region == "eu-west" or load > 0.5)', False),
    ('not (region == "us-east" or load > 0.5)', True),
    ("((((cpus == 16))))", True),
    ('gpu.memory >= 24 and gpu.count >= 1 and price.gpu_hour <= 2.5 and tier == "A"', True),
    ('gpu.memory >= 81 and gpu.count >= 1 and price.gpu_hour <= 2.5 and tier == "A"', False),
])
def test_precedence(expression: str, expected: bool) -> None:
    assert parse(expression)(RICH, now_ms=NOW) is expected


@pytest.mark.parametrize(("expression", "rich", "plain"), [
    ('region in ["eu-west", "eu-north"]', True, False),
    ("region in ['us-east']", False, False),
    ('tier in ["A", "B"]', True, False),
    ("cpus in [4, 8]", False, True),
    ("cpus in [16]", True, False),
    ("load in [0.25, 0.5]", True, False),
    ('runtime in ["pytorch", "jax"]', True, False),
    ('gpu.model in ["A100"]', True, False),
    ("has_gpu in [true]", True, False),
    ('not region in ["eu-west"]', False, True),
])
def test_in_lists(expression: str, rich: bool, plain: bool) -> None:
    assert parse(expression)(RICH, now_ms=NOW) is rich
    assert parse(expression)(PLAIN, now_ms=NOW) is plain


def test_whitespace_quotes_and_numbers() -> None:
    assert parse("  cpus>=4\tand\nload<=1 ")(PLAIN, now_ms=NOW)
    assert parse("load >= -1 and load < 1e3 and memory >= 8.0")(PLAIN, now_ms=NOW)
    assert parse("""region == 'it"s' or region == "it's" or tier == "none\"""")(PLAIN, now_ms=NOW)


def test_filter_is_a_value() -> None:
    f = parse("cpus >= 4")
    assert f == Filter("cpus >= 4") and hash(f) == hash(Filter("cpus >= 4"))
    assert repr(f) == "Filter(source='cpus >= 4')"
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.source = "cpus >= 1"  # type: ignore[misc]


LONG = "cpus >= 4 and " * 100
ERRORS = [
    ("gpu.memry >= 24", 1, "gpu.memry",
     f"unknown field; did you mean gpu.memory? (fields: {FIELD_LIST})"),
    ("cpus >= 4 and CPUS < 8", 15, "CPUS",
     f"unknown field; did you mean cpus? (fields: {FIELD_LIST})"),
    ("__import__('os')", 1, "__import__", f"unknown field (fields: {FIELD_LIST})"),
    ("cpus = 4", 6, "=", f"unknown operator; did you mean ==? {OPERATORS}"),
    ("cpus => 4", 6, "=>", f"unknown operator; did you mean >=? {OPERATORS}"),
    ("cpus is 4", 6, "is", f"unknown operator {OPERATORS}"),
    ("cpus >= 4 && load < 1", 11, "&&", f"unknown operator; did you mean and? {OPERATORS}"),
    ("!(cpus >= 4)", 1, "!", f"unknown operator; did you mean not? {OPERATORS}"),
    ("cpus 4", 6, "4", f"expected an operator after cpus {OPERATORS}"),
    ("cpus", 5, None, f"expected an operator after cpus {OPERATORS}"),
    ('tier < "A"', 6, "<", "type mismatch: tier is text; use ==, != or in, not <"),
    ("has_gpu >= true", 9, ">=", "type mismatch: has_gpu is true/false; use ==, != or in, not >="),
    ("tier == 4", 9, "4",
     "type mismatch: tier is text, not a number; compare it with a quoted string"),
    ('cpus >= "4"', 9, '"4"',
     "type mismatch: cpus is a number, not text; compare it with a number"),
    ("cpus == true", 9, "true",
     "type mismatch: cpus is a number, not true/false; compare it with a number"),
    ("has_gpu == 1", 12, "1",
     "type mismatch: has_gpu is true/false, not a number; compare it with true or false"),
    ('region in ["eu", 4]', 18, "4",
     "type mismatch: region is text, not a number; compare it with a quoted string"),
    ('region == "eu-west', 11, '"eu-west', 'unterminated string; close it with "'),
    ("tier == 'A", 9, "'A", "unterminated string; close it with '"),
    ("(cpus >= 4", 1, "(", "unbalanced parentheses: this ( is never closed"),
    ("not ((cpus >= 4) or load < 1", 5, "(", "unbalanced parentheses: this ( is never closed"),
    ("cpus >= 4)", 10, ")", "unbalanced parentheses: this ) has no matching ("),
    ('region in ["a"', 11, "[", "unbalanced brackets: this [ is never closed"),
    ("cpus >= 4 load < 1", 11, "load",
     "unexpected text after a complete condition; join conditions with and / or"),
    ("(cpus >= 4 load < 1)", 12, "load",
     "unexpected text after a complete condition; join conditions with and / or"),
    ("cpus >= 4 AND load < 1", 11, "AND",
     "unexpected text after a complete condition; join conditions with and / or"),
    ("", 1, None, "empty filter; write a condition such as cpus >= 4"),
    ("   ", 4, None, "empty filter; write a condition such as cpus >= 4"),
    ("()", 2, ")", f"expected a field name, as in cpus >= 4 (fields: {FIELD_LIST})"),
    ("cpus >= 4 and", 14, None, f"expected a field name, as in cpus >= 4 (fields: {FIELD_LIST})"),
    ('"python3" in runtime', 1, '"python3"',
     f"expected a field name, as in cpus >= 4 (fields: {FIELD_LIST})"),
    ("cpus >=", 8, None, "expected a value after >= (a number, a quoted string, true or false)"),
    ("region in []", 12, "]",
     "expected a value after [ (a number, a quoted string, true or false)"),
    ('region in ["a",]', 16, "]",
     "expected a value after , (a number, a quoted string, true or false)"),
    ('region in "a"', 11, '"a"', 'expected [ after in, as in region in ["eu-west", "eu-north"]'),
    ('region in ["a" "b"]', 16, '"b"', "expected , or ] in the list"),
    ("memory >= 24GB", 11, "24GB", "bad number; write plain digits without units "
                                   "(memory and gpu.memory are in GB, prices in credits)"),
    ("load < 0.5.1", 8, "0.5.1", "bad number; write plain digits without units "
                                 "(memory and gpu.memory are in GB, prices in credits)"),
    ("cpus>=16and load<1", 7, "16and", "bad number; write plain digits without units "
                                       "(memory and gpu.memory are in GB, prices in credits)"),
    ("cpus >= 1e999", 9, "1e999", "number out of range"),
    ("cpus @ 4", 6, "@", "unexpected character"),
    ("not " * 33 + "cpus >= 1", 129, "not",
     "nested too deeply; use at most 32 levels of not and parentheses"),
    (LONG, 1001, LONG[1000:], "filter is longer than 1000 characters; shorten it"),
]


@pytest.mark.parametrize(("expression", "column", "token", "problem"), ERRORS)
def test_errors_point_at_the_bad_token(expression: str, column: int, token: str | None,
                                       problem: str) -> None:
    shown = "end of filter" if token is None else _quote(token)
    message = f"bad filter at column {column} ({shown}): {problem}"
    with pytest.raises(FilterError, match=f"^{re.escape(message)}$") as info:
        parse(expression)
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.expression, err.column, err.token) == (expression, column, token)


def _quote(token: str) -> str:
    shown = token if len(token) <= 40 else token[:37] + "..."
    return '"' + shown.replace("\\", "\\\\").replace('"', '\\"') + '"'


def test_the_long_token_is_clipped_and_the_limit_is_inclusive() -> None:
    with pytest.raises(FilterError, match=r'^bad filter at column 1001 \("= 4 and cpus >= 4 and '
                                          r'cpus >= 4 and c\.\.\."\): filter is longer'):
        parse(LONG)
    assert parse("cpus >= 4" + " " * 991)(PLAIN, now_ms=NOW)
    assert parse("(" * 32 + "cpus >= 4" + ")" * 32)(PLAIN, now_ms=NOW)


def test_caret_points_at_the_column() -> None:
    with pytest.raises(FilterError) as info:
        parse("cpus >= 4 and\tgpu.memry > 1")
    assert info.value.caret() == "cpus >= 4 and gpu.memry > 1\n              ^"


def test_tokens_with_odd_characters_stay_on_one_line() -> None:
    with pytest.raises(FilterError, match=r'^bad filter at column 9 \("\\"a\\nb\\u00e9"\): '
                                          r"unterminated string"):
        parse('tier == "a\nbé')


def test_parsing_and_matching_never_use_eval(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the filter language must not evaluate Python")

    for name in ("eval", "exec", "compile"):
        monkeypatch.setattr(builtins, name, refuse)
    f = parse('not (region in ["x"] or gpu.memory < 1) and tier == "A" and cpus >= 4')
    assert f(RICH, now_ms=NOW)
    for payload in ("__import__('os').system('true')", "cpus >= (1).__class__",
                    "cpus >= 4 or __builtins__ == 1", 'tier == "A" + "B"', "cpus >= 2**4"):
        with pytest.raises(FilterError):
            parse(payload)


def _dynamic_code(source: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name) and node.id in {"eval", "exec", "compile", "__import__"}:
            found.add(node.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            found |= {n for n in names if n in {"ast", "importlib", "code", "codeop"}}
    return found


def test_the_module_has_no_dynamic_code() -> None:
    assert _dynamic_code(Path(filters.__file__).read_text()) == set()


def test_the_dynamic_code_check_can_fail() -> None:
    assert _dynamic_code("import ast\nx = eval('1')\n") == {"ast", "eval"}


TOKENS = ["cpus", "gpu.memory", "tier", "region", "runtime", "has_gpu", "gpu.model", "load",
          "and", "or", "not", "in", "true", "false", "(", ")", "[", "]", ",", "==", "!=",
          "<", "<=", ">", ">=", "=", "4", "2.5", "-1", '"A"', "'eu'", '"', "@", "1e999",
          "24GB", "price.gpu_hour", "expires_in", "gpu.memry", "__import__"]


def _holds_or_fails_cleanly(expression: str) -> None:
    try:
        f = parse(expression)
    except FilterError as err:
        message = str(err)
        assert message.startswith("bad filter at column ") and "\n" not in message
        assert 1 <= err.column <= len(expression) + 1
        return
    for subject in (RICH, PLAIN, NO_CPU):
        assert f(subject, now_ms=NOW) in (True, False)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_random_text_only_raises_filter_error(expression: str) -> None:
    _holds_or_fails_cleanly(expression)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=16), st.sampled_from([" ", ""]))
def test_random_token_soup_only_raises_filter_error(words: list[str], sep: str) -> None:
    _holds_or_fails_cleanly(sep.join(words))
