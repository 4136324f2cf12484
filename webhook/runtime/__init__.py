"""The manager that owns a process's lifecycle, and the programs built from it."""
