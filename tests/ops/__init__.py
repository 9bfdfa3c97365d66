"""Tests of operations: doctor, sweeper, logs, metrics."""
