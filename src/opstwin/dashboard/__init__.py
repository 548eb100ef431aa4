"""The human dashboard: a static page that reads the same API agents use."""
