"""ttrpc envelope messages and their generated code."""
