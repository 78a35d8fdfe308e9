"""The activation loop inside the growth process: the kernel's exactly-once loop over
:class:`~services.growth.processor.ActivationHandler`, run on a thread of its own."""

from __future__ import annotations

import logging
import threading

from services.activation import ActivationConfig
from services.growth.config import GrowthSettings
from services.growth.processor import INPUTS, OUTPUTS, SERVICE, ActivationHandler
from services.kernel.lifecycle import Lifecycle
from services.kernel.privacy import ErasureFollower
from services.kernel.processing import ExactlyOnceLoop, exactly_once_service
from services.kernel.processing.store import LocalStore, store_path
from services.kernel.serde import SchemaRegistry
from services.kernel.topics import GROWTH_CHANGELOG, USAGE_EVENTS_DLQ, USAGE_EVENTS_ENRICHED, topic

log = logging.getLogger(__name__)


class ActivationLoop:
    def __init__(self, loop: ExactlyOnceLoop, handler: ActivationHandler) -> None:
        self.loop = loop
        self.handler = handler
        self.stop = threading.Event()
        self.failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="growth-activation-loop", daemon=True)

    @classmethod
    def build(
        cls,
        settings: GrowthSettings,
        config: ActivationConfig,
        registry: SchemaRegistry,
        life: Lifecycle,
        erasures: ErasureFollower | None = None,
    ) -> ActivationLoop:
        prefix = settings.platform.topic_prefix
        changelog = topic(GROWTH_CHANGELOG, prefix).name
        store_factory = None
        if settings.state_store == "rocksdb":

            def store_factory(partition: int) -> LocalStore:
                path = store_path(settings.state_dir, settings.instance_id, f"{changelog}-{partition}")
                return LocalStore(path, cache_mb=settings.state_cache_mb)

        handler = ActivationHandler(
            kafka=settings.kafka,
            config=config,
            input_topic=topic(USAGE_EVENTS_ENRICHED, prefix).name,
            changelog_topic=changelog,
            max_persons_per_customer=settings.activation_max_persons_per_customer,
            store_factory=store_factory,
            memory_keys=settings.state_memory_keys,
        )
        handler.erasures = erasures
        built = exactly_once_service(
            settings,
            service=SERVICE,
            registry=registry,
            lifecycle=life,
            handler=handler,
            inputs=INPUTS,
            outputs=OUTPUTS,
            dead_letters=USAGE_EVENTS_DLQ,
        )
        runner = cls(built, handler)
        runner._thread.start()
        return runner

    def _run(self) -> None:
        try:
            self.loop.run(self.stop)
        except BaseException as exc:  # fenced, or the clients keep breaking: readiness says so
            self.failed = exc
            log.error("the activation loop stopped; /readyz reports it", exc_info=exc)

    def ready(self) -> bool:
        return self.failed is None and self.loop.ready()

    def close(self) -> None:
        """Before the loop's clients close (pushed after them on the lifecycle, so closed first)."""
        self.stop.set()
        self._thread.join(timeout=30)
        if not self._thread.is_alive():  # no transaction after this: the stores can be sealed
            self.handler.close()
