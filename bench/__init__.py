"""Benchmarks (not tests): each script measures Tideflow and its baseline in the same run. See README.md."""
