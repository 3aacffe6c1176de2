"""Privacy and data lifecycle: erasure, access, suppression and retention of a person's data."""
