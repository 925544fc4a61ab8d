"""Where validated readings go: TimescaleDB."""
