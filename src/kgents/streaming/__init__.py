"""Everything NATS (adapter): subjects, stream topology, the embedded nats-server, the
connection, the JetStream event log of sessions, cancel signals and the usage publisher.

Modules, each with one job: ``subjects`` (validated subject names), ``topology`` (the two
streams), ``embedded`` (nats-server child process), ``connection`` (client and error
translation), ``wire`` (event encoding), ``acks`` (bounded ack waits), ``consumer`` (ordered
ephemeral pull consumer), ``bridge`` (``JetStreamEventLog``), ``cancel`` (core-NATS cancel
requests), ``usage`` (``JetStreamUsagePublisher``).
"""
