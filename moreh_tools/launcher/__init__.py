"""``moreh-run``: queue a job for the token's SDA, wait for devices, run the command on exactly those."""
