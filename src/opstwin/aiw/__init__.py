"""The AIW contract: manifest, schema registry, change log, cursors, `/diff` and `/subscribe`."""
