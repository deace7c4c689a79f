"""Forum Scheduler: plans review cycles, registrations, reminders and pledge feeds."""

__version__ = "0.1.0"
