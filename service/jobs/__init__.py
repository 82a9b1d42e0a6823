"""Async jobs: stored before their 202, claimed by workers under a lease, results sent to webhooks."""
