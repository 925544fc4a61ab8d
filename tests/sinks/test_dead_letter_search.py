"""Reading the DLQ's records back (no broker needed)."""
from __future__ import annotations

from sinks.dead_letter_search import source_of_record
from tests.sinks.test_dead_letter_outbox import letter


def test_records_name_their_source_and_foreign_ones_are_ignored() -> None:
    assert source_of_record(letter("device-data-a", 3, 2).value) == ("device-data-a", 0, 3, 2)
    assert source_of_record(letter("device-data-a", 3, None).value) == ("device-data-a", 0, 3,
                                                                        None)
    for foreign in (b"not json", b"[]", b'{"topic": "t"}', b'{"topic": "t", "partition": "x",'
                                                           b' "offset": 1}'):
        assert source_of_record(foreign) is None
