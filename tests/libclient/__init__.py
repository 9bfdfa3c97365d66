"""Tests of the push/pull tool."""
