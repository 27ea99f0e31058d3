"""What the tests and the benchmarks share: the product's processes started for real, waits on
conditions, the topics read and written directly, metrics scraped. Nothing here mocks a service.

`from testkit import X` names anything of the submodules: waits, processes, kafka, scraping.
"""

from testkit.kafka import (  # noqa: F401
    FakeRecord,
    click_reports,
    link_produce,
    link_records,
    master_counts,
    own_prefix,
    tinyurl_new,
    topic_end,
    topic_read,
    topic_records,
)
from testkit.processes import (  # noqa: F401
    ClicksConsumerProcess,
    MasterWeb,
    Replica,
    link_value_split,
    redis_links_ready,
    test_database_url,
)
from testkit.scraping import sample, scrape  # noqa: F401
from testkit.waits import ROOT, WAIT_SCALE, free_port, port_open, wait_until  # noqa: F401
