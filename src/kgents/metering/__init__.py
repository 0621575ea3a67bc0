"""Usage events, meters, the outbox relay, the metering processor and the OpenMeter sink."""
