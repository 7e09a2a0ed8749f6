"""The built-in network sensor: TCP connect/accept/close and UDP sends, with the owning process."""
