"""Example third-party Sensorium sensor: kill() calls as process_tracepoint events."""
