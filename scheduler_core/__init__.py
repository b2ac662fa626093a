"""Pure scheduling and access decisions over plain records: no I/O, no clock reads."""
