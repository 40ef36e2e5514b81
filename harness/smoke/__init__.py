"""Smoke tests: checks run in the guest, console diagnosis, reports."""
