"""Model kinds; the registry comes with the trainer integration."""
