"""The operator side: install, uninstall, status, selftest (orchestration only)."""
