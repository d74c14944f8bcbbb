"""Pebble-compatible templating: what a Kestra flow's expressions render to."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
