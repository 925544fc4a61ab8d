"""What the workers write to TimescaleDB: the readings sink, the dead-letter outbox, storage
maintenance and the cold archive."""
