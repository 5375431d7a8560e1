"""Sweeps: one grid per paper table, launched with submitit, aggregated into tables and plots."""
