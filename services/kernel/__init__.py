"""The shared kernel: the plumbing every plg service uses, so services hold only their own logic.

* ``settings`` — pydantic-settings groups (``KAFKA_*``, ``SCHEMA_REGISTRY_*``, ``DATABASE_*``, ``PLG_*``)
  and the base classes every service's settings extend (``ServiceSettings``, ``StreamServiceSettings``).
* ``service`` — ``run_service(...)``, every ``__main__``: ``--check-config``, redacted settings, signals,
  lifecycle, ops endpoints, exit status.
* ``processing`` — the stream runtime; ``processing.view``: materialised views of compacted topics.
* ``topics`` / ``provision`` — the topic catalogue and creating topics + registering schemas from it.
* ``kafka`` — idempotent ``Producer``, ``TransactionalProducer``, ``Consumer``; error translation;
  ``check_reachable``. Services never import ``confluent_kafka``.
* ``serde`` — Avro in the Confluent wire format through the registry (``SchemaRegistry``, fast
  ``ValueEncoder``/``ValueDecoder``).
* ``errors`` — the project's exceptions (retriable / abortable / fatal / bad record).
* ``dlq`` — dead letters with the original bytes and the reason.
* ``metrics`` / ``lag`` — Prometheus helpers and consumer lag in messages and seconds.
* ``ops`` — ``/metrics``, ``/livez``, ``/readyz``.
* ``logs`` — structured JSON logs with secrets masked.
* ``lifecycle`` — signals → stop event, resources closed in reverse order.
* ``db`` — PostgreSQL pool and migrations.

``docs/kernel.md`` shows each in use.
"""
