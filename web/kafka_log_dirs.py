"""Kafka's DescribeLogDirs request (API key 35): the bytes each partition takes on disk.

aiokafka ships no such request, so its version 0/1 wire format (the same for both) is
declared here with aiokafka's public protocol types. A broker answers for the replicas it
holds; the size of a partition is the one its leader reports. Brokers that do not
implement the API (the local Tansu broker) make aiokafka raise
``IncompatibleBrokerVersion`` before anything is sent.
"""
from __future__ import annotations

from typing import Any, Iterable

from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Int16, Int32, Int64, Schema, String
from aiokafka.structs import TopicPartition


class DescribeLogDirsResponse_v0(Response):
    API_KEY = 35
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("log_dirs", Array(
            ("error_code", Int16),
            ("log_dir", String("utf-8")),
            ("topics", Array(
                ("name", String("utf-8")),
                ("partitions", Array(
                    ("partition_index", Int32),
                    ("partition_size", Int64),
                    ("offset_lag", Int64),
                    ("is_future_key", Boolean),
                )),
            )),
        )),
    )


class DescribeLogDirsResponse_v1(Response):
    API_KEY = 35
    API_VERSION = 1
    SCHEMA = DescribeLogDirsResponse_v0.SCHEMA


class DescribeLogDirsRequest_v0(RequestStruct):
    API_KEY = 35
    API_VERSION = 0
    RESPONSE_TYPE = DescribeLogDirsResponse_v0
    SCHEMA = Schema(("topics", Array(("topic", String("utf-8")), ("partitions", Array(Int32)))))


class DescribeLogDirsRequest_v1(RequestStruct):
    API_KEY = 35
    API_VERSION = 1
    RESPONSE_TYPE = DescribeLogDirsResponse_v1
    SCHEMA = DescribeLogDirsRequest_v0.SCHEMA


class DescribeLogDirsRequest(Request[DescribeLogDirsRequest_v0 | DescribeLogDirsRequest_v1]):
    """Asks one broker for the size of the named partitions' replicas it holds."""

    API_KEY = 35

    def __init__(self, partitions: dict[str, list[int]]) -> None:
        self._topics = sorted(partitions.items())

    def build(self, request_struct_class: type[DescribeLogDirsRequest_v0 | DescribeLogDirsRequest_v1],
              ) -> DescribeLogDirsRequest_v0 | DescribeLogDirsRequest_v1:
        return request_struct_class(self._topics)


def sizes_of_log_dirs(response: Any, wanted: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
    """Bytes of each wanted partition in a DescribeLogDirs response.

    A replica being moved between directories also appears as a "future" replica: only the
    current one counts. Directories that failed (error_code != 0) report nothing.
    """
    wanted = set(wanted)
    sizes: dict[TopicPartition, int] = {}
    for error_code, _log_dir, topics in response.log_dirs:
        if error_code:
            continue
        for topic, partitions in topics:
            for partition, size, _offset_lag, is_future in partitions:
                tp = TopicPartition(topic, partition)
                if tp in wanted and not is_future:
                    sizes[tp] = sizes.get(tp, 0) + size
    return sizes
