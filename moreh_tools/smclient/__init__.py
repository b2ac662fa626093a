"""moreh_smclient: the SDA Manager admin console."""
