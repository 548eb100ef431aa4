"""Tamper-evident audit: a hash-chained log of every decision and transition, and its verifier."""
