"""crossdistill's Kubeflow pipelines: online, offline and multi-teacher distillation."""
