"""NRI plugin tests."""
