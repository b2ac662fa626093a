"""Console commands, one module per noun; each module registers its commands on import."""
