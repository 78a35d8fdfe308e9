"""The smallest service on the runtime (docs/kernel.md shows it; tests run it against the real broker)."""

from pydantic_settings import SettingsConfigDict

from services.kernel.lifecycle import Lifecycle
from services.kernel.processing import Batch, Emit, ExactlyOnceLoop, StreamHandler, exactly_once
from services.kernel.serde import SchemaRegistry
from services.kernel.service import run_service
from services.kernel.settings import StreamServiceSettings
from services.kernel.topics import TopicSpec, declare


class ApiCallsSettings(StreamServiceSettings):
    model_config = SettingsConfigDict(env_prefix="API_CALLS_")
    output: str = "api-calls"  # a catalogue topic with the usage-event schema
    instance_id: str = "0"  # stable per replica: it makes the transactional.id


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


def build(settings: ApiCallsSettings, life: Lifecycle) -> ExactlyOnceLoop:
    return exactly_once(
        service="api-calls",
        kafka=settings.kafka,
        lifecycle=life,
        handler=ApiCalls(settings.output),
        registry=life.push(SchemaRegistry(settings.registry)),
        inputs=["usage-events"],
        outputs=[settings.output],
        group_id="api-calls",
        transactional_id=f"api-calls-{settings.instance_id}",
        topic_prefix=settings.platform.topic_prefix,
    )  # every output, dead letter and input offset of a batch commits together, or none does


if __name__ == "__main__":  # SIGTERM-safe, /metrics /livez /readyz, --check-config with secrets masked
    declare(TopicSpec("api-calls", 3, "usage_event"))  # a real service declares it in kernel/topics.py
    raise SystemExit(run_service("api-calls", ApiCallsSettings, build))
