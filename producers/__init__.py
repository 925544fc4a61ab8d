"""Publishing device readings: straight to Kafka with ``DeviceProducer``, or to a worker's
``POST /ingest`` with ``IngestClient`` (see their modules)."""
from producers.device_producer import (
    BrokerUnavailable,
    DeliveryError,
    DeliveryTimeout,
    DeviceProducer,
    Failure,
    InvalidReadingError,
    ProducerConfig,
    ProducerStartError,
)
from producers.ingest_client import IngestClient, IngestRefused

__all__ = [
    "BrokerUnavailable",
    "DeliveryError",
    "DeliveryTimeout",
    "DeviceProducer",
    "Failure",
    "IngestClient",
    "IngestRefused",
    "InvalidReadingError",
    "ProducerConfig",
    "ProducerStartError",
]
