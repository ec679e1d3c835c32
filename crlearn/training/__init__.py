"""Training: the run's configuration and profiles (§3.1), the device, the fit loop, checkpoints, one run end to
end, and the speed workarounds kept apart from the teaching code."""
