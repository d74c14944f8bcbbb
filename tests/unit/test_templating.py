"""Pebble-compatible templating: what a Kestra flow's expressions render to."""

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import jq_sandbox, templating
from engine.errors import TemplateError
from engine.templating import is_template, render, render_recursive, render_typed, render_value

CONTEXT = {
    "inputs": {"name": "world", "n": 3, "obj": {"k": 1}, "flag": True, "nothing": None},
    "outputs": {
        "t1": {"value": "v1", "values": {"count": "6"}},
        "error-t1": {"value": "from error"},
    },
    "flow": {"id": "hello", "namespace": "company.team"},
    "execution": {"id": "abc123"},
    "taskrun": {"id": "tr1", "value": "value 2", "attemptsCount": 1},
    "parents": [{"taskrun": {"value": "inner"}}, {"taskrun": {"value": "outer"}}],
    "vars": {"greeting": "Hello {{ inputs.name }}"},
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ inputs.name }}", "world"),
        ("Hi {{inputs.name}}!", "Hi world!"),
        ("{{ flow.namespace ~ '.' ~ flow.id }}", "company.team.hello"),
        ("{{ outputs.t1.value }}", "v1"),
        ("{{ outputs['error-t1'].value }}", "from error"),
        ("{{ outputs.t1.values.count == '6' }}", "true"),
        ("{{ inputs.obj }}", '{"k":1}'),
        ("{{ inputs.flag }}", "true"),
        ("{{ inputs.nothing }}", ""),
        ("{{ taskrun.attemptsCount == 1 ? 'ok' : ko }}", "ok"),
        ("{{ inputs.n > 5 ? 'big' : inputs.n > 2 ? 'mid' : 'small' }}", "mid"),
        ("{{ outputs.missing.value ?? outputs['error-t1'].value }}", "from error"),
        ("{{ inputs.nothing ?? 'fallback' }}", "fallback"),
        ("{{ inputs.nothing ??? 'fallback' }}", ""),
        ("{{ inputs.absent ??? 'fallback' }}", "fallback"),
        ("{{ (inputs.failed ?? 'NONE') == 'FIRST' ? ko : '0' }}", "0"),
        ("{{ taskrun.value equals 'value 2' }}", "true"),
        ("{{ inputs.absent is defined }}", "false"),
        ("{{ inputs.nothing is null }}", "true"),
        ("{{ inputs.name is not null }}", "true"),
        ("{{ '' is empty }}", "true"),
        ("{{ '{\"a\": 1}' is json }}", "true"),
        ("{{ [1, 2] contains 2 }}", "true"),
        ("{% for x in ['a', 'b'] %}{{ loop.index }}{{ x }}{% endfor %}", "0a1b"),
        ("{% if inputs.n > 5 %}big{% elseif inputs.n > 2 %}mid{% else %}small{% endif %}", "mid"),
        ("{{ inputs.obj | json }}", '{"k":1}'),
        ("{{ '{\"a\": [1, 2]}' | fromJson }}", '{"a":[1,2]}'),
        ("{{ inputs.obj | jq('.k') | first }}", "1"),
        ("{{ inputs.obj | keys }}", '["k"]'),
        ("{{ 'a,b,c' | split(',') | last }}", "c"),
        ("{{ ['a', 'b'] | join('-') }}", "a-b"),
        ("{{ 'Hello World' | slugify }}", "hello-world"),
        ("{{ 'hello world' | title }}", "Hello World"),
        ("{{ 'abc' | replace({'b': 'x'}) }}", "axc"),
        ("{{ '42' | number + 1 }}", "43"),
        ("{{ -3 | abs }}", "3"),
        ("{{ inputs.absent | default('d') }}", "d"),
        ("{{ '2024-01-31T10:00:00Z' | date('yyyy-MM-dd') }}", "2024-01-31"),
        ("{{ '2024-01-31T10:00:00Z' | dateAdd(1, 'MONTHS', 'yyyy-MM-dd') }}", "2024-02-29"),
        (
            "{{ '2024-01-31T10:00:00Z' | date('HH:mm XXX', timeZone='Europe/Paris') }}",
            "11:00 +01:00",
        ),
        ("{{ '2024-01-01T00:00:00Z' | timestampMicro }}", "1704067200000000"),
        ("{{ render(vars.greeting) }}", "Hello world"),
        ("{{ range(1, 3) }}", "[1,2,3]"),
        ("{{ {'k': inputs.n > 2 ? 'y' : 'n'} }}", '{"k":"y"}'),
        ("{{ currentEachOutput({'outer': {'inner': {'value 2': {'v': 9}}}}).v }}", "9"),
        ("{% raw %}{{ not rendered }}{% endraw %}", "{{ not rendered }}"),
    ],
)
def test_pebble_expression_renders_like_kestra(template: str, expected: str) -> None:
    assert render(template, CONTEXT) == expected


def test_single_expression_keeps_its_type() -> None:
    assert render_typed("{{ inputs.obj }}", CONTEXT) == {"k": 1}
    assert render_typed("{{ inputs.n + 1 }}", CONTEXT) == 4
    assert render_typed("n={{ inputs.n }}", CONTEXT) == "n=3"


def test_render_value_walks_maps_and_lists() -> None:
    value = {"a": ["{{ inputs.name }}", 1], "{{ flow.id }}": {"b": "{{ inputs.n }}"}}
    assert render_value(value, CONTEXT) == {"a": ["world", 1], "hello": {"b": "3"}}


def test_render_recursive_stops_when_nothing_is_left() -> None:
    assert render_recursive("{{ vars.greeting }}", CONTEXT) == "Hello world"


@pytest.mark.parametrize(
    ("template", "names"),
    [
        ("{{ ko }}", "missing variable 'ko'"),
        ("{{ outputs.nope.value }}", "nope"),
        ("{{ 1 + }}", "{{ 1 + }}"),
        ("{{ inputs.name | nofilter }}", "nofilter"),
        ("{{ inputs.name ", "never closed"),
        ("{{ a ? b }}", "':'"),
    ],
)
def test_bad_template_error_names_the_expression(template: str, names: str) -> None:
    with pytest.raises(TemplateError) as info:
        render(template, CONTEXT)
    assert names in str(info.value)
    assert template.strip() in str(info.value)


@pytest.mark.parametrize(
    "template",
    ["{{ ''.__class__.__mro__ }}", "{{ inputs.__class__ }}", "{{ inputs.obj.update({'x': 1}) }}"],
)
def test_sandbox_refuses_python_internals(template: str) -> None:
    with pytest.raises(TemplateError):
        render(template, CONTEXT)


@given(st.text().filter(lambda s: not is_template(s)))
def test_text_without_templates_is_returned_unchanged(text: str) -> None:
    assert render(text, CONTEXT) == text


# --- what a template may reach: nothing outside its context -------------------------------------


@pytest.mark.parametrize(
    ("program", "word"),
    [
        ("env", "env"),
        ("env.HOME", "env"),
        ("$ENV", "$ENV"),
        ("$ENV.PATH", "$ENV"),
        ("{$ENV}", "$ENV"),
        ("now", "now"),
        ("now | todate", "now"),
        ("input", "input"),
        ("[inputs]", "inputs"),
        ("debug", "debug"),
        ('debug("x")', "debug"),
        ("stderr", "stderr"),
        ("input_filename", "input_filename"),
        ("input_line_number", "input_line_number"),
        ("$__loc__", "$__loc__"),
        ("{$__loc__}", "$__loc__"),
        ("$__prog_args", "$__prog_args"),
        ("get_search_list", "get_search_list"),
        ("0 | localtime", "localtime"),
        ('import "m" as m; .', "import"),
        ('include "m"; .', "include"),
        ('"\\(env | length)"', "env"),
        ('"a \\"\\(now)"', "now"),
        ("{a: env}", "env"),
        ("{(env | keys | first): 1}", "env"),
        ("[1, env]", "env"),
        ("{a: [1, env]}", "env"),
        ("reduce .[] as $x (0; env)", "env"),
        ("def f: env; 1", "env"),
        (".a # a comment\n| env", "env"),
    ],
)
def test_jq_refuses_builtins_that_reach_outside_the_value(program: str, word: str) -> None:
    template = "{{ inputs.obj | jq(" + repr(program) + ") }}"
    with pytest.raises(TemplateError) as info:
        render(template, CONTEXT)
    message = str(info.value)
    assert f"jq's `{word}` is not available in Tiercel expressions" in message
    assert template in message  # names the expression


def test_jq_refusal_says_why_and_what_to_do_instead() -> None:
    with pytest.raises(TemplateError) as info:
        render("{{ {} | jq('env') }}", CONTEXT)
    assert "process environment" in str(info.value)
    assert "inputs, variables or secrets" in str(info.value)
    with pytest.raises(TemplateError) as info:
        render("{{ {} | jq('now') }}", CONTEXT)
    assert "wall clock" in str(info.value) and "now()" in str(info.value)


def test_jq_environment_is_refused_through_render_typed_too() -> None:
    with pytest.raises(TemplateError, match="jq's `env`"):
        render_typed("{{ inputs.obj | jq('env') }}", CONTEXT)
    with pytest.raises(TemplateError, match="jq's `\\$ENV`"):
        render_value({"k": ["{{ inputs.obj | jq('$ENV') }}"]}, CONTEXT)


@pytest.mark.parametrize(
    ("value", "program", "expected"),
    [
        ({"env": "dev"}, ".env", ["dev"]),
        ({"env_name": "dev"}, ".env_name", ["dev"]),
        ({"a": {"env": 1}}, ".a.env", [1]),
        ({"env": 2}, '."env"', [2]),
        ({"env": 2}, '.["env"]', [2]),
        ({"env": 3}, "{env}", [{"env": 3}]),
        ({"x": 1, "env": 4}, "{x, env}", [{"x": 1, "env": 4}]),
        ({}, "{env: 1, now: 2}", [{"env": 1, "now": 2}]),
        ({}, '"envelope"', ["envelope"]),
        ({}, '"now \\\\(env)"', ["now \\(env)"]),
        ({}, '"# env" | length', [5]),
        ({"a": 1}, ".a # env in a comment", [1]),
        ({"now": 5}, ". as $env | $env.now", [5]),
        ({"environment": 6}, ".environment", [6]),
        ({}, "1700000000 | todate", ["2023-11-14T22:13:20Z"]),
    ],
)
def test_jq_field_access_and_words_in_strings_still_work(
    value: object, program: str, expected: list[object]
) -> None:
    assert render_typed("{{ value | jq(program) }}", {"value": value, "program": program}) == (
        expected
    )


def test_jq_program_that_does_not_compile_names_the_expression() -> None:
    with pytest.raises(TemplateError) as info:
        render("{{ inputs.obj | jq('.[') }}", CONTEXT)
    assert "{{ inputs.obj | jq('.[') }}" in str(info.value)
    assert "does not compile" in str(info.value)


def test_no_filter_or_test_is_evaluated_when_the_template_is_compiled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []

    def counting(value: object) -> int:
        calls.append(str(value))
        return len(calls)

    monkeypatch.setitem(templating._ENV.filters, "counting", counting)
    monkeypatch.setitem(templating._ENV.tests, "counted", lambda value: counting(value) > 0)
    template = "{{ 'constant' | counting }} {{ 'constant' is counted }}"
    templating._compiled_template(template)
    assert calls == []  # compiling alone called nothing
    assert render(template, CONTEXT) == "1 true"
    assert render(template, CONTEXT) == "3 true"  # called again on each render, never reused


def test_function_from_the_context_is_called_on_each_render() -> None:
    ticks: list[int] = []

    def tick() -> int:
        ticks.append(1)
        return len(ticks)

    assert render("{{ tick() }}", {"tick": tick}) == "1"
    assert render("{{ tick() }}", {"tick": tick}) == "2"
    assert render_typed("{{ tick() }}", {"tick": tick}) == 3


def test_constant_jq_on_the_clock_fails_at_render_time_not_when_compiled() -> None:
    template = "{{ {} | jq('now') | first }}"
    templating._compiled_template(template)  # compiles without running jq
    for _ in range(2):
        with pytest.raises(TemplateError, match="jq's `now`"):
            render(template, CONTEXT)


def test_now_from_the_context_wins_over_the_wall_clock() -> None:
    context = {**CONTEXT, "now": lambda *args, **kwargs: "2024-05-01T10:00:00Z"}
    assert render("{{ now() }}", context) == "2024-05-01T10:00:00Z"
    assert render_typed("{{ now() }}", context) == "2024-05-01T10:00:00Z"
    assert render("{{ now() | date('yyyy-MM-dd') }}", context) == "2024-05-01"
    nested = {**context, "vars": {"when": "{{ now() }}"}}
    assert render("{{ render(vars.when) }}", nested) == "2024-05-01T10:00:00Z"


@pytest.mark.parametrize(
    "template", ["{{ [1, 2, 3] | random }}", "{{ lipsum(1) }}", "{{ lipsum() }}"]
)
def test_random_values_are_refused_so_replays_decide_alike(template: str) -> None:
    with pytest.raises(TemplateError) as info:
        render(template, CONTEXT)
    assert "random" in str(info.value) and template in str(info.value)


# --- every failure is a TemplateError naming the expression -------------------------------------


@pytest.mark.parametrize(
    ("template", "cause"),
    [
        ("{{ ''.__class__.__mro__ }}", "unsafe"),  # jinja2.sandbox.SecurityError
        ("{{ inputs.obj.update({'x': 1}) }}", "update"),
        ("{{ 'a' + 1 }}", "TypeError"),
        ("{{ inputs.n / 0 }}", "ZeroDivisionError"),
        ("{{ 2.0 ** 5000 }}", "OverflowError"),
        ("{{ '2024-13-45' | date('yyyy') }}", "as a date"),
        ("{{ 'abc' | base64decode }}", "Error"),  # binascii.Error, a ValueError
        ("{{ 'x' | number }}", "as a number"),
        ("{{ 10 ** 1000000 }}", "too large"),
        ("{{ 'ab' * 100000000 }}", "too large"),
        ("{{ [0] * 100000000 }}", "too large"),
        ("{{ range(0, 100000000) | length }}", "at most"),
        ("{{ 'x' | toDuration }}", "ISO-8601"),
    ],
)
def test_failure_of_any_kind_is_a_template_error_naming_the_expression(
    template: str, cause: str
) -> None:
    for renderer in (render, render_typed, render_recursive):
        with pytest.raises(TemplateError) as info:
            renderer(template, CONTEXT)
        assert template in str(info.value)
        assert cause in str(info.value)
    with pytest.raises(TemplateError) as info:
        render_value({"key": [template]}, CONTEXT)
    assert template in str(info.value) and cause in str(info.value)


def test_a_variable_that_renders_itself_fails_with_a_template_error() -> None:
    looping = {**CONTEXT, "vars": {"a": "{{ render(vars.a) }}"}}
    with pytest.raises(TemplateError) as info:
        render("{{ render(vars.a) }}", looping)
    assert "{{ render(vars.a) }}" in str(info.value)
    assert "renders itself" in str(info.value)


def test_a_variable_that_doubles_its_renders_fails_quickly() -> None:
    doubling = {**CONTEXT, "vars": {"a": "{{ render(vars.a) }}{{ render(vars.a) }}"}}
    with pytest.raises(TemplateError, match="render"):
        render("{{ render(vars.a) }}", doubling)


def test_deeply_nested_expression_is_a_template_error() -> None:
    template = "{{ " + "(" * 2000 + "1" + ")" * 2000 + " }}"
    with pytest.raises(TemplateError) as info:
        render(template, CONTEXT)
    assert "Cannot" in str(info.value)


def test_long_template_is_shortened_in_the_message() -> None:
    template = "{{ ko }}" + "x" * 5000
    with pytest.raises(TemplateError) as info:
        render(template, CONTEXT)
    message = str(info.value)
    assert "missing variable 'ko'" in message
    assert template[:100] in message
    assert len(message) < 400
    assert "5008 characters" in message


def test_interrupts_and_cancellations_are_not_swallowed() -> None:
    def interrupt() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        render("{{ interrupt() }}", {"interrupt": interrupt})
    with pytest.raises(KeyboardInterrupt):
        render_typed("{{ interrupt() }}", {"interrupt": interrupt})
    with pytest.raises(KeyboardInterrupt):
        render_value(["{{ interrupt() }}"], {"interrupt": interrupt})


# --- jq runs out of process, within limits -------------------------------------------------------


def test_jq_recursion_bomb_fails_with_a_template_error_and_the_process_survives() -> None:
    template = "{{ 0 | jq('def f: 1 + f; f') }}"
    with pytest.raises(TemplateError) as info:
        render(template, CONTEXT)
    message = str(info.value)
    assert template in message
    assert "used more than 512 MB of memory" in message
    assert "recurses without end" in message
    # still here, and jq still works
    assert render("{{ inputs.obj | jq('.k') | first }}", CONTEXT) == "1"


def test_jq_program_that_never_ends_fails_with_a_timeout() -> None:
    template = "{{ 0 | jq('last(range(1e10))') }}"
    with pytest.raises(TemplateError) as info:
        render(template, CONTEXT)
    message = str(info.value)
    assert template in message
    # 2 s of CPU time, or 5 s on the clock when the machine is too busy to give it that
    assert "ran longer than" in message and "never ends" in message


def test_jq_program_that_crashes_libjq_is_a_template_error() -> None:
    # builds a value nested 100,000 deep: libjq overflows its stack on it
    template = "{{ 0 | jq('reduce range(100000) as $i (null; [.])') }}"
    with pytest.raises(TemplateError) as info:
        render(template, CONTEXT)
    assert template in str(info.value)
    assert render("{{ 1 | jq('. + 1') | first }}", CONTEXT) == "2"


def test_jq_results_larger_than_the_bound_are_refused() -> None:
    with pytest.raises(TemplateError, match="more than 16 MB of results"):
        render("{{ 0 | jq('\"x\" * 20000000') }}", CONTEXT)


@pytest.mark.parametrize(
    ("value", "program", "expected"),
    [
        ({"a": 1}, ".a", [1]),
        ([{"x": 1}, {"x": "é"}, {"y": 2}], ".[] | .x", [1, "é", None]),
        ([1, 2, 3], "map(.+1)", [[2, 3, 4]]),
        ({"a": 1, "b": 2}, "length", [2]),
        ('{"z": 1, "a": 2}', "keys_unsorted", [["z", "a"]]),  # text is read as JSON, in order
        ([], ".[]", []),
        ({"a": 1}, ".a, .a * 2", [1, 2]),
    ],
)
def test_ordinary_jq_programs_give_their_results(
    value: object, program: str, expected: list[object]
) -> None:
    assert render_typed("{{ value | jq(program) }}", {"value": value, "program": program}) == (
        expected
    )


def test_jq_error_names_the_expression_and_jq_message() -> None:
    with pytest.raises(TemplateError) as info:
        render("{{ inputs.obj | jq('error(\"no k\")') }}", CONTEXT)
    assert "{{ inputs.obj | jq('error(\"no k\")') }}" in str(info.value)
    assert "failed: no k" in str(info.value)


def test_repeated_jq_render_does_not_run_the_program_again() -> None:
    context = {"value": {"run": uuid.uuid4().hex}}
    template = "{{ value | jq('.run | ascii_upcase') | first }}"
    before = jq_sandbox.counters()
    assert render(template, context) == context["value"]["run"].upper()
    first = jq_sandbox.counters()
    assert first.programs_run == before.programs_run + 1
    for _ in range(3):
        assert render(template, context) == context["value"]["run"].upper()
    again = jq_sandbox.counters()
    assert again.programs_run == first.programs_run
    assert again.children_started == first.children_started
    assert again.cache_hits == first.cache_hits + 3


def test_jq_children_are_reused_across_programs() -> None:
    render("{{ 0 | jq('. + 1') }}", CONTEXT)  # a child is waiting from here on
    before = jq_sandbox.counters()
    for n in range(5):
        unique = uuid.uuid4().hex
        assert render_typed("{{ v | jq('.[1]') }}", {"v": [unique, n]}) == [n]
    after = jq_sandbox.counters()
    assert after.programs_run == before.programs_run + 5
    assert after.children_started == before.children_started


def test_jq_programs_rendered_from_threads_at_once_each_get_their_own_result() -> None:
    def one(n: int) -> object:
        return render_typed(
            "{{ v | jq('.n * 3') | first }}", {"v": {"n": n, "id": uuid.uuid4().hex}}
        )

    with ThreadPoolExecutor(max_workers=6) as pool:
        assert list(pool.map(one, range(24))) == [n * 3 for n in range(24)]


def test_jq_child_does_not_see_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # `$ENV` is refused in templates; the sandbox itself is asked here, to show what a program
    # would see if it got past that check.
    monkeypatch.setenv("TIERCEL_TEST_SECRET", "s3cr3t")
    assert jq_sandbox.run("$ENV | keys", "null") == [["LC_CTYPE", "PATH", "TZ"]]
    assert jq_sandbox.run("$ENV.TIERCEL_TEST_SECRET", "null") == [None]


# --- ?? and ??? ---------------------------------------------------------------------------------


def test_long_coalescing_chain_renders() -> None:
    # exponential in the chain's length, 200 terms would never finish
    chain = " ?? ".join(f"inputs.missing{i}" for i in range(199))
    assert render("{{ " + chain + " ?? 'last' }}", CONTEXT) == "last"
    assert render_typed("{{ " + chain + " ?? inputs.n }}", CONTEXT) == 3
    chain40 = " ?? ".join(["inputs.nothing"] * 20 + ["inputs.absent"] * 19 + ["inputs.name"])
    assert render("{{ " + chain40 + " }}", CONTEXT) == "world"


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("inputs.absent ?? inputs.nothing ?? inputs.n", 3),  # undefined and null fall through
        ("inputs.n ?? inputs.name ?? inputs.absent", 3),  # the first defined wins
        ("inputs.flag ?? 'x'", True),
        ("inputs.nothing ?? inputs.absent ?? 'fallback'", "fallback"),
        ("inputs.absent ??? inputs.nothing ??? 'z'", None),  # ??? passes null through
        ("inputs.nothing ??? 'a' ?? 'b'", "b"),  # read left to right: (null ??? 'a') ?? 'b'
        ("inputs.absent ??? inputs.nothing ?? 'c'", "c"),
        ("(inputs.absent ?? 'a') ~ (inputs.nothing ?? 'b')", "ab"),
        ("inputs.absent ?? inputs.name | upper", "WORLD"),  # the filter binds to its operand
        ("(inputs.absent ?? inputs.name) | upper", "WORLD"),
        ("inputs.absent ?? (inputs.n + 1) * 2", 8),
        ("[inputs.absent ?? 1, inputs.nothing ?? 2]", [1, 2]),
        ("{'k': inputs.absent ?? inputs.obj.k}", {"k": 1}),
        ("inputs.n > 2 ? inputs.absent ?? 'big' : 'small'", "big"),
        ("(inputs.absent ?? inputs.n) > 2 ? 'big' : 'small'", "big"),
        ("outputs.t1.values.count ?? 0", "6"),
        ("outputs.missing.value.deeper ?? outputs['error-t1'].value", "from error"),
        ("inputs.obj | jq('.k') ?? 'none'", [1]),
    ],
)
def test_coalescing_keeps_pebble_semantics(expression: str, expected: object) -> None:
    assert render_typed("{{ " + expression + " }}", CONTEXT) == expected


def test_coalescing_evaluates_each_operand_once_and_the_right_only_when_needed() -> None:
    calls: list[str] = []

    def value(name: str, result: object) -> object:
        calls.append(name)
        return result

    context = {"value": value}
    assert render("{{ value('a', 1) ?? value('b', 2) ?? value('c', 3) }}", context) == "1"
    assert calls == ["a"]
    calls.clear()
    template = "{{ value('a', null) ?? value('b', null) ??? value('c', 3) ?? value('d', 4) }}"
    assert render(template, context) == "4"
    assert calls == ["a", "b", "d"]


def test_coalescing_in_tags_works_too() -> None:
    template = (
        "{% set x = inputs.absent ?? inputs.n %}{% if inputs.nothing ?? x > 2 %}{{ x }}{% endif %}"
        "{% for i in inputs.absent ?? [1, 2] %}{{ i }}{% endfor %}"
    )
    assert render(template, CONTEXT) == "312"


def test_coalescing_without_a_right_side_names_the_expression() -> None:
    with pytest.raises(TemplateError) as info:
        render("{{ inputs.name ?? }}", CONTEXT)
    assert "{{ inputs.name ?? }}" in str(info.value)
    assert "each side" in str(info.value)
