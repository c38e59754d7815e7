"""The fleet as it happens: readings, statuses and health from the broker, for the
dashboard (cloud.dashboard) and the alerts watcher (cloud.alerts)."""
