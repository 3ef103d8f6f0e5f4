"""q* math, pure: alpha methods and solvers, the geometric mixture, the decoding step, counter-based randomness, top-K.

Nothing here loads a model or touches a file."""
