"""Chain-of-Causation (CoC) labelling: meta-actions, keyframes, structured records, auto-labelling."""
