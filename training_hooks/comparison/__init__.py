"""Comparing variants from their runs: the offline run-file reader, the variants x metrics table, plots."""
