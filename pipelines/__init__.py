"""crossdistill's Kubeflow pipelines: online, offline and multi-teacher distillation.

Installed as ``crossdistill.pipelines`` (the checkout's ``pipelines/``): ``build_pipeline(name,
placement)`` in ``compile``, node-pool placement and the teacher's Secrets in ``placement``,
``run_local`` through kfp.local; the compiled YAML of each pipeline ships in ``compiled/``.
"""
