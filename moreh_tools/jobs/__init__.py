"""Running jobs on this host: wake-ups, process control, the scheduling pass, the launcher."""
