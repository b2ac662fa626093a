"""``sdamanager``: the local daemon that reconciles jobs, drives the scheduler and samples the GPUs."""
