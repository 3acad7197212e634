"""End-to-end experiments built from the library (each a script with its own flags)."""
