"""The talkmeter service: settings, logging, CLI, task supervision. The only place that wires things."""
