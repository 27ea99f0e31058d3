"""The old name of what moved to testkit/ (bench/ must not import the test suite). Two modules
(tests/test_supervision.py, tests/test_topic_recreated.py) still import `tests.support`, and could
not be collected without it; their import lines are left to the import renaming under way."""

from testkit import Replica, test_database_url, topic_end  # noqa: F401
