"""Publishing device readings straight to Kafka."""
from producers.device_producer import DeliveryError, DeviceProducer, InvalidReadingError

__all__ = ["DeliveryError", "DeviceProducer", "InvalidReadingError"]
