"""Training schedules and options (the published two-phase schedule as data)."""
