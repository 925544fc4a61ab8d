"""Every kind of bad message, through the real pipeline: dead-lettered with its reason, and
the worker goes on (a valid reading sent after them all is stored)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from schema.validation import MAX_VALUE_BYTES
from streams.topics import device_topic
from tests.schema.bad_messages import DEVICE_ID, make_bad_messages, make_mixed_arrays
from tests.stack import (
    RawProducer,
    count_rows,
    create_topics,
    fleet,
    read_dead_letters,
    wait_for,
)

pytestmark = pytest.mark.integration


async def test_every_kind_of_bad_message_is_dead_lettered_and_the_worker_goes_on(
    start_worker,
) -> None:
    (device,), only = fleet("bad-", 1)
    topic, key = device_topic(device), device.encode()
    await create_topics([topic])
    worker = start_worker("bad-input", DEVICE_FILTER=only)
    expected: dict[tuple[int, int | None], str] = {}
    valid_in_arrays = 0
    now = datetime.now(timezone.utc)  # made now: some messages are bad only relative to it
    async with RawProducer() as producer:
        for name, value, _ in make_bad_messages(now):
            _, offset = await producer.send(topic, key, value.replace(DEVICE_ID.encode(), key))
            # One-element arrays are dead-lettered as element 0, the rest as a whole.
            whole = not name.startswith("array_of_") or len(value) > MAX_VALUE_BYTES
            expected[(offset, None if whole else 0)] = name
        for name, value, valid, errors in make_mixed_arrays(now):
            _, offset = await producer.send(topic, key, value.replace(DEVICE_ID.encode(), key))
            expected.update({(offset, index): name for index in errors})
            valid_in_arrays += valid
        moment = datetime.now(timezone.utc) - timedelta(seconds=5)
        await producer.send(topic, key, {"device_id": device, "time": moment.isoformat(),
                                         "metrics": {"after_the_storm": 1.0}})

    async def stored_the_last_reading() -> bool:
        return await count_rows([device]) >= 1

    await wait_for(stored_the_last_reading, 120, "the valid reading sent after the bad ones")
    letters = await read_dead_letters({topic}, len(expected))
    found = {(r["offset"], r.get("index")): r for r in letters}
    missing = {where: name for where, name in expected.items() if where not in found}
    assert not missing, f"not dead-lettered: {missing}"
    assert len(letters) == len(expected), "exactly one dead letter per invalid reading"
    assert all(r["error"] and r["topic"] == topic and r["_key"] == key for r in letters)
    assert "Traceback" not in worker.log_text()
    # The valid readings inside the mixed arrays are stored too: they are all the same
    # reading (2 metrics, stored once), plus the reading sent last.
    assert valid_in_arrays > 0 and await count_rows([device]) == 3
