"""Tests of the routes, downloads and the server process."""
