"""Monitoring (issue 13): captured requests read back (``capture``), drift against the
training baseline, reports and alerts."""
