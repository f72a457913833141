"""Fault-injection scenarios that count every record (issue 8): crashes, outages, rebalances, bad input, models."""
