"""The contract between the master and its replicas: the Kafka topics, one module per topic.

Each of links.py, clicks.py and replicas.py holds its topic's record type, key, topic
configuration (with the reason for every setting) and the settings of its producers and
consumers; clients.py is the one base every producer and consumer is built and closed by, and
loop.py the positioned consumer loop, composed from a position store and a batch handler.
`links/` (the master) and `redirects/` (a replica) import this package, never each other.
"""
