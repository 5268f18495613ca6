"""schedules.yaml: typed models, loading with line numbers, watching for edits."""
