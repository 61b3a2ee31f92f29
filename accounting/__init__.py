"""Contracts, rating rules and the PostgreSQL ledger."""
