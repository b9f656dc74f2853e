"""Small repositories in languages and runners other than pytest, for verification tests."""

from __future__ import annotations

import json

CALC_JS = "exports.add = (a, b) => a + b;\nexports.sub = (a, b) => a + b;\n"
CALC_JS_FIXED = "exports.add = (a, b) => a + b;\nexports.sub = (a, b) => a - b;\n"
CALC_TEST_JS = (
    "const test = require('node:test');\nconst assert = require('node:assert');\n"
    "const { add, sub } = require('../calc');\n\n"
    "test('adds', () => { assert.strictEqual(add(2, 3), 5); });\n\n"
    "test.describe('sub', () => {\n"
    "  test.it('subtracts', () => { assert.strictEqual(sub(5, 3), 2); });\n});\n"
)
NODE_PROJECT = {
    "package.json": json.dumps({"name": "calc", "scripts": {"test": "node --test"}}),
    "calc.js": CALC_JS,
    "test/calc.test.js": CALC_TEST_JS,
}


# A runner that is not pytest: each tests/test_*.py module's check_* functions, reported as JUnit.
HARNESS = '''"""Runs every check_* function of tests/test_*.py and writes build/junit.xml."""
import importlib.util, pathlib, sys, traceback
from xml.sax.saxutils import quoteattr

cases, failed = [], False
for path in sorted(pathlib.Path("tests").glob("test_*.py")):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, ".")
    try:
        spec.loader.exec_module(module)
    except Exception:
        failed = True
        cases.append(f'<testcase classname={quoteattr(str(path))} name={quoteattr(str(path))}>'
                     f'<error message={quoteattr(traceback.format_exc())}/></testcase>')
        continue
    for name in sorted(n for n in vars(module) if n.startswith("check_")):
        try:
            getattr(module, name)()
            body = ""
        except Exception:
            failed = True
            body = f"<failure message={quoteattr(traceback.format_exc())}/>"
        cases.append(f"<testcase classname={quoteattr(str(path))} name={quoteattr(name)}>{body}</testcase>")
pathlib.Path("build").mkdir(exist_ok=True)
pathlib.Path("build/junit.xml").write_text("<testsuite>" + "".join(cases) + "</testsuite>")
sys.exit(1 if failed else 0)
'''
CALC_PY = "def add(a, b):\n    return a + b\n"
CHECK_ADD = "from calc import add\n\n\ndef check_add():\n    assert add(2, 3) == 5\n"
CHECK_MUL = "from calc import mul\n\n\ndef check_mul():\n    assert mul(2, 3) == 6\n"
JUNIT_PROJECT = {
    ".codeworker.yml": "test_command: python run_checks.py\njunit: build/*.xml\n",
    ".gitignore": "build/\n",
    "run_checks.py": HARNESS,
    "calc.py": CALC_PY,
    "tests/test_add.py": CHECK_ADD,
}
