"""The smallest service on the runtime (docs/kernel.md shows it; tests run it against the real broker)."""

from services.kernel.lifecycle import Lifecycle
from services.kernel.processing import Batch, Emit, ExactlyOnceLoop, StreamHandler, exactly_once
from services.kernel.serde import SchemaRegistry
from services.kernel.settings import KafkaSettings


class ApiCalls(StreamHandler):
    """Keeps the ``api_call_made`` events of ``usage-events``; events without a customer are dead letters."""

    def __init__(self, output: str) -> None:
        self.output = output

    def process(self, batch: Batch, out: Emit) -> None:
        for message in batch:
            event = message.value or {}
            if not event.get("customer_id"):
                out.dead_letter(message, "invalid_event", "customer_id is empty")
            elif event["name"] == "api_call_made":
                out.send(self.output, event, key=message.key)


def build(
    kafka: KafkaSettings, registry: SchemaRegistry, life: Lifecycle, output: str, prefix: str = ""
) -> ExactlyOnceLoop:
    return exactly_once(
        service="api-calls",
        kafka=kafka,
        registry=registry,
        lifecycle=life,
        handler=ApiCalls(output),
        inputs=["usage-events"],
        outputs=[output],
        group_id="api-calls",
        transactional_id="api-calls-0",
        topic_prefix=prefix,
    )  # then: build(...).run(stop) — every output, dead letter and offset of a batch commits together
