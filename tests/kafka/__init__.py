"""Kafka tests: a Kafka-protocol broker of the run's own (:mod:`tests.kafka.broker`)."""
