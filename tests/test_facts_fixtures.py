"""pyinfra-testing JSON fixture tests for every fact in ``facts/``.

Each ``tests/facts/<module>.<FactClass>/`` directory holds cases with ``command``
(asserted), ``output`` (raw lines) and ``fact`` (expected, JSON-normalised); the
extra ``source`` key says where the output's shape comes from.

A fact whose command frames its parts (facts/sections.py) is recorded decoded, so the
fixture stays readable: ``sections`` maps each key to its ``status`` and ``output`` (text,
or a list of lines), and ``unframed`` holds lines printed outside any section (a login
banner, junk). The loader frames them with the same encoder before calling ``process()``.
"""

from pathlib import Path

from pyinfra_testing.facts import make_fact_tests

from facts.sections import encode

BASE_IMPORT_PATH = "facts"
TESTS_BASE = Path(__file__).parent / "facts"


def _text(output: str | list[str]) -> str:
    return output if isinstance(output, str) else "".join(f"{line}\n" for line in output)


def framed_output(case: dict) -> list[str]:
    """The command output a fixture with ``sections`` stands for."""
    lines = _text(case.get("unframed", "")).splitlines()
    for key, part in case["sections"].items():
        lines.append(encode(key, part["status"], _text(part["output"]).encode()))
    return lines


def _framing_fixtures(tests: type) -> type:
    run_case = tests._test

    def _test(self, test_name, test_data):
        if "sections" in test_data:
            test_data = {**test_data, "output": framed_output(test_data)}
        run_case(self, test_name, test_data)

    tests._test = _test
    return tests


for fact_path in sorted(directory.name for directory in TESTS_BASE.iterdir() if directory.is_dir()):
    locals()[fact_path] = _framing_fixtures(make_fact_tests(BASE_IMPORT_PATH, fact_path, TESTS_BASE / fact_path))
