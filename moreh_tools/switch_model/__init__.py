"""moreh-switch-model: choose the model (size) of the current device, at a picker or with --model."""
