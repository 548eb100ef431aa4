"""Principals, roles and permissions (later: confidence and decisions)."""
