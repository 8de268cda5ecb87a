"""Models at the file boundary: the test plan, the run manifest and the settings."""
