"""Training: config, the loop, optimizer and schedules, loss, checkpoints, lr-find."""
