"""Templates within bounds: each attack is refused quickly, with a message naming the expression
and the limit it ran into, while ordinary templates render as before."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from engine import templating
from engine.errors import TemplateError
from engine.templating import render, render_typed, render_value

CONTEXT = {"inputs": {"x": "hello", "big": "a" * 100_000}}
QUICK = 1.0
"""Seconds within which a refused template must fail (the render limit is 5 s)."""


@pytest.fixture
def short_timeout(monkeypatch: pytest.MonkeyPatch) -> Iterator[float]:
    """Renders limited to 0.3 s, so that the tests of the deadline itself stay short."""
    monkeypatch.setattr(templating, "RENDER_TIMEOUT", 0.3)
    yield 0.3


def refused(template: str, *limit_words: str) -> str:
    """Render `template`; it must fail quickly with a message naming it and the limit."""
    started = time.monotonic()
    with pytest.raises(TemplateError) as info:
        render(template, CONTEXT)
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert template[:100] in message
    for word in limit_words:
        assert word in message
    assert elapsed < QUICK, f"took {elapsed:.2f} s: {message}"
    return message


# --- loops -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "{% for i in range(0, 10000) %}{% for j in range(0, 10000) %}{% endfor %}{% endfor %}",
        "{% for i in range(0, 10000) %}{% for j in range(0, 10000) %}x{% endfor %}{% endfor %}",
        "{% for i in range(0, 999999) %}{% for j in range(0, 999999) if false %}{% endfor %}"
        "{% endfor %}",
        "{% for i in range(0, 999) %}{{ render('{% for j in range(0, 9999) %}{% endfor %}') }}"
        "{% endfor %}",
    ],
)
def test_nested_loops_stop_at_the_iteration_limit(template: str) -> None:
    refused(template, "loops ran more than 1000000 iterations")


def test_range_longer_than_the_limit_is_refused() -> None:
    refused("{% for i in range(0, 10**8) %}{% endfor %}", "at most 1000000")


def test_a_million_iterations_in_all_still_render() -> None:
    # Pebble's range includes its end: 999 + 999 * 999 iterations
    template = "{% for i in range(1, 999) %}{% for j in range(1, 999) %}{% endfor %}{% endfor %}ok"
    assert render(template, CONTEXT) == "ok"


def test_recursive_loop_counts_its_iterations() -> None:
    template = (
        "{% for x in [[1, [2, [3]]]] recursive %}"
        "{% if x is iterable %}{{ loop(x) }}{% else %}{{ x }}{% endif %}{% endfor %}"
    )
    assert render(template, CONTEXT) == "123"


# --- time ------------------------------------------------------------------------------------


def test_render_past_its_deadline_fails_naming_the_time_limit(short_timeout: float) -> None:
    # 2**40 macro calls: no count limit applies, only the deadline stops it
    refused(
        "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
        "{{ f(40) }}",
        "longer than the time limit of one render",
        "TIERCEL_RENDER_TIMEOUT",
    )


def test_catastrophic_regex_stops_at_the_deadline(short_timeout: float) -> None:
    message = refused(
        "{{ ('a' * 40 ~ '!') | replace('(a|aa)+$', 'x', regexp=true) }}",
        "(a|aa)+$",
        "time limit",
    )
    assert "TIERCEL_RENDER_TIMEOUT" in message
    refused("{{ ('a' * 40 ~ '!') | split('(a|aa)+$') }}", "(a|aa)+$", "time limit")


def test_a_regex_whose_counts_multiply_past_the_bound_is_refused_before_compiling() -> None:
    # Compiled, it would take gigabytes: the `regex` engine expands counted repetitions.
    bomb = "((a{1000}){1000}){1000}"
    refused(f"{{{{ 'aaa' | replace('{bomb}', 'x', regexp=true) }}}}", bomb, "repeats its parts")
    refused(f"{{{{ 'aaa' | split('{bomb}') }}}}", bomb, "repeats its parts")
    # Syntax only `regex` knows is bounded by the product of every count in it.
    refused("{{ 'aaa' | split('((\\p{L}{1000}){1000}){1000}') }}", "repeats its parts")


def test_render_timeout_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERCEL_RENDER_TIMEOUT", "2.5")
    assert templating._timeout_from_environment() == 2.5
    monkeypatch.setenv("TIERCEL_RENDER_TIMEOUT", "soon")
    assert templating._timeout_from_environment() == templating.DEFAULT_RENDER_TIMEOUT
    monkeypatch.delenv("TIERCEL_RENDER_TIMEOUT")
    assert templating._timeout_from_environment() == 5.0


def test_a_value_with_many_templates_shares_one_deadline(short_timeout: float) -> None:
    slow = (
        "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
        "{{ f(14) }}"
    )
    started = time.monotonic()
    with pytest.raises(TemplateError, match="longer than the time limit of one render"):
        render_value([slow] * 200, CONTEXT)
    assert time.monotonic() - started < QUICK


# --- size of texts, lists and numbers ----------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "{{ 'a' | indent(1000000000) }}",
        "{{ 'a' | nindent(1000000000) }}",
        "{{ 'a' | center(1000000000) }}",
        "{{ '%1000000000s' | format('a') }}",
        "{{ '%1000000000s' % 'a' }}",
        "{{ '%.1000000000f' % 1.5 }}",
        "{{ '{:1000000000}'.format('a') }}",
        "{{ '{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}'.format('a' * 999999) }}",
        "{{ 'a'.ljust(1000000000) }}",
        "{{ 'a'.zfill(1000000000) }}",
        "{{ ('\t' * 999999).expandtabs(1000) }}",
        "{{ ('a' * 999999).replace('a', 'a' * 1000) }}",
        "{{ ('a' * 999999) | replace('a', 'a' * 1000) }}",
        "{{ ('a' * 999) | replace('', 'b' * 999999, regexp=true) }}",
        "{{ ('a' * 999999).translate({97: 'b' * 1000}) }}",
        "{{ (5).to_bytes(1000000000, 'big') }}",
        "{{ range(0, 999999) | join('a' * 50) }}",
        "{{ ','.join(['a' * 999999] * 999) }}",
        "{% set s = 'a' * 999999 %}{{ s ~ s ~ s ~ s ~ s ~ s ~ s ~ s ~ s ~ s ~ s ~ s ~ s ~ s ~ s ~ s ~ s }}",
    ],
)
def test_texts_beyond_the_limit_are_refused_before_they_are_built(template: str) -> None:
    refused(template, "at most 16777216")


@pytest.mark.parametrize(
    "template",
    [
        "{{ 'a' * 10**9 }}",
        "{{ [1] * 999999 * 999999 }}",
        "{% set ns = namespace(s=['a']) %}{% for i in range(0, 60) %}{% set ns.s = ns.s + ns.s %}"
        "{% endfor %}",
        "{{ range(0, 999999) | batch(1000000000, 'x') | list }}",
        "{% set l = range(0, 999999) %}{{ [l, l] | flatten | length }}",
    ],
)
def test_lists_and_repetitions_beyond_the_limit_are_refused(template: str) -> None:
    refused(template, "1000000")


def test_doubling_a_text_in_a_loop_is_refused() -> None:
    refused(
        "{% set ns = namespace(s='a') %}{% for i in range(0, 60) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}{{ ns.s | length }}",
        "'~' would build",
        "at most 16777216",
    )


@pytest.mark.parametrize(
    "template",
    [
        "{{ 2 ** 1000000 }}",
        "{{ 7 ** 999999 }}",
        "{% set ns = namespace(n=3) %}{% for i in range(0, 60) %}{% set ns.n = ns.n * ns.n %}"
        "{% endfor %}",
    ],
)
def test_huge_integers_are_refused_before_they_are_computed(template: str) -> None:
    refused(template, "100000 bits")


def test_output_beyond_the_limit_is_refused() -> None:
    refused("{% for i in range(0, 999) %}{{ inputs.big }}{% endfor %}", "the output is longer")


def test_printing_a_small_list_of_huge_shared_values_is_refused() -> None:
    # [x] * n shares one value n times: cheap to hold, enormous to write out
    template = "{% set big = 'a' * 999999 %}{{ [big] * 999999 }}"
    refused(template, "as JSON", "at most 16777216")
    refused("{% set big = 'a' * 999999 %}{{ ([big] * 999999) | toJson }}", "at most 16777216")
    with pytest.raises(TemplateError, match="at most 16777216"):
        render_typed("{{ ['a' * 999999] * 999999 }}", CONTEXT)


def test_transforming_every_item_of_a_shared_list_stops_at_the_built_limit() -> None:
    refused(
        "{% set big = 'a' * 999999 %}{{ ([big] * 999999) | map('upper') | list | length }}",
        "the values built by one render exceed 67108864",
    )


def test_summing_lists_is_bounded() -> None:
    refused(
        "{{ ([range(0, 99999) | list] * 999) | sum(start=[]) | length }}",
        "1000000",
    )


# --- YAML, recursion ---------------------------------------------------------------------------


def test_yaml_alias_bomb_in_from_yaml_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    bomb = "\n".join(lines)
    started = time.monotonic()
    with pytest.raises(TemplateError, match="beyond a limit"):
        render("{{ inputs.doc | fromYaml | toJson }}", {"inputs": {"doc": bomb}})
    assert time.monotonic() - started < QUICK
    many = "a: &a x\nb: [" + ", ".join(["*a"] * 2000) + "]"
    with pytest.raises(TemplateError, match="aliases"):
        render("{{ inputs.doc | fromYaml }}", {"inputs": {"doc": many}})


def test_shared_values_of_yaml_aliases_are_bounded_when_used() -> None:
    # Within the YAML limits, aliases still share values: printing or looping over them is
    # bounded by the render's own limits.
    lines = ["a0: &a0 ['" + "x" * 10_000 + "']"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 5)]
    doc = {"inputs": {"doc": "\n".join(lines)}}
    with pytest.raises(TemplateError, match="at most 16777216"):
        render("{{ (inputs.doc | fromYaml).a4 | toJson }}", doc)


def test_deeply_nested_yaml_is_refused() -> None:
    refused("{{ ('[' * 100000) | fromYaml }}", "100 levels deep")


def test_macro_calling_itself_forever_fails_with_a_template_error() -> None:
    refused("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "nests too deeply")


def test_render_calling_itself_fails_with_a_template_error() -> None:
    looping = {"vars": {"a": "{{ render(vars.a) }}{{ render(vars.a) }}"}}
    with pytest.raises(TemplateError, match="render"):
        render("{{ render(vars.a) }}", looping)


# --- the usual still works ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ inputs.x }}", "hello"),
        ("{{ '%5s|%-3d|%.2f' % ('ab', 7, 1.234) }}", "   ab|7  |1.23"),
        ("{{ '%(a)s-%(b)s' % {'a': 1, 'b': 2} }}", "1-2"),
        ("{{ '{}-{:>4}-{x}'.format(1, 'b', x=3) }}", "1-   b-3"),
        ("{{ 'ab' ~ 1 ~ none }}", "ab1None"),
        ("{{ [1, 2] + [3] }}", "[1,2,3]"),
        ("{{ 'a' | center(5) }}", "  a  "),
        ("{{ 'a\nb' | indent(2) }}", "a\n  b"),
        ("{{ 'x-y-z' | replace('-', '+') }}", "x+y+z"),
        ("{{ 'a1b22' | replace('[0-9]+', '#', regexp=true) }}", "a#b#"),
        ("{{ 'a1b22' | replace('([a-z])([0-9])', '\\\\2\\\\1', regexp=true) }}", "1a2b2"),
        ("{{ 'a, b,c' | split(', ?') }}", '["a","b","c"]'),
        ("{{ [3, 1, 3, [1], [1]] | distinct }}", "[3,1,[1]]"),
        ("{{ [1, 2, 3] | sum }}", "6"),
        ("{{ [[1], [2]] | sum(start=[]) }}", "[1,2]"),
        ("{{ 'a: [1, 2]' | fromYaml }}", '{"a":[1,2]}'),
        ("{{ range(1, 3) | batch(2, 0) | list }}", "[[1,2],[3,0]]"),
        ("{{ 'a b c' | wordwrap(3) }}", "a b\nc"),
    ],
)
def test_ordinary_templates_render_as_before(template: str, expected: str) -> None:
    assert render(template, CONTEXT) == expected
