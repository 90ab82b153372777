"""Alerts across every domain: failed checks, failed runs, and delivery of the notification outbox."""
