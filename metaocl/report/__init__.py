"""``metaocl report``: figures and effect statistics read from MLflow only."""
