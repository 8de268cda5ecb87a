"""A local server that speaks Dify's workflow API, for tests, benchmarks and the demo."""
