"""Sub-commands of `talkmeter`, one module each."""
