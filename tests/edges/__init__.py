"""Tests of the I/O edges against real servers."""
