"""Where a teacher server runs: a local process, a Kubernetes Deployment + Service, or a KServe InferenceService."""
