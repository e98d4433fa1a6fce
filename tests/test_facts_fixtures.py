"""pyinfra-testing JSON fixture tests for every fact in ``facts/``.

Each ``tests/facts/<module>.<FactClass>/`` directory holds cases with ``command``
(asserted), ``output`` (raw lines) and ``fact`` (expected, JSON-normalised); the
extra ``source`` key says where the output's shape comes from.
"""

from pathlib import Path

from pyinfra_testing.facts import make_fact_tests

BASE_IMPORT_PATH = "facts"
TESTS_BASE = Path(__file__).parent / "facts"

for fact_path in sorted(directory.name for directory in TESTS_BASE.iterdir() if directory.is_dir()):
    locals()[fact_path] = make_fact_tests(BASE_IMPORT_PATH, fact_path, TESTS_BASE / fact_path)
