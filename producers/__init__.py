"""Publishing device readings straight to Kafka: ``DeviceProducer`` (see its module)."""
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

__all__ = [
    "BrokerUnavailable",
    "DeliveryError",
    "DeliveryTimeout",
    "DeviceProducer",
    "Failure",
    "InvalidReadingError",
    "ProducerConfig",
    "ProducerStartError",
]
