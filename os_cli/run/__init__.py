"""`os-sample generate` as a library: the plan, the run loop over an output folder, signals."""
