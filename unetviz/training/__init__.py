"""Training, evaluation and shipping of the demo model (``unetviz.pipelines.demo`` runs it)."""
