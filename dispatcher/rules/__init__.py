"""Compliance rules: each with its id; the engine every reminder passes through."""
