"""Data: PhysicalAI-AV layout reader and writer, synthetic driving world."""
