"""Storage maintenance: retention of old partitions, abandoned staging versions and checkpoints."""
