"""Everything NATS (adapter): subjects, stream topology, the embedded nats-server, the
connection, the JetStream event log of sessions, cancel signals and the usage publisher.

Modules, each with one job:

- ``subjects``: validated subject names;
- ``topology``: the two streams, created or updated idempotently;
- ``embedded``: the nats-server child process of the zero-config mode;
- ``nats_process``: the nats-server binary, ports, liveness and signals;
- ``connection``: the client, its state, and driver errors as ``EventsUnavailable``;
- ``wire``: how events are encoded (JSON, CloudEvents, ``Nats-Msg-Id``);
- ``pipeline``: pipelined publishing, acks counted in batches;
- ``consumer``: ordered ephemeral pull consumers (followers, read-back);
- ``fanout``: one consumer per followed session per process, fanned out to local followers;
- ``bridge``: ``JetStreamEventLog``, the sessions' ``SessionEventLog``;
- ``cancel``: cancel requests across replicas (core NATS);
- ``usage``: ``JetStreamUsagePublisher`` for the outbox relay;
- ``runtime``: ``open_streaming(settings)``, all of the above for a running platform.
"""
