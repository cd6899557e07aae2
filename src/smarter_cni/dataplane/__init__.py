"""Data planes: bridge mode (our own links and rules) and docker mode."""
