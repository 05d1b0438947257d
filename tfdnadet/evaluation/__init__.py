"""Metrics, evaluation runs, reports and plots."""
