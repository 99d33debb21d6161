"""Oracle for the chat-template renderer: renders templates with Jinja2 the way transformers'
apply_chat_template does.

  /usr/bin/python3 tests/oracle/render_chat_template.py < cases.json > results.json

cases.json is a list of {"template": str, "variables": {...}}; results.json the list, in order, of
{"ok": true, "output": str} or {"ok": false, "error": "ExceptionType: message"} (a template that does
not compile, or a render that raises). Run with Debian's python3 (it sees python3-jinja2); a missing
jinja2 is an import error, so the calling test fails instead of skipping.

The environment is transformers' (utils/chat_template_utils.py): ImmutableSandboxedEnvironment with
trim_blocks and lstrip_blocks, the loopcontrols extension, a {% generation %} block that renders its
body (transformers' AssistantTracker when no assistant mask is requested), the globals
raise_exception and strftime_now, and tojson replaced by json.dumps(ensure_ascii=False).
"""
import json
import sys
from datetime import datetime

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


class GenerationBlock(Extension):
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller):
        return caller()


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(format):
    return datetime.now().strftime(format)


def make_environment():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationBlock, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render(env, case):
    try:
        template = env.from_string(case["template"])
        return {"ok": True, "output": template.render(**case["variables"])}
    except Exception as e:  # every failure is a result the C++ side must reproduce as an error
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def main():
    cases = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    env = make_environment()
    results = [render(env, c) for c in cases]
    sys.stdout.buffer.write(json.dumps(results, ensure_ascii=True).encode("ascii"))


if __name__ == "__main__":
    main()
