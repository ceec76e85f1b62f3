package receiver

// Workers is the size of the worker pool, for the benchmark's baseline.
const Workers = workers
