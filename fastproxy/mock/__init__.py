"""The built-in mock provider (`fastproxy mock-upstream`), for the demo, tests and benchmarks."""
