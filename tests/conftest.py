"""Shared fixtures live in tests/fixtures/; each module there is registered here."""

pytest_plugins = [
    "tests.fixtures.synthetic",
    "tests.fixtures.repository",
    "tests.fixtures.int8",
    "tests.serving.triton.fixtures",
]
