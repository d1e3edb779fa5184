"""Test stand-ins and helpers (never imported by product code)."""
