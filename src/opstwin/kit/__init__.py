"""Domain-free helpers: clock, ids, errors, database, JSON."""
