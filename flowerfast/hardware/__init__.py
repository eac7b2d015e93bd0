"""Where the work runs: the device, its precision, threads, and a job of several processes."""
