"""Root-only integration tests against a real containerd, runc and CRIU.

The harness (:mod:`integration.harness`) starts an isolated containerd per pytest session;
the fixtures in ``conftest.py`` hand it to the tests. Run with ``pytest integration``.
"""
