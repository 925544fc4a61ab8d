"""Per-device state of the pipeline held in the worker's memory and loaded from the database
(the event-time clocks); deliberately not Faust tables (see ``tables.event_clock``)."""
